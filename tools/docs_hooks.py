"""mkdocs hooks for the documentation site, and the writer of ``docs/cli.md``.

The site's generated parts come from the sources themselves, so they cannot
drift:

- **Tutorials**: every ``notebooks/*.ipynb`` becomes a page ``notebooks/<name>/``
  (rendered by mkdocs-jupyter from its stored outputs, never executed), listed
  under the nav section ``Tutorials`` in file-name order, titled by the
  notebook's first heading. A new notebook needs no edit here.
- **API reference**: first ``api/index.md``, the top-level exports, generated from
  ``scalabl_pyro._EXPORTS`` (what ``from scalabl_pyro import ...`` offers), so it
  cannot drift from the package. Then one page per public module, each a mkdocstrings
  ``:::`` block: ``api/<module>.md`` for a top-level module, and for a subpackage a
  nav section ``api/<package>/`` whose index page is the package's docstring, followed
  by one page per module inside it. Packages in :data:`API_ORDER` come first, the rest
  alphabetically; a new module needs no edit here either. Internal modules are left
  out by :data:`API_EXCLUDED`, each with its reason.
- **Tutorial pages** are shown without their stderr streams (:func:`strip_stderr`:
  warnings and progress bars of the run that stored the outputs, with that machine's
  paths); the ``.ipynb`` download keeps them.
- **Result tables**: every ``--8<--`` include of a file under ``benchmarks/results/``
  gets a caption with the commit it was made at (``tools/render_tables.py``; marked
  table regions are rendered into the pages themselves by that script).
- **CLI reference**: ``docs/cli.md`` is rendered from ``scalabl_pyro.cli.build_parser()``
  by :func:`render_cli_reference` and committed. The build warns (so a strict
  build fails) when the committed file differs from a fresh rendering; rewrite
  it with ``python tools/docs_hooks.py`` (``make cli-docs``).

mkdocs.yml names the two generated nav sections with an empty list
(``- Tutorials: []``, ``- API reference: []``); :func:`on_config` fills them.
"""

from __future__ import annotations

import argparse
import ast
import functools
import importlib.util
import json
import logging
import pkgutil
import re
import sys
from pathlib import Path

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.plugins import event_priority
from mkdocs.structure.files import File, Files

from scalabl_pyro.utils.atomic import write_text_atomic

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "scalabl_pyro"
NOTEBOOKS = ROOT / "notebooks"
CLI_PAGE = ROOT / "docs" / "cli.md"
TUTORIALS_SECTION = "Tutorials"
API_SECTION = "API reference"

API_ORDER: tuple[str, ...] = (
    "api",
    "config",
    "program",
    "inference",
    "methods",
    "evaluation",
    "diagnostics",
    "experiments",
    "data",
    "io",
    "utils",
    "cli",
)
"""Modules and subpackages listed first in the API reference, top layer first (the rest
follow A-Z)."""

API_EXCLUDED: dict[str, str] = {
    "cli": "the command line's plumbing (argparse, option checks); the command line is "
    "documented in the CLI reference, generated from its parser",
    "testing": "tiny random models and a stub tokenizer for the test suite",
    "utils": "plumbing (local random state, logging of a CLI run, atomic writes), no "
    "user-facing API",
    "errors": "its one public class, ScalaBLError, is on the top-level exports page",
    "inference.interrupt": "Ctrl-C / SIGTERM handling inside the training loop",
    "io.hub_access": "the hub reachability probe behind load_base_model",
    "io.image_mark": "the mark the library puts in the images it writes",
    "data.normalize": "per-layout record converters behind load_task",
}
"""Modules and packages (relative to ``scalabl_pyro``) kept out of the API reference, and why.
A package excludes everything inside it."""

EXPORTS_PAGE = "api/index.md"
USAGE_WIDTH = 88
log = logging.getLogger("mkdocs.hooks.scalabl")


# ------------------------------------------------------------- discovery


def _excluded(short: str) -> bool:
    return any(short == e or short.startswith(f"{e}.") for e in API_EXCLUDED)


