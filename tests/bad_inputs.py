"""Broken data files, one per failure class, shared by the data tests and the CLI failure tests.

Each case writes one file in ``folder`` and names a fragment that the one-line
error must contain. Every case is a file a user could really hold: the wrong
type under a data suffix, a truncated download, a header from another tool,
or a row that breaks an invariant of multiple-choice scoring.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

GOOD_ROWS = [
    {
        "id": f"q{i}",
        "question": f"Which one is a mammal? ({i})",
        "choices": ["whale", "trout"],
        "label": 0,
    }
    for i in range(4)
]


def jsonl(rows: list) -> str:
    return "\n".join(json.dumps(r) for r in rows) + "\n"


def _row(**fields) -> str:
    """One JSONL row: a good row with ``fields`` replaced (None removes a field)."""
    row = {"question": "Which one is a mammal?", "choices": ["whale", "trout"], "label": 0}
    row.update(fields)
    return jsonl([GOOD_ROWS[0], {k: v for k, v in row.items() if v is not None}])


def _parquet(path: Path, **columns) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(columns), path)


def _good_parquet_bytes(tmp: Path) -> bytes:
    _parquet(tmp, question=["q1", "q2"], choices=[["a", "b"], ["c", "d"]], label=[0, 1])
    return tmp.read_bytes()


@dataclass(frozen=True)
class BadFile:
    """One broken data file: its name, how to write it, and what the error must say."""

    name: str
    write: Callable[[Path], None]
    fragment: str
    row: int | None = None  # the row the message must name, if the problem is in one


def _text(content: str) -> Callable[[Path], None]:
    return lambda p: p.write_text(content)


def _bytes(content: bytes) -> Callable[[Path], None]:
    return lambda p: p.write_bytes(content)


def _truncated_parquet(p: Path) -> None:
    data = _good_parquet_bytes(p)
    p.write_bytes(data[: len(data) // 2])


def _truncated_gzip(p: Path) -> None:
    data = gzip.compress(jsonl(GOOD_ROWS).encode())
    p.write_bytes(data[:-12])


def _parquet_as_jsonl(p: Path) -> None:
    p.write_bytes(_good_parquet_bytes(p.with_suffix(".tmp.parquet")))
    p.with_suffix(".tmp.parquet").unlink()


BAD_FILES: list[BadFile] = [
    # --- files that cannot be read as their suffix says
    BadFile(
        "text.parquet", _text("question,choices,label\nq,a,0\n"), "is not a readable parquet file"
    ),
    BadFile("truncated.parquet", _truncated_parquet, "is not a readable parquet file"),
    BadFile("truncated.jsonl.gz", _truncated_gzip, "is not a complete gzip file"),
    BadFile("plain.jsonl.gz", _text(jsonl(GOOD_ROWS)), "is not a complete gzip file"),
    BadFile("parquet.jsonl", _parquet_as_jsonl, "is not UTF-8 text"),
    BadFile(
        "latin1.csv",
        _bytes("question,A,B,label\ncaf\xe9?,a,b,0\n".encode("latin-1")),
        "is not UTF-8",
    ),
    BadFile("truncated.json", _text(json.dumps(GOOD_ROWS)[:-7]), "is not valid JSON"),
    BadFile("truncated.jsonl", _text(jsonl(GOOD_ROWS)[:-9]), "is not valid JSON", row=4),
    BadFile("scalar.json", _text("42"), "holds a JSON int"),
    BadFile("empty.jsonl", _text("\n\n"), "has no examples"),
    BadFile("header_only.csv", _text("question,choices,label\n"), "has no examples"),
    BadFile(
        "other_tool.csv", _text("prompt,answer\nq,a\n"), "the CSV header has no column 'question'"
    ),
    BadFile(
        "no_question.parquet",
        lambda p: _parquet(p, prompt=["q"], choices=[["a", "b"]], label=[0]),
        "the parquet table has no column 'question'",
    ),
    BadFile("notes.txt", _text("hello"), "unsupported type '.txt'"),
    # --- rows that make scoring meaningless
    BadFile("one_choice.jsonl", _text(_row(choices=["whale"])), "has 1 choice(s)", row=2),
    BadFile("no_choices.jsonl", _text(_row(choices=[])), "has 0 choice(s)", row=2),
    BadFile(
        "duplicate.jsonl", _text(_row(choices=["whale", "trout", " whale"])), "both 'whale'", row=2
    ),
    BadFile("empty_question.jsonl", _text(_row(question="   ")), "has an empty question", row=2),
    BadFile(
        "missing_question.jsonl", _text(_row(question=None)), "missing field 'question'", row=2
    ),
    BadFile("empty_choice.jsonl", _text(_row(choices=["whale", " "])), "empty choice 1 (B)", row=2),
    BadFile("null_choice.jsonl", _text(_row(choices=["whale", None])), "empty choice 1 (B)", row=2),
    BadFile(
        "nested_choice.jsonl",
        _text(_row(choices=["whale", ["trout"]])),
        "a choice of type list",
        row=2,
    ),
    BadFile(
        "nested_question.jsonl",
        _text(_row(question={"text": "q"})),
        "a question of type dict",
        row=2,
    ),
    BadFile("choices_object.jsonl", _text(_row(choices={"text": ["a", "b"]})), "hub layout", row=2),
    BadFile("choices_number.jsonl", _text(_row(choices=7)), "choices of type int", row=2),
    BadFile("missing_label.jsonl", _text(_row(label=None)), "missing field 'label'", row=2),
    BadFile("label_range.jsonl", _text(_row(label=2)), "out of range for its 2 choices", row=2),
    BadFile("label_negative.jsonl", _text(_row(label=-1)), "out of range for its 2 choices", row=2),
    BadFile("label_letter.jsonl", _text(_row(label="C")), "only 2 choices (A-B)", row=2),
    BadFile("label_fraction.jsonl", _text(_row(label=0.5)), "not a whole number", row=2),
    BadFile("label_bool.jsonl", _text(_row(label=True)), "a boolean", row=2),
    BadFile("label_text.jsonl", _text(_row(label="shark")), "not among its choices", row=2),
    BadFile("label_list.jsonl", _text(_row(label=[0])), "label of type list", row=2),
    BadFile(
        "label_digit_text.jsonl",
        _text(_row(choices=["1", "2", "3", "4"], label="2")),
        "has label '2', which means choice 2 ('3') as an index but is the text of choice 1",
        row=2,
    ),
    BadFile(
        "label_digit_text.csv",
        _text('question,choices,label\nq1,"[""a"", ""b""]",0\nq2,"[""1"", ""2"", ""3""]",1\n'),
        "the label is ambiguous, so write 'B' for '2' or 'A' for '1'",
        row=2,
    ),
    BadFile(
        "label_letter_text.jsonl",
        _text(_row(choices=["B", "C", "D"], label="C")),
        "means choice 2 ('D') as a letter but is the text of choice 1",
        row=2,
    ),
    BadFile(
        "label_nan.parquet",
        lambda p: _parquet(
            p, question=["q1", "q2"], choices=[["a", "b"]] * 2, label=[0.0, float("nan")]
        ),
        "has label NaN",
        row=2,
    ),
    BadFile(
        "row_is_list.jsonl", _text(jsonl([GOOD_ROWS[0], ["q", ["a", "b"], 0]])), "is a list", row=2
    ),
    BadFile(
        "letter_gap.csv",
        _text("question,A,B,C,D,label\nq1,a,b,,,0\nq2,a,b,,d,0\n"),
        "has choice D but column C is empty",
        row=2,
    ),
    BadFile(
        "label_float.parquet",
        lambda p: _parquet(p, question=["q1", "q2"], choices=[["a", "b"]] * 2, label=[0.0, 1.5]),
        "not a whole number",
        row=2,
    ),
]
"""Every data-file failure class (the data rows of docs/reliability.md)."""
