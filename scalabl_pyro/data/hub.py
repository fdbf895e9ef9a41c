"""Load a built-in data set from the Hugging Face hub.

The hub path is one reachability probe (:mod:`scalabl_pyro.io.hub_access`, so
an unreachable hub fails in seconds, not after a minute of retries), one
``datasets.load_dataset(hub_id, config, split=...)`` call, then the
per-layout normalizer of :mod:`scalabl_pyro.data.normalize`. Passing
``data_files`` swaps only that call for ``datasets.load_dataset("json",
data_files=...)``, which is how the tests feed hand-made rows in each hub
layout through exactly the same normalization.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scalabl_pyro.data import normalize as nz
from scalabl_pyro.data.examples import MCDataset, MCExample
from scalabl_pyro.data.registry import (
    canonical_split,
    check_task,
    mmlu_subject,
    unknown_split_error,
)
from scalabl_pyro.errors import ScalaBLError

RowNormalizer = Callable[[Mapping[str, Any], int, str], MCExample]


@dataclass(frozen=True)
class HubSpec:
    """Where a data set lives on the hub and how its rows are normalized."""

    hub_id: str
    config: str | None
    normalizer: RowNormalizer
    splits: tuple[str, ...]
    answer_tokens: tuple[str, ...] | None = None
    split_note: str = ""


_ARC_SPLITS = ("train", "validation", "test")
_WINOGRANDE_NOTE = "the hub test split has no answers"


def hub_spec(name: str) -> HubSpec:
    """The hub location of a built-in data set (raises for unknown names)."""
    key = check_task(name)
    subject = mmlu_subject(key)
    if subject is not None:
        return HubSpec("cais/mmlu", subject, nz.mmlu_row, ("validation", "test", "dev"))
    if key == "arc_easy":
        return HubSpec("allenai/ai2_arc", "ARC-Easy", nz.arc_row, _ARC_SPLITS)
    if key == "arc_challenge":
        return HubSpec("allenai/ai2_arc", "ARC-Challenge", nz.arc_row, _ARC_SPLITS)
    if key == "openbookqa":
        return HubSpec("allenai/openbookqa", "main", nz.openbookqa_row, _ARC_SPLITS)
    if key == "boolq":
        return HubSpec(
            "google/boolq", None, nz.boolq_row, ("train", "validation"), nz.BOOLQ_ANSWER_TOKENS
        )
    # winogrande_s / winogrande_m / winogrande_xl are hub configs of the same name
    return HubSpec(
        "allenai/winogrande",
        key,
        nz.winogrande_row,
        ("train", "validation"),
        split_note=_WINOGRANDE_NOTE,
    )


def hub_splits(name: str) -> tuple[str, ...]:
    """Splits with answers that the hub copy of ``name`` offers."""
    return hub_spec(name).splits


def rows_to_dataset(
    name: str,
    split: str,
    rows: Iterable[Mapping[str, Any]],
    normalizer: RowNormalizer,
    *,
    origin: str,
    answer_tokens: tuple[str, ...] | None = None,
) -> MCDataset:
    """Normalize raw rows into an :class:`MCDataset`, naming ``origin`` in errors."""
    examples: list[MCExample] = []
    for i, row in enumerate(rows):
        try:
            examples.append(normalizer(row, i, split))
        except (KeyError, TypeError, IndexError, ValueError) as err:
            if isinstance(err, ScalaBLError):
                raise
            what = (
                f"field {err.args[0]!r}" if isinstance(err, KeyError) else f"a valid field ({err})"
            )
            raise ScalaBLError(
                f"{origin}: row {i + 1} lacks {what} expected in the {name} layout; "
                "the source may have changed format, try another source"
            ) from None
    if not examples:
        raise ScalaBLError(
            f"{origin} has no examples for {name} split {split!r}; pick another split or source"
        )
    return MCDataset(name, split, examples, answer_tokens)


def load_hub(name: str, split: str = "train", *, data_files: str | Path | None = None) -> MCDataset:
    """Load ``name``/``split`` from the hub (or from ``data_files`` in the hub's row layout)."""
    key = check_task(name)
    spec = hub_spec(key)
    split = canonical_split(split)
    if split not in spec.splits:
        raise unknown_split_error(key, split, spec.splits, spec.split_note)

    import datasets

    if data_files is not None:
        origin = f"file {data_files}"
        rows = datasets.load_dataset("json", data_files=str(data_files), split="train")
    else:
        where = spec.hub_id + (f" ({spec.config})" if spec.config else "")
        origin = f"hub data set {where}"
        from scalabl_pyro.io.hub_access import hub_endpoint, hub_status

        status = hub_status()
        if status not in ("online", "offline"):
            raise ScalaBLError(
                f"could not load {where} split {split!r}: the Hugging Face hub ({hub_endpoint()}) "
                f"cannot be reached ({status}); check the network, set HF_HUB_OFFLINE=1 to read "
                "a cached copy, or use source='embedded' (--source embedded)"
            )
        try:  # the single untested line: everything after it is shared with the tests
            rows = datasets.load_dataset(spec.hub_id, spec.config, split=split)
        except Exception as err:  # noqa: BLE001 - any failure here is a reachability problem
            raise ScalaBLError(
                f"could not load {where} split {split!r} from the Hugging Face hub "
                f"({type(err).__name__}); check the connection or use source='embedded'"
            ) from err
    return rows_to_dataset(
        key, split, rows, spec.normalizer, origin=origin, answer_tokens=spec.answer_tokens
    )
