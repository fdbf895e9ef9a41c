"""mkdocs hooks for the documentation site, and the writer of ``docs/cli.md``.

The site's generated parts come from the sources themselves, so they cannot
drift:

- **Tutorials**: every ``notebooks/*.ipynb`` becomes a page ``notebooks/<name>/``
  (rendered by mkdocs-jupyter from its stored outputs, never executed), listed
  under the nav section ``Tutorials`` in file-name order, titled by the
  notebook's first heading. A new notebook needs no edit here.
- **API reference**: one page ``api/<module>.md`` per public module of
  ``scalabl_pyro`` (no leading underscore), each a mkdocstrings ``:::`` block,
  listed under ``API reference``: the modules in :data:`API_ORDER` first, then
  the rest alphabetically. A new module needs no edit here either.
- **CLI reference**: ``docs/cli.md`` is rendered from ``scalabl_pyro.cli.build_parser()``
  by :func:`render_cli_reference` and committed. The build warns (so a strict
  build fails) when the committed file differs from a fresh rendering; rewrite
  it with ``python tools/docs_hooks.py`` (``make cli-docs``).

mkdocs.yml names the two generated nav sections with an empty list
(``- Tutorials: []``, ``- API reference: []``); :func:`on_config` fills them.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import pkgutil
import sys
import tempfile
from pathlib import Path

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.plugins import event_priority
from mkdocs.structure.files import File, Files

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

USAGE_WIDTH = 88
log = logging.getLogger("mkdocs.hooks.scalabl")


# ------------------------------------------------------------- discovery


def api_modules() -> list[str]:
    """Public modules and subpackages of ``scalabl_pyro`` (dotted names), in nav order."""
    found = {
        m.name for m in pkgutil.iter_modules([str(ROOT / PACKAGE)]) if not m.name.startswith("_")
    }
    first = [m for m in API_ORDER if m in found]
    return [f"{PACKAGE}.{m}" for m in first + sorted(found - set(first))]


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


def api_page(module: str) -> str:
    """Markdown of one API page: the module's docstring and members via mkdocstrings."""
    is_package = (ROOT / Path(*module.split("."))).is_dir()
    options = "\n    options:\n      show_submodules: true" if is_package else ""
    return f"# `{module}`\n\n::: {module}{options}\n"


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
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
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
    api = [
        {m.removeprefix(f"{PACKAGE}."): f"api/{m.removeprefix(f'{PACKAGE}.')}.md"}
        for m in api_modules()
    ]
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
    for module in api_modules():
        short = module.removeprefix(f"{PACKAGE}.")
        files.append(File.generated(config, f"api/{short}.md", content=api_page(module)))
    return files


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    changed = write_cli_reference()
    print(f"{CLI_PAGE.relative_to(ROOT)} {'rewritten' if changed else 'already up to date'}")
