"""The documentation site: strict mkdocs build, generated CLI reference, docstring filter."""

from __future__ import annotations

import argparse
import importlib.util
import os
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

from scalabl_pyro.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    """Import a module from tools/ (not a package: mkdocs and griffe load them by path)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def hooks():
    return _load("docs_hooks")


@pytest.fixture(scope="module")
def rst():
    return _load("griffe_rst")


def test_cli_reference_is_up_to_date(hooks):
    committed = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    assert committed == hooks.render_cli_reference(), (
        "docs/cli.md is stale: run `make cli-docs` (python tools/docs_hooks.py) and commit it"
    )


def test_cli_reference_lists_every_command_and_option(hooks):
    text = hooks.render_cli_reference()
    parser = build_parser()
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert {"fetch", "demo", "train", "evaluate", "data"} <= set(subs.choices)
    for name, sub in subs.choices.items():
        section = text.split(f"## `scalabl {name}`", 1)[1].split("\n## ", 1)[0]
        assert f"usage: scalabl {name}" in section
        for action in sub._actions:
            for flag in action.option_strings:
                if flag not in ("-h", "--help"):
                    assert f"`{flag}`" in section, (name, flag)
            if action.choices:
                assert all(f"`{c}`" in section for c in action.choices), (name, action.dest)


def test_write_cli_reference_is_atomic_and_idempotent(hooks, tmp_path):
    path = tmp_path / "cli.md"
    path.write_text("old", encoding="utf-8")
    assert hooks.write_cli_reference(path) is True
    assert path.read_text(encoding="utf-8") == hooks.render_cli_reference()
    assert hooks.write_cli_reference(path) is False
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cli.md"]  # no temp file left


def _public_modules(folder: Path, prefix: str = "") -> set[str]:
    found = set()
    for m in pkgutil.iter_modules([str(folder)]):
        if m.name.startswith("_"):
            continue
        found.add(f"{prefix}{m.name}")
        if m.ispkg:
            found |= _public_modules(folder / m.name, f"{prefix}{m.name}.")
    return found


def test_api_reference_has_a_page_per_public_module_but_the_excluded(hooks):
    public = _public_modules(ROOT / "scalabl_pyro")
    listed = [m.removeprefix("scalabl_pyro.") for m in hooks.api_modules()]
    assert len(listed) == len(set(listed))

    def excluded(name: str) -> bool:
        return any(name == e or name.startswith(f"{e}.") for e in hooks.API_EXCLUDED)

    assert set(listed) == {m for m in public if not excluded(m)}
    for internal in ("cli", "cli.app", "testing", "utils", "utils.rng", "errors"):
        assert internal not in listed, internal
    for name in ("api", "config", "program.latents", "program.model", "program.guides"):
        assert name in listed, name
    assert all(hooks.API_EXCLUDED.values())  # every exclusion says why
    assert all(e in public for e in hooks.API_EXCLUDED), "an exclusion names no module"
    top = [m for m in listed if "." not in m]
    ordered = [m for m in hooks.API_ORDER if m in top]
    assert top[: len(ordered)] == ordered
    assert hooks.api_path("scalabl_pyro.evaluation.metrics") == "api/evaluation/metrics.md"
    assert hooks.api_path("scalabl_pyro.program") == "api/program/index.md"
    assert hooks.api_path("scalabl_pyro.api") == "api/api.md"
    assert hooks.api_page("scalabl_pyro.evaluation.metrics") == (
        "# `scalabl_pyro.evaluation.metrics`\n\n::: scalabl_pyro.evaluation.metrics\n"
    )
    program = hooks.api_page("scalabl_pyro.program")
    assert "members: false" in program
    assert "| [`scalabl_pyro.program.guides`](guides.md) | Guide families" in program


def test_api_nav_starts_with_the_exports_then_a_section_per_package(hooks):
    nav = hooks.api_nav()
    assert nav[0] == {"Top-level exports": "api/index.md"}
    program = next(e["program"] for e in nav if "program" in e)
    assert program[0] == "api/program/index.md"
    assert {"guides": "api/program/guides.md"} in program
    pages = []

    def walk(items):
        for item in items:
            if isinstance(item, str):
                pages.append(item)
            else:
                for value in item.values():
                    walk([value] if isinstance(value, str) else value)

    walk(nav)
    assert sorted(pages[1:]) == sorted(hooks.api_path(m) for m in hooks.api_modules())


def test_exports_page_is_generated_from_the_package_exports(hooks):
    import scalabl_pyro

    assert hooks.exports() == scalabl_pyro._EXPORTS
    page = hooks.exports_page()
    for name, module in scalabl_pyro._EXPORTS.items():
        assert f"::: {module}.{name}\n" in page, name
        assert f"| [`{name}`](#{module}.{name}) |" in page, name
    assert page.index("::: scalabl_pyro.api.ScalaBL") < page.index(
        "::: scalabl_pyro.data.load_task"
    )
    assert "(errors.md)" not in page  # an excluded module gets no link


def test_nav_sections_are_filled(hooks):
    nav = [{"Home": "index.md"}, {"Guides": [{"Tutorials": []}]}, {"API reference": []}]
    assert hooks._fill(nav, "Tutorials", [{"A": "a.ipynb"}])
    assert hooks._fill(nav, "API reference", [{"m": "api/m.md"}])
    assert not hooks._fill(nav, "Tutorials", [{"B": "b.ipynb"}])  # already filled
    assert nav == [
        {"Home": "index.md"},
        {"Guides": [{"Tutorials": [{"A": "a.ipynb"}]}]},
        {"API reference": [{"m": "api/m.md"}]},
    ]


def test_notebook_title_is_the_first_heading(hooks):
    title = hooks.notebook_title(ROOT / "notebooks" / "01_quickstart.ipynb")
    assert title.startswith("Quickstart")


def test_rst_roles_become_code(rst):
    text = (
        "See :func:`~scalabl_pyro.evaluation.metrics.aurc`, :class:`KLScale` and :py:meth:`a.b.c`."
    )
    assert rst.rst_to_markdown(text) == "See `aurc`, `KLScale` and `a.b.c`."


def test_rst_simple_table_becomes_markdown(rst):
    text = "\n".join(
        [
            "Intro.",
            "",
            "    =====  ==========  =====",
            "    name   posterior   count",
            "    =====  ==========  =====",
            "    mf     diagonal    2 D",
            "    lmf    diagonal,   2 D",
            "           log params",
            "    a|b    full        D^2",
            "    =====  ==========  =====",
            "",
            "After.",
        ]
    )
    assert rst.rst_to_markdown(text) == "\n".join(
        [
            "Intro.",
            "",
            "",
            "| name | posterior | count |",
            "|---|---|---|",
            "| mf | diagonal | 2 D |",
            "| lmf | diagonal, log params | 2 D |",
            "| a\\|b | full | D^2 |",
            "",
            "",
            "After.",
        ]
    )


def test_rst_literal_marker_becomes_a_colon(rst):
    text = "Cache layout::\n\n    root/\n        models/\n\nNot a role: a::b stays."
    assert rst.rst_to_markdown(text) == (
        "Cache layout:\n\n    root/\n        models/\n\nNot a role: a::b stays."
    )


def test_rst_unterminated_table_is_left_alone(rst):
    text = "=====  =====\nname   value\n=====  =====\nno closing rule"
    assert rst.rst_to_markdown(text) == text


def test_mkdocs_build_strict(tmp_path):
    """The whole site builds with every warning an error (~10-20 s on 2 cores)."""
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert (site / "index.html").exists()
    for page in ("installation", "elbo", "guides", "method", "metrics", "cli", "results"):
        assert (site / page / "index.html").exists(), page
    metrics_pages = "".join(  # one page, or a package's pages once metrics is split
        p.read_text("utf-8") for p in (site / "api" / "evaluation" / "metrics").rglob("*.html")
    )
    assert "ood_detection" in metrics_pages and ":func:" not in metrics_pages
    guides_page = (site / "api" / "program" / "guides" / "index.html").read_text("utf-8")
    assert "<table>" in guides_page and "=====" not in guides_page
    exports_page = (site / "api" / "index.html").read_text(encoding="utf-8")
    assert 'id="scalabl_pyro.api.ScalaBL"' in exports_page
    assert 'id="scalabl_pyro.diagnostics.posterior.to_inference_data"' in exports_page
    for internal in ("cli", "testing", "utils", "errors"):
        assert not (site / "api" / internal).exists(), internal
    for page in sorted(site.rglob("*.html")):
        html = page.read_text(encoding="utf-8")
        for private in ("/work/", "/root/", "/home/"):
            assert private not in html, f"{page.relative_to(site)} shows a machine path {private}"
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        html = site / "notebooks" / nb.stem / "index.html"
        assert html.exists(), f"tutorial {nb.name} was not rendered"
    assert "scalabl train" in (site / "cli" / "index.html").read_text(encoding="utf-8")
    assert not (ROOT / ".cache" / "mkdocs-jupyter").exists()  # nothing written into the checkout


def test_tutorial_pages_drop_stderr_streams_only(hooks):
    stderr = (
        '<div class="jp-RenderedText jp-OutputArea-output" '
        'data-mime-type="application/vnd.jupyter.stderr" tabindex="0">\n'
        "<pre>/home/u/.venv/lib/tqdm/auto.py:21: TqdmWarning\n 50%|##  | 1/2</pre>\n</div>"
    )
    stdout = (
        '<div class="jp-RenderedText jp-OutputArea-output" '
        'data-mime-type="text/plain" tabindex="0">\n<pre>acc 0.6</pre>\n</div>'
    )
    assert hooks.strip_stderr(f"<p>a</p>{stderr}{stdout}") == f"<p>a</p>{stdout}"


def test_docstring_tables_of_the_api_pages_convert_cleanly(rst):
    """Every simple table in a public module's docstring becomes a Markdown table whose rows
    have as many cells as its header (a cell overflowing its column breaks the page)."""
    import ast

    checked = 0
    for path in sorted((ROOT / "scalabl_pyro").rglob("*.py")):
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
        if not any(rst._RULE.match(line) for line in doc.splitlines()):
            continue
        out = rst.rst_to_markdown(doc)
        rows = [line for line in out.splitlines() if line.startswith("| ")]
        assert rows, path
        widths = {len(re.split(r"(?<!\\)\|", row)) for row in rows}
        assert len(widths) == 1, (path, rows)
        checked += 1
    assert checked >= 1
    doc = ast.get_docstring(
        ast.parse((ROOT / "scalabl_pyro/diagnostics/posterior.py").read_text(encoding="utf-8"))
    )
    table = rst.rst_to_markdown(doc)
    assert "| ``posterior_predictive`` | ``obs``: y_i ~ p(y \\| x_i, s) per draw |" in table
