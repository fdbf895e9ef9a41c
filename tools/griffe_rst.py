"""A griffe extension: the reST bits of this project's docstrings, as Markdown.

The docstrings are written for ``help()`` and Sphinx-style readers; the API
reference renders them as Markdown. Two constructs would come out garbled,
so they are rewritten when griffe loads each object (the source is untouched):

- cross-reference roles, ``:func:`~scalabl_pyro.evaluation.metrics.aurc``` -> ```aurc```
  (``~`` keeps the last dotted component, as in Sphinx);
- simple tables (rows between ``=====  ====`` rules) -> Markdown tables; a row
  whose first cell is empty continues the row above;
- the literal-block marker ``text::`` -> ``text:`` (the indented block after
  it is already a Markdown code block).
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|data|attr|exc|obj|const):`(~?)([^`]+)`")
_RULE = re.compile(r"^\s*=+(?:\s+=+)+\s*$")
_LITERAL = re.compile(r"(?<=\S)::$", re.MULTILINE)


def _role(match: re.Match) -> str:
    tilde, target = match.groups()
    return f"`{target.rsplit('.', 1)[-1] if tilde else target}`"


def _columns(rule: str) -> list[tuple[int, int]]:
    """(start, end) of each column, from the ``=`` runs of a rule line."""
    return [(m.start(), m.end()) for m in re.finditer(r"=+", rule)]


def _cells(line: str, cols: list[tuple[int, int]]) -> list[str]:
    """Split ``line`` at the column starts; the last column runs to the end of the line."""
    starts = [c[0] for c in cols] + [None]
    return [line[starts[i] : starts[i + 1]].strip() for i in range(len(cols))]


def _table(lines: list[str]) -> list[str]:
    """Markdown for one simple table (``lines`` from its first rule to its last)."""
    cols = _columns(lines[0])
    rules = [i for i, line in enumerate(lines) if _RULE.match(line)]
    header_end = rules[1] if len(rules) >= 3 else None
    rows: list[list[str]] = []
    header: list[str] | None = None
    for i, line in enumerate(lines):
        if i in rules:
            if i == header_end and rows:
                header, rows = rows[0], []
            continue
        if not line.strip():
            continue
        cells = _cells(line, cols)
        if rows and not cells[0]:  # continuation of the row above
            rows[-1] = [f"{a} {b}".strip() for a, b in zip(rows[-1], cells)]
        else:
            rows.append(cells)
    if header is None:
        header = [""] * len(cols)

    def fmt(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    return [fmt(header), "|" + "---|" * len(cols), *map(fmt, rows)]


def rst_to_markdown(text: str) -> str:
    """Rewrite roles and simple tables in a docstring (other text unchanged)."""
    text = _LITERAL.sub(":", _ROLE.sub(_role, text))
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        if _RULE.match(lines[i]):
            j = i + 1
            rules = 1
            while j < len(lines) and rules < 3:
                if _RULE.match(lines[j]):
                    rules += 1
                j += 1
            if rules == 3:
                out += ["", *_table(lines[i:j]), ""]
                i = j
                continue
        out.append(lines[i])
        i += 1
    return "\n".join(out)


class RstToMarkdown(griffe.Extension):
    """Applies :func:`rst_to_markdown` to every docstring griffe loads."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = rst_to_markdown(obj.docstring.value)
