"""Load a multiple-choice data set from a local file the user brings.

Supported files: ``.jsonl`` (one JSON object per line), ``.json`` (a list of
objects, or an object with an ``"examples"`` list), ``.csv`` (a header row,
then one row per example) and ``.parquet``. ``.jsonl``, ``.json`` and ``.csv``
may also be gzipped (``.jsonl.gz`` ...). The whole file is one split.

Fields of each example (row):

``question`` (text, required, not blank)
    The question text (for reading comprehension, put the passage in it too).
``choices`` (list of text, required, at least 2, all different)
    In JSONL/JSON/parquet a list. In CSV a JSON-encoded list in one cell, e.g.
    ``"[""red"", ""blue""]"``. Instead of ``choices``, any format may give one
    column per choice named ``A``, ``B``, ``C``, ...; the choices are the
    non-empty cells from ``A`` onwards, so rows may have different numbers of
    choices, but a row may not skip a letter (``A``, ``B``, ``D`` is an error).
``label`` (required)
    The correct choice, as a 0-based integer index (``2``; also the string
    ``"2"``), a single capital letter (``"C"`` = index 2), or the exact text of
    the correct choice. A number is always an index. A digit string is read as
    an index and a single capital letter as a letter, unless it is also the
    text of a *different* choice (``"2"`` with choices ``["1", "2", "3"]``):
    that label is ambiguous and refused, naming the spellings that mean one
    choice only (the letter ``"C"`` or ``"B"``, or a JSON integer). When both
    readings name the same choice (``"1"`` with ``["0", "1"]``) it is accepted.
    Booleans, fractional numbers and NaN are refused.
``id`` (optional)
    Any string; defaults to the example's 0-based position in the file.

Other fields are ignored. Every row is checked before any is used: a blank
question or choice, fewer than two choices, two choices with the same text
(after trimming spaces), a label that is not one of the choices, or a field of
the wrong type is an error that names the file and the row. Rows are counted
from 1 (for JSONL the row is the line number; a CSV header line does not
count). A file that cannot be read as its suffix says (not UTF-8, a broken or
truncated gzip or parquet file, invalid JSON) is an error that names the file.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
import re
import string
import zlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from scalabl_pyro.data.examples import MCDataset, MCExample
from scalabl_pyro.errors import ScalaBLError

LOCAL_SUFFIXES: tuple[str, ...] = (".jsonl", ".json", ".csv", ".parquet")
_GZIPPABLE = (".jsonl", ".json", ".csv")
_LETTERS = string.ascii_uppercase
_FIELDS_HINT = "local files need question, choices, label (see docs)"
_LABEL_HINT = "give a 0-based index, a letter A-Z, or the exact text of the correct choice"


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
    return lowered.endswith(LOCAL_SUFFIXES) or "/" in name or "\\" in name or Path(name).exists()


def _first_line(exc: BaseException) -> str:
    """The gist of an exception: its first line, without pyarrow's "Could not open ...: " prefix."""
    text = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), "")
    text = re.sub(r"^Could not open .*?: (?=\S)", "", text).split(". ")[0].rstrip(".")
    return text or type(exc).__name__


def _read_text(path: Path, kind: str, gz: bool) -> str:
    """The file's text: gunzipped if ``gz``, decoded as UTF-8 (a BOM is dropped)."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise ScalaBLError(
            f"file {path} cannot be read ({err.strerror or _first_line(err)}); "
            "check that it exists and that you may read it"
        ) from None
    if gz:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise ScalaBLError(
                f"file {path} is not a complete gzip file ({_first_line(err)}); it may be "
                "truncated or not compressed at all, so re-create it or drop the .gz suffix"
            ) from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ScalaBLError(
            f"file {path} is not UTF-8 text (undecodable byte at offset {err.start}); "
            f"check that it really is a {kind} file and save it as UTF-8"
        ) from None


def _check_columns(path: Path, columns: Sequence[str] | None, kind: str) -> None:
    """A table's header must name question, label and choices (or A, B, ...)."""
    if columns is None:
        return  # no header at all: reported as a file without examples
    cols = set(columns)
    missing = [repr(c) for c in ("question", "label") if c not in cols]
    if "choices" not in cols and "A" not in cols:
        missing.insert(len(missing) - ("'label'" in missing), "'choices' (or A, B, ...)")
    if missing:
        shown = ", ".join(repr(c) for c in list(columns)[:8]) or "none"
        raise ScalaBLError(
            f"file {path}: the {kind} has no column {', '.join(missing)} (its columns: {shown}); "
            f"{_FIELDS_HINT}"
        )


