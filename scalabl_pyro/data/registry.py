"""Names of the built-in data sets and their splits.

Shared by the hub, embedded and task-level loaders so that every source agrees
on what ``arc_easy`` or ``mmlu_college_chemistry`` means and how a split is
spelled.
"""

from __future__ import annotations

import difflib

from scalabl_pyro.errors import ScalaBLError

KNOWN_TASKS: tuple[str, ...] = (
    "arc_easy",
    "arc_challenge",
    "openbookqa",
    "boolq",
    "winogrande_s",
    "winogrande_m",
    "winogrande_xl",
)
"""The fixed data-set keys; MMLU subjects are added as ``mmlu_<subject>``."""

MMLU_PREFIX = "mmlu_"

MMLU_SUBJECTS: tuple[str, ...] = (
    "abstract_algebra", "anatomy", "astronomy", "business_ethics",
    "clinical_knowledge", "college_biology", "college_chemistry",
    "college_computer_science", "college_mathematics", "college_medicine",
    "college_physics", "computer_security", "conceptual_physics", "econometrics",
    "electrical_engineering", "elementary_mathematics", "formal_logic",
    "global_facts", "high_school_biology", "high_school_chemistry",
    "high_school_computer_science", "high_school_european_history",
    "high_school_geography", "high_school_government_and_politics",
    "high_school_macroeconomics", "high_school_mathematics",
    "high_school_microeconomics", "high_school_physics", "high_school_psychology",
    "high_school_statistics", "high_school_us_history", "high_school_world_history",
    "human_aging", "human_sexuality", "international_law", "jurisprudence",
    "logical_fallacies", "machine_learning", "management", "marketing",
    "medical_genetics", "miscellaneous", "moral_disputes", "moral_scenarios",
    "nutrition", "philosophy", "prehistory", "professional_accounting",
    "professional_law", "professional_medicine", "professional_psychology",
    "public_relations", "security_studies", "sociology", "us_foreign_policy",
    "virology", "world_religions",
)  # fmt: skip
"""The 57 MMLU subjects (the configs of the hub copy and the embedded copy)."""

SPLIT_ORDER: tuple[str, ...] = ("train", "validation", "test", "dev")
_SPLIT_ALIASES = {"val": "validation", "valid": "validation", "eval": "validation"}


def canonical_name(name: str) -> str:
    """Lower-case a data-set name and map ``-`` to ``_`` (``ARC-Easy`` -> ``arc_easy``)."""
    return name.strip().lower().replace("-", "_")


def canonical_split(split: str) -> str:
    """Spell a split the library's way (``val`` -> ``validation``)."""
    s = split.strip().lower()
    return _SPLIT_ALIASES.get(s, s)


def mmlu_subject(name: str) -> str | None:
    """The subject of an ``mmlu_<subject>`` key, or ``None`` for other names."""
    if name.startswith(MMLU_PREFIX) and len(name) > len(MMLU_PREFIX):
        return name[len(MMLU_PREFIX) :]
    return None


def unknown_name_message(name: str) -> str:
    """The one-line error for a name that is neither a data set nor a local file."""
    hint = difflib.get_close_matches(
        canonical_name(name), KNOWN_TASKS + tuple(MMLU_PREFIX + s for s in MMLU_SUBJECTS), n=1
    )
    did_you_mean = f" (did you mean {hint[0]!r}?)" if hint else ""
    return (
        f"unknown data set {name!r}{did_you_mean}; known: {', '.join(KNOWN_TASKS)} "
        f"(or {MMLU_PREFIX}<subject>), or pass a local .jsonl/.json/.csv/.parquet path"
    )


def check_task(name: str) -> str:
    """Return the canonical key of a built-in data set, or raise naming the known ones."""
    key = canonical_name(name)
    if key in KNOWN_TASKS:
        return key
    subject = mmlu_subject(key)
    if subject is not None:
        if subject not in MMLU_SUBJECTS:
            close = difflib.get_close_matches(subject, MMLU_SUBJECTS, n=3)
            hint = f"did you mean {', '.join(MMLU_PREFIX + c for c in close)}? " if close else ""
            raise ScalaBLError(
                f"unknown MMLU subject {subject!r}; {hint}"
                "see scalabl_pyro.data.MMLU_SUBJECTS for the 57 subjects"
            )
        return key
    raise ScalaBLError(unknown_name_message(name))


def order_splits(splits: set[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Splits in the library's usual order: train, validation, test, dev."""
    return tuple(s for s in SPLIT_ORDER if s in splits)


def unknown_split_error(
    name: str, split: str, available: tuple[str, ...], note: str = ""
) -> ScalaBLError:
    """The one-line error for a split a data set does not have."""
    extra = f" ({note})" if note else ""
    return ScalaBLError(
        f"data set {name!r} has no split {split!r}{extra}; available: {', '.join(available)}"
    )
