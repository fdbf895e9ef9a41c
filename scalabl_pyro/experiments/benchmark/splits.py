"""The split protocol: which data a cell trains on, selects on and reports on.

Test data stays out of every choice: a data set without a test split has its
validation split cut into two disjoint halves with a fixed seed (selection and
report); the *ood* protocol adds the shifted sets as report splits.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from scalabl_pyro.experiments.benchmark.spec import OOD_SHIFTED, BenchmarkConfig


def _halves(data, first: int | None, second: int | None, seed: int):
    """Two disjoint random subsets of one split (selection, report)."""
    import random

    idx = list(range(len(data)))
    random.Random(seed).shuffle(idx)
    half = len(idx) // 2
    a, b = sorted(idx[:half]), sorted(idx[half:])
    a, b = a[: first or len(a)], b[: second or len(b)]
    pick = lambda ids, tag: dataclasses.replace(  # noqa: E731
        data, split=f"{data.split}[{tag}]", examples=[data.examples[i] for i in ids]
    )
    return pick(a, "selection half"), pick(b, "report half")


def task_splits(task: str, cfg: BenchmarkConfig) -> tuple[Any, Any, dict[str, Any]]:
    """(train, selection, {report name: data}) for one data set under the protocol."""
    from scalabl_pyro.data.tasks import available_splits, load_task

    train = load_task(task, "train", limit=cfg.train_limit, seed=cfg.data_seed)
    splits = available_splits(task, "embedded")
    if "test" in splits:
        select = load_task(task, "validation", limit=cfg.select_limit, seed=cfg.data_seed)
        report = {task: load_task(task, "test", limit=cfg.eval_limit, seed=cfg.data_seed)}
    else:
        val = load_task(task, "validation")
        select, held = _halves(val, cfg.select_limit, cfg.eval_limit, cfg.data_seed)
        report = {task: held}
    if cfg.protocol == "ood":
        for shifted in OOD_SHIFTED:
            split = "test" if "test" in available_splits(shifted, "embedded") else "validation"
            report[shifted] = load_task(shifted, split, limit=cfg.eval_limit, seed=cfg.data_seed)
    return train, select, report