def _children(folder: Path, prefix: str) -> list[tuple[str, bool]]:
    """(dotted name below ``scalabl_pyro``, is a package) of the public modules in ``folder``."""
    found = []
    for m in pkgutil.iter_modules([str(folder)]):
        short = f"{prefix}{m.name}"
        if not m.name.startswith("_") and not _excluded(short):
            found.append((short, m.ispkg))
    return found


def api_tree(folder: Path | None = None, prefix: str = "") -> list[tuple[str, list]]:
    """The documented modules as a tree: ``(short dotted name, children)``, in nav order.

    A module has no children; a package lists its own public modules (and packages)
    alphabetically. At the top, the names in :data:`API_ORDER` come first."""
    folder = ROOT / PACKAGE if folder is None else folder
    children = sorted(_children(folder, prefix))
    if not prefix:
        rank = {name: i for i, name in enumerate(API_ORDER)}
        children.sort(key=lambda c: (rank.get(c[0], len(rank)), c[0]))
    tree = []
    for short, is_pkg in children:
        sub = api_tree(folder / short.rsplit(".", 1)[-1], f"{short}.") if is_pkg else []
        tree.append((short, sub) if is_pkg else (short, []))
    return tree


def _is_package(short: str) -> bool:
    return (ROOT / PACKAGE / Path(*short.split("."))).is_dir()


def api_modules() -> list[str]:
    """Every documented module and package (full dotted names), in nav order."""
    out: list[str] = []

    def walk(tree: list[tuple[str, list]]) -> None:
        for short, children in tree:
            out.append(f"{PACKAGE}.{short}")
            walk(children)

    walk(api_tree())
    return out


def api_path(module: str) -> str:
    """The page of a module: ``api/<a>/<b>.md``, or ``api/<a>/<b>/index.md`` for a package."""
    parts = module.removeprefix(f"{PACKAGE}.").split(".")
    if _is_package(".".join(parts)):
        return "/".join(["api", *parts, "index.md"])
    return "/".join(["api", *parts]) + ".md"


def api_nav() -> list[dict]:
    """The ``API reference`` nav section: the exports page, then the module tree."""

    def entries(tree: list[tuple[str, list]]) -> list[dict]:
        out = []
        for short, children in tree:
            name = short.rsplit(".", 1)[-1]
            page = api_path(f"{PACKAGE}.{short}")
            if _is_package(short):
                out.append({name: [page, *entries(children)]})
            else:
                out.append({name: page})
        return out

    return [{"Top-level exports": EXPORTS_PAGE}, *entries(api_tree())]


