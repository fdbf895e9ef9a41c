"""Results tables in README.md and docs/*.md, rendered from their result files.

A number typed into a page goes stale the day a default changes, so every results
table a reader sees is cut from a file under ``benchmarks/results/`` and carries a
caption naming that file, the settings and machine it records, and the commit it was
made with. Two mechanisms, one per kind of page:

- **Marked regions** (README.md and docs pages alike; GitHub shows README.md raw, so
  the table must be in the file itself)::

      <!-- table: benchmarks/results/calibration/arc_easy/table.md
      columns: [method, ACC, ECE %, NLL]
      rows:
        mle[normalization=sum]: MLE LoRA, summed scores
        scalabl[normalization=mean,init_scale=0.4]: "**ScalaBL, defaults**"
      -->
      ... generated table and caption ...
      <!-- /table -->

  ``python tools/render_tables.py`` rewrites everything between the two markers;
  ``tests/test_docs_tables.py`` fails when a region differs from a fresh rendering.
- **Snippet includes** (docs pages only): ``--8<-- "benchmarks/results/x.md"`` puts the
  file in verbatim; :func:`snippet_captions` (called from ``tools/docs_hooks.py``) adds
  the commit caption under it when the site is built.

Directive options (YAML after the path, all optional):

``columns``
    source columns to keep, in order: a header name, or ``{source: shown}`` to
    rename. For a ``.json`` source each item is ``{shown: spec}`` with ``spec`` =
    ``field[*scale][:format]``, e.g. ``{"ECE %": "ece*100:.1f"}`` (dotted fields reach
    into nested objects).
``rows``
    which rows, in this order: a list of keys, or ``{key: label}`` to relabel. The key
    is the first column of a ``.md``/``.csv`` source (``key:`` picks another), or the
    ``key:`` field of a ``.json`` row.
``bold``
    row keys whose cells are printed in bold.
``table``
    which table of a ``.md`` source (0-based; default 0).
``from``
    for a ``.json`` source, the field holding the list of rows (default ``rows``).
``fields``
    for a ``.json`` source that is one record, not a list of rows: a list of
    ``{label: template}`` (or ``{label: [template, ...]}`` for several value columns),
    each a row; ``{field[*scale][:format]}`` in a template is replaced by that field
    (``header`` names the columns; default ``[measured, value]``).
``where``
    ``{column: value}``: keep only the rows with these cells (before ``rows``).
``settings``
    the settings keys shown in the caption (default: all but file names and flags).

A key that matches several rows (after ``fields``
    for a ``.json`` source that is one record, not a list of rows: a list of
    ``{label: template}`` (or ``{label: [template, ...]}`` for several value columns),
    each a row; ``{field[*scale][:format]}`` in a template is replaced by that field
    (``header`` names the columns; default ``[measured, value]``).
``where``) brings all of them, in file order.

The commit: the result file's own ``commit`` field when it records one; otherwise the
entry for the file in ``benchmarks/results/provenance.json``, which holds the file's
SHA-256 and the commit it was made at (``made``: the checkout the benchmark ran on) or,
for files older than this mechanism, the commit that published it (``published``).
``python tools/render_tables.py`` adds missing and stale entries (from ``git``); the
test only reads them, so it needs no git history.

Also a check: :func:`stray_tables` lists results-looking tables (a header naming a
metric, or numbers with ``±`` or ``%``) outside any marked region; the test fails on
them. A page that states it is a history page (``<!-- results-history: why -->``) is
exempt: its tables are a record of superseded settings, not current results. A table
right under ``<!-- not-results: why -->`` (a status summary, say) is exempt too.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from scalabl_pyro.utils.atomic import write_text_atomic

ROOT = Path(__file__).resolve().parent.parent
RESULTS = "benchmarks/results"
PROVENANCE = ROOT / RESULTS / "provenance.json"

OPEN = re.compile(r"<!-- table: (?P<body>.*?)-->\n", re.DOTALL)
CLOSE = "<!-- /table -->"
SNIPPET = re.compile(r'^--8<-- "(?P<path>benchmarks/results/[^"]+)"\s*$', re.MULTILINE)
HISTORY = "<!-- results-history:"
NOT_RESULTS = "<!-- not-results:"

HIDDEN_SETTINGS = {"out", "output", "output_dir", "no_progress", "progress", "root", "only"}
"""Settings keys left out of captions: where the file went and display flags, not what
was measured."""

RESULT_HEADER = re.compile(r"\b(ACC|ECE|NLL|Brier|AURC|elpd|k-hat|k̂)\b", re.IGNORECASE)
RESULT_CELL = re.compile(r"±|\d\s?%")


def pages() -> list[Path]:
    """The pages whose tables are checked: README.md and the hand-written docs pages."""
    docs = sorted(p for p in (ROOT / "docs").glob("*.md") if p.name != "cli.md")
    return [ROOT / "README.md", *docs]


# ----------------------------------------------------------------- sources


def _md_tables(text: str) -> list[list[list[str]]]:
    """Every pipe table of a Markdown text, as rows of cells (header first, rule dropped)."""
    tables, current = [], []
    for line in [*text.splitlines(), ""]:
        if line.lstrip().startswith("|"):  # also tables indented under a list item
            current.append(line.strip())
            continue
        if len(current) >= 2:
            tables.append([_split_row(r) for i, r in enumerate(current) if i != 1])
        current = []
    return tables


def _split_row(line: str) -> list[str]:
    cells = re.split(r"(?<!\\)\|", line.strip())
    return [c.strip() for c in cells[1:-1]]


def _lookup(row: dict, field: str) -> Any:
    value: Any = row
    for part in field.split("."):
        value = value[part]
    return value


def _format(value: Any, spec: str) -> str:
    """``field[*scale][:format]`` applied to one value (None and missing print as '–')."""
    if value is None:
        return "–"
    scale, fmt = 1.0, ""
    if ":" in spec:
        spec, fmt = spec.split(":", 1)
    if "*" in spec:
        scale = float(spec.split("*", 1)[1])
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = value * scale if scale != 1.0 else value
    return format(value, fmt) if fmt else str(value)


def _fill_template(data: dict, template: str) -> str:
    """``"{a.b} of {c:.1e}"`` with each ``{field[*scale][:format]}`` read from ``data``."""

    def one(m: re.Match) -> str:
        field = re.split(r"[*:]", m[1], maxsplit=1)[0]
        return _format(_lookup(data, field), m[1][len(field) :])

    return re.sub(r"\{([^{}]+)\}", one, str(template))


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    keys: list[str]


def load_table(path: str, options: dict) -> Table:
    """The table a directive asks for, before row and column selection."""
    file = ROOT / path
    if file.suffix == ".json" and "fields" in options:
        data = json.loads(file.read_text(encoding="utf-8"))
        header = list(options.get("header", ["measured", "value"]))
        body = []
        for field in options["fields"]:
            for label, templates in field.items():
                templates = templates if isinstance(templates, list) else [templates]
                body.append([label, *(_fill_template(data, t) for t in templates)])
        return Table(header, body, [r[0] for r in body])
    if file.suffix == ".json":
        data = json.loads(file.read_text(encoding="utf-8"))
        rows = _lookup(data, options.get("from", "rows"))
        columns = [next(iter(c.items())) for c in options["columns"]]
        key = options.get("key")
        header = [shown for shown, _ in columns]
        body = []
        for row in rows:
            cells = []
            for _, spec in columns:
                field = re.split(r"[*:]", spec, maxsplit=1)[0]
                try:
                    cells.append(_format(_lookup(row, field), spec[len(field) :]))
                except (KeyError, TypeError):
                    cells.append("–")
            body.append(cells)
        keys = [str(_lookup(r, key)) if key else c[0] for r, c in zip(rows, body)]
        return Table(header, body, keys)
    if file.suffix == ".csv":
        parsed = list(csv.reader(io.StringIO(file.read_text(encoding="utf-8"))))
    else:
        tables = _md_tables(file.read_text(encoding="utf-8"))
        parsed = tables[options.get("table", 0)]
    header, body = parsed[0], parsed[1:]
    key_col = header.index(options["key"]) if "key" in options else 0
    return Table(header, body, [r[key_col] for r in body])


def select(table: Table, options: dict) -> Table:
    """Apply ``columns`` (non-JSON sources), ``rows`` and ``bold``."""
    header, rows, keys = table.header, table.rows, table.keys
    where = {str(k): str(v) for k, v in options.get("where", {}).items()}
    if where:
        cols = {name: table.header.index(name) for name in where}
        kept = [i for i, r in enumerate(rows) if all(r[c] == where[n] for n, c in cols.items())]
        rows, keys = [rows[i] for i in kept], [keys[i] for i in kept]
    wanted = options.get("rows")
    if wanted is not None:
        labels = wanted if isinstance(wanted, dict) else {k: None for k in wanted}
        picked_rows, picked_keys = [], []
        for key, label in labels.items():
            matches = [i for i, k in enumerate(keys) if k == key]  # all of them, in file order
            if not matches:
                raise KeyError(f"row {key!r} is not in the result file (rows: {keys})")
            for i in matches:
                row = list(rows[i])
                if label is not None:
                    row[0] = str(label)
                picked_rows.append(row)
                picked_keys.append(key)
        rows, keys = picked_rows, picked_keys
    bold = set(options.get("bold", []))
    rows = [
        [f"**{c}**" if k in bold and c and not c.startswith("**") else c for c in r]
        for r, k in zip(rows, keys)
    ]
    return Table(header, rows, keys)


def select_columns(table: Table, columns: list) -> Table:
    names = [c if isinstance(c, str) else next(iter(c)) for c in columns]
    shown = [c if isinstance(c, str) else next(iter(c.values())) for c in columns]
    missing = [n for n in names if n not in table.header]
    if missing:
        raise KeyError(f"columns {missing} are not in the result file ({table.header})")
    idx = [table.header.index(n) for n in names]
    return Table(shown, [[r[i] for i in idx] for r in table.rows], table.keys)


# ------------------------------------------------------------------ caption


def _meta(path: str) -> dict:
    """settings, machine, command and commit recorded beside a result file."""
    file = ROOT / path
    candidates = [
        file.with_suffix(".json"),
        file.parent / "table.json",
        file.parent / "benchmark.json",
    ]
    candidates.append(file.parent / "guide_comparison.json")
    meta: dict = {}
    for c in candidates:
        if not c.exists():
            continue
        try:
            data = json.loads(c.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            continue
        if not isinstance(data, dict):
            continue
        for key, source in (
            ("settings", "settings"),
            ("settings", "config"),
            ("machine", "machine"),
            ("command", "command"),
            ("commit", "commit"),
        ):
            if key not in meta and source in data:
                meta[key] = data[source]
        if (
            "commit" not in meta
            and isinstance(data.get("machine"), dict)
            and "commit" in data["machine"]
        ):
            meta["commit"] = data["machine"]["commit"]
    return meta


def _settings_text(settings: Any, keys: list[str] | None) -> str:
    if not isinstance(settings, dict):
        return str(settings)
    items = [(k, v) for k, v in settings.items() if k not in HIDDEN_SETTINGS and v is not None]
    if keys is not None:
        items = [(k, settings[k]) for k in keys if k in settings]

    def value(v: Any) -> str:
        if isinstance(v, (list, tuple)):
            return ",".join(map(str, v))
        return str(v)

    return ", ".join(f"{k} {value(v)}" for k, v in items)


def _machine_text(machine: Any) -> str:
    if not machine:
        return ""
    if not isinstance(machine, dict):
        return str(machine)
    parts = []
    if machine.get("cpus"):
        parts.append(f"{machine['cpus']} CPUs")
    if machine.get("cuda"):
        parts.append(f"CUDA {machine['cuda']}")
    if machine.get("torch"):
        parts.append(f"torch {machine['torch']}")
    return ", ".join(parts)


def provenance() -> dict:
    if PROVENANCE.exists():
        return json.loads(PROVENANCE.read_text(encoding="utf-8"))
    return {}


def _sha256(path: str) -> str:
    return hashlib.sha256((ROOT / path).read_bytes()).hexdigest()


def commit_of(path: str, record: dict | None = None) -> str:
    """'made at abc1234' / 'published in abc1234' for a result file, or a note to stamp it."""
    meta = _meta(path)
    if meta.get("commit"):
        return f"made at commit `{str(meta['commit'])[:10]}`"
    record = provenance() if record is None else record
    entry = record.get(path)
    if entry is None or entry.get("sha256") != _sha256(path):
        return "commit not recorded (run `python tools/render_tables.py`)"
    verb = "made at" if entry.get("how") == "made" else "published in"
    return f"{verb} commit `{entry['commit']}`"


def caption(path: str, options: dict, record: dict | None = None) -> str:
    meta = _meta(path)
    parts = [f"From `{path}`"]
    if "settings" in meta:
        parts.append(f"settings: {_settings_text(meta['settings'], options.get('settings'))}")
    elif meta.get("command"):
        parts.append(f"command: `{meta['command']}`")
    machine = _machine_text(meta.get("machine"))
    if machine:
        parts.append(f"machine: {machine}")
    parts.append(commit_of(path, record))
    return "<small>" + "; ".join(parts) + ".</small>"


# ------------------------------------------------------------------ regions


def parse_directive(body: str) -> tuple[str, dict]:
    first, _, rest = body.partition("\n")
    try:
        options = yaml.safe_load(rest) if rest.strip() else {}
    except yaml.YAMLError as e:
        where = str(e).replace("\n", " ")
        raise ValueError(
            f"the options of the table region for {first.strip()!r} are not YAML ({where}); "
            'quote a name that holds [ ] : or \' (e.g. "paired gap [95 % CI]")'
        ) from None
    return first.strip(), options or {}


def render(path: str, options: dict, record: dict | None = None) -> str:
    """The generated text of one region: the table, a blank line, the caption."""
    table = select(load_table(path, options), options)
    if "columns" in options and not path.endswith(".json"):
        table = select_columns(table, options["columns"])

    def row(cells: list[str]) -> str:
        return "| " + " | ".join(cells) + " |"

    lines = [row(table.header), "|" + "---|" * len(table.header), *map(row, table.rows)]
    return "\n".join(lines) + "\n\n" + caption(path, options, record) + "\n"


def regions(text: str) -> list[tuple[int, int, str, dict]]:
    """(start, end, path, options) of each generated span (between the two markers)."""
    out = []
    for m in OPEN.finditer(text):
        end = text.find(CLOSE, m.end())
        if end < 0:
            raise ValueError(f"table region for {m['body'].splitlines()[0]!r} has no {CLOSE}")
        path, options = parse_directive(m["body"])
        out.append((m.end(), end, path, options))
    return out


def _indent(text: str, start: int) -> str:
    """The whitespace before the directive that ends at ``start`` (a table in a list item)."""
    opening = text.rfind("<!-- table:", 0, start)
    line_start = text.rfind("\n", 0, opening) + 1
    prefix = text[line_start:opening]
    return prefix if not prefix.strip() else ""


def rewrite(text: str, record: dict | None = None) -> str:
    """``text`` with every marked region rendered afresh (indented like its directive)."""
    pieces, last = [], 0
    for start, end, path, options in regions(text):
        indent = _indent(text, start)
        body = render(path, options, record)
        if indent:
            body = "".join(f"{indent}{line}\n" if line else "\n" for line in body.splitlines())
            body += indent
        pieces += [text[last:start], body]
        last = end
    return "".join(pieces) + text[last:]


def referenced_files() -> list[str]:
    """Every result file named by a region or a snippet include in the checked pages."""
    found = []
    for page in pages():
        text = page.read_text(encoding="utf-8")
        found += [path for _, _, path, _ in regions(text)]
        found += [m["path"] for m in SNIPPET.finditer(text)]
    return sorted(set(found))


# -------------------------------------------------------------------- check


def stray_tables(text: str) -> list[str]:
    """Header lines of results-looking tables outside marked regions (``[]`` on history pages)."""
    if HISTORY in text:
        return []
    for start, end, _, _ in reversed(regions(text)):
        text = text[:start] + text[end:]
    text = re.sub(r"```.*?```", "", text, flags=re.DOTALL)
    # a table right under a "<!-- not-results: why -->" line is a summary, not a result
    text = re.sub(r"<!-- not-results:.*?-->\n(\s*\|.*\n)+", "", text)
    stray = []
    for table in _md_tables(text):
        header, body = table[0], table[1:]
        looks = any(RESULT_HEADER.search(h) for h in header) or any(
            RESULT_CELL.search(c) for r in body for c in r
        )
        if looks:
            stray.append("| " + " | ".join(header) + " |")
    return stray


def snippet_captions(markdown: str) -> str:
    """Add the commit caption under each ``--8<--`` include of a result file."""

    def add(m: re.Match) -> str:
        path = m["path"]
        return f"{m.group(0)}\n\n<small>From `{path}`, {commit_of(path)}.</small>"

    return SNIPPET.sub(add, markdown)


# ------------------------------------------------------------------- writing


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()


def stamp(paths: list[str]) -> dict:
    """Provenance entries for ``paths``: kept when the file is unchanged, else made anew.

    A file committed unchanged since it was last touched gets the commit that published
    it; a new or modified file gets HEAD (the checkout the benchmark ran on)."""
    record = provenance()
    for path in paths:
        digest = _sha256(path)
        entry = record.get(path)
        if entry and entry.get("sha256") == digest:
            continue
        dirty = _git("status", "--porcelain", "--", path)
        if dirty:
            record[path] = {
                "sha256": digest,
                "commit": _git("rev-parse", "--short=10", "HEAD"),
                "how": "made",
            }
        else:
            published = _git("log", "-1", "--format=%h", "--abbrev=10", "--", path)
            record[path] = {"sha256": digest, "commit": published, "how": "published"}
    return dict(sorted(record.items()))


def _write(path: Path, text: str) -> bool:
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return False
    write_text_atomic(path, text)  # a unique temporary file beside it, then a rename
    return True


def main() -> int:
    record = stamp(referenced_files())
    changed = []
    if _write(PROVENANCE, json.dumps(record, indent=1) + "\n"):
        changed.append(PROVENANCE)
    for page in pages():
        text = page.read_text(encoding="utf-8")
        if _write(page, rewrite(text, record)):
            changed.append(page)
    for path in changed:
        print(f"rewrote {path.relative_to(ROOT)}")
    stray = {p.relative_to(ROOT): stray_tables(p.read_text(encoding="utf-8")) for p in pages()}
    for page, headers in stray.items():
        for header in headers:
            print(f"{page}: hand-typed results table: {header}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except (KeyError, ValueError) as e:  # a bad region or result file: one line, exit 2
        print(f"render_tables: {e.args[0] if e.args else e}", file=sys.stderr)
        raise SystemExit(2) from None