def _rows(path: Path, kind: str, gz: bool) -> Iterator[tuple[int, Any]]:
    """Yield ``(row number, raw row)`` pairs; row numbers start at 1."""
    if kind == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except (pa.ArrowException, OSError) as err:
            raise ScalaBLError(
                f"file {path} is not a readable parquet file ({_first_line(err)}); it may be "
                "truncated or another format renamed, so re-export it (DataFrame.to_parquet)"
            ) from None
        _check_columns(path, table.column_names, "parquet table")
        yield from enumerate(table.to_pylist(), start=1)
        return
    text = _read_text(path, kind, gz)
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
                f"file {path} is not valid JSON ({err.msg} at line {err.lineno}); it may be "
                "truncated: fix it, or use .jsonl with one object per line"
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
        try:
            _check_columns(path, reader.fieldnames, "CSV header")
            yield from enumerate(reader, start=1)
        except csv.Error as err:
            raise ScalaBLError(
                f"file {path}: row {reader.line_num} is not valid CSV ({err}); "
                "re-export it as comma-separated UTF-8 text"
            ) from None


def _absent(value: Any) -> bool:
    """None, or a float NaN (how pandas/parquet spell an empty cell)."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def _blank(value: Any) -> bool:
    return _absent(value) or (isinstance(value, str) and not value.strip())


def _scalar(value: Any) -> Any:
    """A numpy scalar as the Python value it holds (parquet rows may carry them)."""
    if isinstance(value, (str, bytes)) or hasattr(value, "__len__"):
        return value
    return value.item() if hasattr(value, "item") else value


def _text(value: Any, what: str, where: str) -> str:
    """A question or choice as text: strings, numbers and booleans; nothing nested."""
    value = _scalar(value)
    if isinstance(value, str):
        return value
    if isinstance(value, (bool, int)) or (isinstance(value, float) and math.isfinite(value)):
        return str(value)
    raise ScalaBLError(
        f"{where} has a {what} of type {type(value).__name__} ({str(value)[:40]!r}); "
        f"a {what} must be text"
    )


def _choice_name(i: int) -> str:
    return f"choice {i} ({_LETTERS[i]})" if i < len(_LETTERS) else f"choice {i}"


def _choices(row: Mapping[str, Any], where: str) -> tuple[str, ...]:
    """The choices of a row: a ``choices`` list (or JSON list string) or A, B, ... columns."""
    value = _scalar(row.get("choices"))
    if not _blank(value):
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                raise ScalaBLError(
                    f"{where} has choices {value[:60]!r}, which is not a JSON list; "
                    'write e.g. ["red", "blue"], or use columns A, B, C, ...'
                ) from None
        if hasattr(value, "tolist"):
            value = value.tolist()
        if isinstance(value, Mapping):
            hint = (
                ' (this looks like the hub layout {"text": [...], "label": [...]}; '
                "pass the list of texts)"
                if "text" in value
                else ""
            )
            raise ScalaBLError(
                f"{where} has choices that are an object{hint}; choices must be a list of strings"
            )
        if not isinstance(value, (list, tuple)):
            raise ScalaBLError(
                f"{where} has choices of type {type(value).__name__}; "
                "choices must be a list of strings"
            )
        for i, item in enumerate(value):
            if _blank(item):
                raise ScalaBLError(
                    f"{where} has an empty {_choice_name(i)}; every choice needs some text"
                )
        return tuple(_text(c, "choice", where) for c in value)
    present = [letter for letter in _LETTERS if not _blank(_scalar(row.get(letter)))]
    if not present:
        raise ScalaBLError(f"{where} is missing field 'choices'; {_FIELDS_HINT}")
    count = _LETTERS.index(present[-1]) + 1
    if len(present) != count:
        gap = next(letter for letter in _LETTERS[:count] if letter not in present)
        raise ScalaBLError(
            f"{where} has choice {present[-1]} but column {gap} is empty; "
            "fill the choice columns from A onwards without gaps"
        )
    return tuple(_text(row[letter], "choice", where) for letter in present)


def _check_choices(choices: tuple[str, ...], where: str) -> None:
    """At least two choices, all different (after trimming spaces)."""
    if len(choices) < 2:
        raise ScalaBLError(
            f"{where} has {len(choices)} choice(s); an example needs at least 2 to be scored"
        )
    seen: dict[str, int] = {}
    for i, choice in enumerate(choices):
        key = choice.strip()
        if key in seen:
            raise ScalaBLError(
                f"{where} has {_choice_name(seen[key])} and {_choice_name(i)} both {key!r}; "
                "each choice must be different, so fix or drop the row"
            )
        seen[key] = i


def _label(value: Any, choices: tuple[str, ...], where: str) -> int:
    """A 0-based index from an int, digit string, capital letter or the answer text."""
    value = _scalar(value)
    n = len(choices)
    letters = f"A-{_LETTERS[n - 1]}" if n <= len(_LETTERS) else "A-Z"
    if isinstance(value, bool):
        raise ScalaBLError(f"{where} has label {value!r}, a boolean; {_LABEL_HINT}")
    if isinstance(value, float):
        if not value.is_integer():
            raise ScalaBLError(f"{where} has label {value!r}, not a whole number; {_LABEL_HINT}")
        value = int(value)
    as_letter = False
    if isinstance(value, int):
        index = value
    elif isinstance(value, str):
        text = value.strip()
        if text.lstrip("-").isdigit():
            index = int(text)
            _check_unambiguous(text, index, choices, where, "an index")
        elif len(text) == 1 and text in _LETTERS:
            index, as_letter = _LETTERS.index(text), True
            _check_unambiguous(text, index, choices, where, "a letter")
        else:
            stripped = [c.strip() for c in choices]
            if text not in stripped:
                raise ScalaBLError(
                    f"{where} has label {value!r}, which is not among its choices "
                    f"{list(choices)}; {_LABEL_HINT}"
                )
            index = stripped.index(text)
    else:
        raise ScalaBLError(f"{where} has label of type {type(value).__name__}; {_LABEL_HINT}")
    if not 0 <= index < n:
        if as_letter:
            raise ScalaBLError(
                f"{where} has label {value!r}, but the row has only {n} choices ({letters}); "
                "fix the label or add the missing choices"
            )
        raise ScalaBLError(
            f"{where} has label {value!r}, out of range for its {n} choices; labels are "
            f"0-based indices (0 to {n - 1}), letters {letters} or the text of a choice"
        )
    return index


def _check_unambiguous(
    text: str, index: int, choices: tuple[str, ...], where: str, how: str
) -> None:
    """Refuse a digit or letter label that is also the text of *another* choice.

    ``"2"`` with choices ``["1", "2", "3"]`` is index 2 (``"3"``) by the index
    rule and choice 1 by its text: rather than pick one silently, ask for a
    spelling that means one choice only.
    """
    stripped = [c.strip() for c in choices]
    if text not in stripped or stripped.index(text) == index or not 0 <= index < len(choices):
        return
    by_text = stripped.index(text)

    def spelling(i: int) -> str | None:  # a label that means choice i and nothing else
        for cand in (_LETTERS[i] if i < len(_LETTERS) else None, str(i)):
            if cand is not None and (cand not in stripped or stripped.index(cand) == i):
                return repr(cand)
        return None

    first, second = spelling(index), spelling(by_text)
    fix = (
        f"write {first} for {choices[index]!r} or {second} for {choices[by_text]!r}"
        if first and second
        else "give the label as a JSON integer (a 0-based index, not a string)"
    )
    raise ScalaBLError(
        f"{where} has label {text!r}, which means choice {index} ({choices[index]!r}) as {how} "
        f"but is the text of choice {by_text}; the label is ambiguous, so {fix}"
    )


def _question(row: Mapping[str, Any], where: str) -> str:
    value = _scalar(row.get("question"))
    if _absent(value):
        raise ScalaBLError(f"{where} is missing field 'question'; {_FIELDS_HINT}")
    text = _text(value, "question", where)
    if not text.strip():
        raise ScalaBLError(f"{where} has an empty question; every example needs question text")
    return text


def _example(row: Any, position: int, where: str) -> MCExample:
    if not isinstance(row, Mapping):
        raise ScalaBLError(
            f"{where} is a {type(row).__name__}, not an object with fields; {_FIELDS_HINT}"
        )
    question = _question(row, where)
    label = _scalar(row.get("label"))
    if isinstance(label, float) and math.isnan(label):
        raise ScalaBLError(
            f"{where} has label NaN (an empty cell of a pandas/parquet table, or a NaN number); "
            f"{_LABEL_HINT}"
        )
    if _blank(label):
        raise ScalaBLError(f"{where} is missing field 'label'; {_FIELDS_HINT}")
    choices = _choices(row, where)
    _check_choices(choices, where)
    label = _label(row["label"], choices, where)
    raw_id = _scalar(row.get("id"))
    ex_id = str(position) if _blank(raw_id) else str(raw_id)
    return MCExample(ex_id, question, choices, label)


def load_local(path: str | Path, *, name: str | None = None, split: str = "train") -> MCDataset:
    """Load a local .jsonl/.json/.csv/.parquet file (schema in the module docs) as one split."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise ScalaBLError(
            f"{path} is a directory; pass one data file (.jsonl, .json, .csv or .parquet)"
        )
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