def exports() -> dict[str, str]:
    """``scalabl_pyro._EXPORTS`` (name -> module), read from the source without importing it."""
    tree = ast.parse((ROOT / PACKAGE / "__init__.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "_EXPORTS" for t in node.targets
        ):
            return ast.literal_eval(node.value)
    raise RuntimeError("scalabl_pyro/__init__.py defines no _EXPORTS")


def exports_page() -> str:
    """Markdown of the top-level exports page: one section per name of ``_EXPORTS``."""
    names = exports()
    lines = [
        "# Top-level exports",
        "",
        "<!-- generated from scalabl_pyro._EXPORTS by tools/docs_hooks.py -->",
        "",
        "What `from scalabl_pyro import ...` offers: the names below, imported lazily (so",
        "`import scalabl_pyro` stays cheap). Each is shown with its signature and docstring;",
        "its members are on the page of the module that defines it.",
        "",
        "| name | defined in |",
        "|---|---|",
    ]
    for name, module in names.items():
        if _excluded(module.removeprefix(f"{PACKAGE}.")):
            where = f"`{module}`"
        else:
            where = f"[`{module}`]({api_path(module).removeprefix('api/')})"
        lines.append(f"| [`{name}`](#{module}.{name}) | {where} |")
    for name, module in names.items():
        lines += [
            "",
            f"::: {module}.{name}",
            "    options:",
            "      show_root_heading: true",
            "      show_root_toc_entry: true",
            "      members: false",
            "      heading_level: 2",
        ]
    return "\n".join(lines) + "\n"


def notebooks() -> list[Path]:
    """The tutorial notebooks, in file-name order."""
    return sorted(NOTEBOOKS.glob("*.ipynb"))


def notebook_title(path: Path) -> str:
    """The text of the notebook's first markdown heading (else its file stem)."""
    cells = json.loads(path.read_text(encoding="utf-8")).get("cells", [])
    for cell in cells:
        if cell.get("cell_type") != "markdown":
            continue
        for line in "".join(cell.get("source", [])).splitlines():
            if line.startswith("#"):
                return line.lstrip("#").strip()
    return path.stem


def _summary(short: str) -> str:
    """The first sentence of a module's docstring (reST roles reduced to code)."""
    path = ROOT / PACKAGE / Path(*short.split("."))
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    text = " ".join(doc.split("\n\n", 1)[0].split())
    text = re.sub(r":[a-z:]+:`~?([^`]+)`", lambda m: f"`{m[1].rsplit('.', 1)[-1]}`", text)
    return text.split(". ", 1)[0].rstrip(".").replace("|", "\\|")


def api_page(module: str) -> str:
    """Markdown of one API page: the module's docstring and members via mkdocstrings.

    A package's page is its docstring and a list of its documented modules, each of
    which has its own page."""
    short = module.removeprefix(f"{PACKAGE}.")
    if not _is_package(short):
        return f"# `{module}`\n\n::: {module}\n"
    lines = [f"# `{module}`", "", f"::: {module}", "    options:", "      members: false", ""]
    lines += ["## Modules", "", "| module | what it holds |", "|---|---|"]
    for child, _ in _children(ROOT / PACKAGE / Path(*short.split(".")), f"{short}."):
        name = child.rsplit(".", 1)[-1]
        link = f"{name}/index.md" if _is_package(child) else f"{name}.md"
        lines.append(f"| [`{PACKAGE}.{child}`]({link}) | {_summary(child)} |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------- CLI reference


def _sub_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if not isinstance(a, argparse._SubParsersAction)]


def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """(name, one-line help, parser) of every subcommand, in definition order."""
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {c.dest: c.help or "" for c in action._choices_actions}
            out += [(name, helps.get(name, ""), p) for name, p in action.choices.items()]
    return out


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _option_rows(parser: argparse.ArgumentParser) -> list[str]:
    rows = []
    for a in _sub_actions(parser):
        if a.help == argparse.SUPPRESS or isinstance(a, argparse._HelpAction):
            continue
        names = ", ".join(f"`{s}`" for s in a.option_strings) or f"`{a.dest}`"
        if a.nargs == 0:
            value = ""
        elif a.choices:
            value = " \\| ".join(f"`{c}`" for c in a.choices)
        else:
            value = f"`{a.metavar or a.dest.upper()}`"
        text = (a.help or "") % {"default": a.default, "prog": parser.prog}
        extra = []
        if a.required:
            extra.append("required")
        shown_default = a.default not in (None, False, argparse.SUPPRESS) and a.nargs != 0
        if shown_default and "default" not in text:
            extra.append(f"default `{a.default}`")
        if extra:
            text = f"{text} ({'; '.join(extra)})" if text else "; ".join(extra)
        rows.append(f"| {names} | {value} | {_cell(text)} |")
    return rows


def _usage(parser: argparse.ArgumentParser) -> str:
    parser.formatter_class = functools.partial(argparse.HelpFormatter, width=USAGE_WIDTH)
    return parser.format_usage().strip()


def render_cli_reference() -> str:
    """``docs/cli.md``: usage and an option table for ``scalabl`` and each subcommand."""
    from scalabl_pyro.cli import build_parser

    parser = build_parser()
    lines = [
        "# Command-line reference",
        "",
        "<!-- generated from scalabl_pyro.cli.build_parser() by tools/docs_hooks.py;",
        "     do not edit: run `make cli-docs` -->",
        "",
        parser.description or "",
        "",
        "```text",
        _usage(parser),
        "```",
        "",
        "| option | value | description |",
        "|---|---|---|",
        *_option_rows(parser),
        "",
        "Every input problem ends the command with one line `error: <problem>; <fix>` and exit",
        "status 2, before anything slow runs; the full list is in [Reliability](reliability.md).",
        "",
        "| command | what it does |",
        "|---|---|",
    ]
    commands = _subcommands(parser)
    lines += [f"| [`{name}`](#scalabl-{name}) | {_cell(h)} |" for name, h, _ in commands]
    for name, help_text, sub in commands:
        lines += ["", f"## `scalabl {name}`", "", f"{help_text[:1].upper()}{help_text[1:]}.", ""]
        lines += ["```text", _usage(sub), "```", ""]
        rows = _option_rows(sub)
        if rows:
            lines += ["| option | value | description |", "|---|---|---|", *rows]
    return "\n".join(lines).rstrip() + "\n"


def write_cli_reference(path: Path = CLI_PAGE) -> bool:
    """Rewrite ``path`` atomically if it differs from a fresh rendering; True if it changed."""
    text = render_cli_reference()
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return False
    write_text_atomic(path, text)  # a unique temporary file beside it, then a rename
    return True


# ------------------------------------------------------------ mkdocs hooks


def _fill(nav: list, section: str, entries: list[dict[str, str]]) -> bool:
    """Replace the first ``{section: []}`` in ``nav`` (searched depth first) by ``entries``."""
    for item in nav:
        if isinstance(item, dict):
            for key, value in item.items():
                if key == section and value == []:
                    item[key] = entries
                    return True
                if isinstance(value, list) and _fill(value, section, entries):
                    return True
    return False


def on_config(config: MkDocsConfig) -> MkDocsConfig:
    """Fill the nav sections ``Tutorials`` and ``API reference``; check ``docs/cli.md``."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))  # the checkout's package, also when not installed
    nav = config.nav or []
    tutorials = [{notebook_title(p): f"{NOTEBOOKS.name}/{p.name}"} for p in notebooks()]
    api = api_nav()
    for section, entries in ((TUTORIALS_SECTION, tutorials), (API_SECTION, api)):
        if not _fill(nav, section, entries):
            log.warning("mkdocs.yml nav has no empty '%s: []' section to fill", section)
    if not CLI_PAGE.exists() or CLI_PAGE.read_text(encoding="utf-8") != render_cli_reference():
        log.warning("docs/cli.md is out of date with scalabl_pyro/cli/; run `make cli-docs`")
    return config


@event_priority(100)  # before mkdocs-jupyter's on_files, which picks up the .ipynb files
def on_files(files: Files, config: MkDocsConfig) -> Files:
    """Add the notebooks as ``notebooks/*.ipynb`` and one generated page per module."""
    for path in notebooks():
        # a plain File rooted at the checkout (src_uri notebooks/<name>): mkdocs-jupyter's
        # wrapper cannot read a File.generated one
        files.append(
            File(
                f"{NOTEBOOKS.name}/{path.name}",
                src_dir=str(ROOT),
                dest_dir=config.site_dir,
                use_directory_urls=config.use_directory_urls,
            )
        )
    files.append(File.generated(config, EXPORTS_PAGE, content=exports_page()))
    for module in api_modules():
        files.append(File.generated(config, api_path(module), content=api_page(module)))
    return files


_STDERR = re.compile(
    r'<div class="[^"]*" data-mime-type="application/vnd\.jupyter\.stderr"[^>]*>'
    r"\s*<pre>.*?</pre>\s*</div>",
    re.DOTALL,
)


def strip_stderr(html: str) -> str:
    """A rendered notebook without its stderr streams (library warnings, progress bars,
    with the paths of the machine that ran it); results, stdout and errors stay."""
    return _STDERR.sub("", html)


def on_post_page(output: str, page, config: MkDocsConfig) -> str:
    """Tutorial pages are shown without the stderr noise of the run that stored them."""
    if page.file.src_uri.startswith(f"{NOTEBOOKS.name}/"):
        return strip_stderr(output)
    return output


def on_page_markdown(markdown: str, page, config: MkDocsConfig, files: Files) -> str:
    """Caption each ``--8<--`` include of a result file with the commit it was made at."""
    return _render_tables().snippet_captions(markdown)


@functools.cache
def _render_tables():
    """tools/render_tables.py (loaded by path: tools/ is not a package)."""
    spec = importlib.util.spec_from_file_location(
        "render_tables", ROOT / "tools" / "render_tables.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    changed = write_cli_reference()
    print(f"{CLI_PAGE.relative_to(ROOT)} {'rewritten' if changed else 'already up to date'}")
