"""Load a multiple-choice data set from a local file the user brings.

Supported files: ``.jsonl`` (one JSON object per line), ``.json`` (a list of
objects, or an object with an ``"examples"`` list), ``.csv`` (a header row,
then one row per example) and ``.parquet``. ``.jsonl``, ``.json`` and ``.csv``
may also be gzipped (``.jsonl.gz`` ...). The whole file is one split.

Fields of each example (row):

``question`` (str, required)
    The question text (for reading comprehension, put the passage in it too).
``choices`` (list of str, required, at least 2)
    In JSONL/JSON/parquet a list. In CSV a JSON-encoded list in one cell, e.g.
    ``"[""red"", ""blue""]"``. Instead of ``choices``, any format may give one
    column per choice named ``A``, ``B``, ``C``, ...; the choices are the
    non-empty cells from ``A`` onwards, stopping at the first empty one, so rows
    may have different numbers of choices.
``label`` (required)
    The correct choice, as a 0-based integer index (``2``; also the string
    ``"2"``), a single capital letter (``"C"`` = index 2), or the exact text of
    the correct choice. Integers and digit strings are read as indices and a
    single capital letter as a letter before the text is tried, so when the
    choices are themselves digits or capital letters, give the index.
``id`` (optional)
    Any string; defaults to the example's 0-based position in the file.

Other fields are ignored. Rows are counted from 1 in error messages (for JSONL
the row is the line number; a CSV header line does not count).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
import string
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from scalabl_pyro.data.examples import MCDataset, MCExample
from scalabl_pyro.errors import ScalaBLError

LOCAL_SUFFIXES: tuple[str, ...] = (".jsonl", ".json", ".csv", ".parquet")
_GZIPPABLE = (".jsonl", ".json", ".csv")
_LETTERS = string.ascii_uppercase
_FIELDS_HINT = "local files need question, choices, label (see docs)"


def _file_kind(path: Path) -> tuple[str, bool]:
    """The format suffix of ``path`` and whether it is gzipped."""
    suffixes = [s.lower() for s in path.suffixes]
    gz = bool(suffixes) and suffixes[-1] == ".gz"
    if gz:
        suffixes = suffixes[:-1]
    kind = suffixes[-1] if suffixes else ""
    if kind in LOCAL_SUFFIXES and (not gz or kind in _GZIPPABLE):
        return kind, gz
    raise ScalaBLError(
        f"file {path} has an unsupported type {''.join(path.suffixes) or '(none)'!r}; "
        "use .jsonl, .json, .csv or .parquet (the first three may be gzipped)"
    )


def is_local_path(name: str | Path) -> bool:
    """Whether ``name`` looks like a local data file rather than a data-set key."""
    if isinstance(name, Path):
        return True
    lowered = name.lower()
    if lowered.endswith(".gz"):
        lowered = lowered[:-3]
    return lowered.endswith(LOCAL_SUFFIXES) or "/" in name or "\\" in name or Path(name).is_file()


def _read_text(path: Path, gz: bool) -> str:
    raw = path.read_bytes()
    if gz:
        raw = gzip.decompress(raw)
    return raw.decode("utf-8-sig")


def _rows(path: Path, kind: str, gz: bool) -> Iterator[tuple[int, Any]]:
    """Yield ``(row number, raw row)`` pairs; row numbers start at 1."""
    if kind == ".parquet":
        import pyarrow.parquet as pq

        yield from enumerate(pq.read_table(path).to_pylist(), start=1)
        return
    text = _read_text(path, gz)
    if kind == ".jsonl":
        for line_no, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                yield line_no, json.loads(line)
            except json.JSONDecodeError as err:
                raise ScalaBLError(
                    f"file {path}: row {line_no} is not valid JSON ({err.msg}); "
                    "a .jsonl file needs one JSON object per line"
                ) from None
    elif kind == ".json":
        try:
            data = json.loads(text) if text.strip() else []
        except json.JSONDecodeError as err:
            raise ScalaBLError(
                f"file {path} is not valid JSON ({err.msg} at line {err.lineno}); "
                "fix it, or use .jsonl with one object per line"
            ) from None
        if isinstance(data, dict) and isinstance(data.get("examples"), list):
            data = data["examples"]
        if not isinstance(data, list):
            raise ScalaBLError(
                f"file {path} holds a JSON {type(data).__name__}; a .json data file must be "
                'a list of examples or an object with an "examples" list'
            )
        yield from enumerate(data, start=1)
    else:  # .csv
        reader = csv.DictReader(io.StringIO(text, newline=""))
        yield from enumerate(reader, start=1)


def _missing_value(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()


def _choices(row: Mapping[str, Any], where: str) -> tuple[str, ...]:
    """The choices of a row: a ``choices`` list (or JSON list string) or A, B, ... columns."""
    value = row.get("choices")
    if not _missing_value(value):
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                raise ScalaBLError(
                    f"{where} has choices {value[:60]!r}, which is not a JSON list; "
                    'write e.g. ["red", "blue"], or use columns A, B, C, ...'
                ) from None
        if isinstance(value, (list, tuple)) or hasattr(value, "tolist"):
            items = list(value.tolist() if hasattr(value, "tolist") else value)
            if all(not _missing_value(c) for c in items):
                return tuple(str(c) for c in items)
            raise ScalaBLError(f"{where} has an empty choice; every choice needs some text")
        raise ScalaBLError(
            f"{where} has choices of type {type(value).__name__}; choices must be a list of strings"
        )
    letters = []
    for letter in _LETTERS:
        cell = row.get(letter)
        if _missing_value(cell):
            break
        letters.append(str(cell))
    if letters:
        return tuple(letters)
    raise ScalaBLError(f"{where} is missing field 'choices'; {_FIELDS_HINT}")


def _label(value: Any, choices: tuple[str, ...], where: str) -> int:
    """A 0-based index from an int, digit string, capital letter or the answer text."""
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()  # numpy scalars
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    index: int | None = None
    if isinstance(value, int):
        index = int(value)
    elif isinstance(value, str):
        text = value.strip()
        if text.lstrip("-").isdigit():
            index = int(text)
        elif len(text) == 1 and text in _LETTERS:
            index = _LETTERS.index(text)
        elif text in choices:
            index = choices.index(text)
        else:
            raise ScalaBLError(
                f"{where} has label {value!r}, which is not among its choices {list(choices)}; "
                "give a 0-based index, a letter A-Z, or the exact text of the correct choice"
            )
    else:
        raise ScalaBLError(
            f"{where} has label of type {type(value).__name__}; "
            "give a 0-based index, a letter A-Z, or the exact text of the correct choice"
        )
    if not 0 <= index < len(choices):
        raise ScalaBLError(
            f"{where} has label {value!r}, out of range for its {len(choices)} choices; "
            "labels are 0-based indices (0 to {})".format(len(choices) - 1)
        )
    return index


def _example(row: Any, position: int, where: str) -> MCExample:
    if not isinstance(row, Mapping):
        raise ScalaBLError(
            f"{where} is a {type(row).__name__}, not an object with fields; {_FIELDS_HINT}"
        )
    for field in ("question", "label"):
        if _missing_value(row.get(field)):
            raise ScalaBLError(f"{where} is missing field {field!r}; {_FIELDS_HINT}")
    choices = _choices(row, where)
    if len(choices) < 2:
        raise ScalaBLError(f"{where} has {len(choices)} choice(s); an example needs at least 2")
    label = _label(row["label"], choices, where)
    raw_id = row.get("id")
    ex_id = str(position) if _missing_value(raw_id) else str(raw_id)
    return MCExample(ex_id, str(row["question"]), choices, label)


def load_local(path: str | Path, *, name: str | None = None, split: str = "train") -> MCDataset:
    """Load a local .jsonl/.json/.csv/.parquet file (schema in the module docs) as one split."""
    path = Path(path).expanduser()
    kind, gz = _file_kind(path)
    if not path.is_file():
        raise ScalaBLError(
            f"file {path} not found; check the path (data-set names like 'arc_easy' "
            "have no file extension)"
        )
    examples: list[MCExample] = []
    for row_no, row in _rows(path, kind, gz):
        examples.append(_example(row, len(examples), f"file {path}: row {row_no}"))
    if not examples:
        raise ScalaBLError(
            f"file {path} has no examples; add rows with question, choices and label"
        )
    if name is None:
        name = path.name.split(".")[0] or path.name
    return MCDataset(name, split, examples)
