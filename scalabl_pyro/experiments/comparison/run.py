"""Run a whole comparison: the data splits, every (family, seed) fitted or loaded, the reports."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from scalabl_pyro.data.examples import MCDataset
from scalabl_pyro.experiments.comparison.cells import (
    _json_safe,
    _machine,
    cell_dir,
    load_family_result,
)
from scalabl_pyro.experiments.comparison.config import TABLE_STEM, CompareConfig
from scalabl_pyro.experiments.comparison.fitting import _fit_family
from scalabl_pyro.experiments.comparison.results import ComparisonResult, FamilyResult
from scalabl_pyro.experiments.comparison.tables import _cell, csv_table, markdown_table
from scalabl_pyro.io.checkpoint import write_json
from scalabl_pyro.utils.atomic import write_text_atomic


def compare_guides(
    cfg: CompareConfig,
    *,
    train: MCDataset | None = None,
    report: MCDataset | None = None,
    load_base: Callable[[], tuple[Any, Any]] | None = None,
    figures: bool = True,
    command: str | None = None,
) -> ComparisonResult:
    """Fit (or load) every (family, seed) of ``cfg`` and write the side-by-side report.

    ``train`` / ``report`` default to ``cfg.task`` under the benchmark's split
    protocol (``train_limit`` training questions; ``eval_limit`` report
    questions from the test split, or from the half of validation not used
    for selection). Finished cells are loaded, not refitted, and must have
    been made with the same settings. ``load_base`` returns a fresh ``(model,
    tokenizer)`` per cell (default: ``cfg.base_model`` in ``cfg.dtype``).
    ``command`` is recorded in the outputs.
    """
    out = Path(cfg.output_dir)
    from scalabl_pyro.io.checkpoint import check_writable

    check_writable(out, flag="output_dir")
    if (train is None or report is None) and _is_file(cfg.task):
        train, report = _file_splits(cfg, train, report)
    if train is None or report is None:
        from scalabl_pyro.experiments.benchmark import BenchmarkConfig, task_splits

        bcfg = BenchmarkConfig(
            methods=["scalabl"],
            tasks=(cfg.task,),
            train_limit=cfg.train_limit,
            select_limit=cfg.select_limit,
            eval_limit=cfg.eval_limit,
            data_seed=cfg.data_seed,
        )
        tr, _, rep = task_splits(cfg.task, bcfg)
        train = train if train is not None else tr
        report = report if report is not None else rep[cfg.task]
    out.mkdir(parents=True, exist_ok=True)
    settings = cfg.settings()
    cells: dict[tuple[str, int], FamilyResult] = {}
    for seed in cfg.seeds:
        for family in cfg.families:
            cdir = cell_dir(out, family, seed)
            done = load_family_result(cdir, family, seed, settings)
            if done is not None:
                print(f"{family} seed {seed}: already done, loaded from {cdir}", flush=True)
                cells[(family, seed)] = done
                continue
            cdir.mkdir(parents=True, exist_ok=True)
            print(f"{family} seed {seed}: fitting ({cfg.steps} steps)", flush=True)
            r = _fit_family(family, seed, cfg, train, report, cdir, load_base)
            cells[(family, seed)] = r
            print(
                f"{family} seed {seed}: acc {r.row['acc']:.3f} ece {r.row['ece']:.3f} "
                f"nll {r.row['nll']:.3f} k-hat(q) {_cell(r.row['khat_q'], '{:.2f}')} "
                f"train {r.row['train_seconds']:.0f} s diag {r.row['diag_seconds']:.0f} s",
                flush=True,
            )
    result = ComparisonResult(cfg, cells)
    _write_reports(result, train, report, command)
    if figures:
        from scalabl_pyro.diagnostics.plots import write_comparison_figures

        result.files.update(write_comparison_figures(result, out))
    return result


def _is_file(task: str) -> bool:
    from scalabl_pyro.data.local import is_local_path
    from scalabl_pyro.data.registry import KNOWN_TASKS, canonical_name

    return canonical_name(task) not in KNOWN_TASKS and is_local_path(task)


def _file_splits(
    cfg: CompareConfig, train: MCDataset | None, report: MCDataset | None
) -> tuple[MCDataset, MCDataset]:
    """A local file is one split: disjoint random training and report questions from it."""
    import dataclasses
    import random

    from scalabl_pyro.data import load_task

    data = load_task(cfg.task)
    idx = list(range(len(data)))
    random.Random(cfg.data_seed).shuffle(idx)
    n_train = min(cfg.train_limit or len(idx) // 2, len(idx) - 1)
    rest = idx[n_train:][: cfg.eval_limit or None]

    def pick(ids: list[int], tag: str) -> MCDataset:
        return dataclasses.replace(
            data, split=f"{data.split}[{tag}]", examples=[data.examples[i] for i in sorted(ids)]
        )

    return train or pick(idx[:n_train], "train"), report or pick(rest, "report")


def _write_reports(
    result: ComparisonResult, train: MCDataset, report: MCDataset, command: str | None
) -> None:
    out = Path(result.config.output_dir)
    cfg = result.config
    rows = result.rows
    paired = result.paired()
    seeds = ", ".join(str(s) for s in cfg.seeds)
    md = [
        f"### Guide-family comparison: {cfg.base_model} on {cfg.task}",
        "",
        f"Train {len(train)} questions ({train.name}/{train.split}), {cfg.steps} steps of "
        f"{cfg.batch_size}, lr {cfg.lr}, var_lr {cfg.var_lr or 'objective default'}, "
        f"prior N(0, {cfg.prior_scale}^2), initial sigma {cfg.init_scale or 'family default'}, "
        f"{cfg.normalization} answer scores, LoRA r={cfg.rank}, seeds {seeds}. Held out: "
        f"{len(report)} questions ({report.name}/{report.split}), BMA over {cfg.num_samples} "
        f"draws. k-hat of q and training LOO: {cfg.diag_samples} draws of q, each scored on "
        f"every training question (exact up to {cfg.exact_limit} questions).",
        "",
        markdown_table(rows),
        "",
        "Mean ± std over seeds. ECE: fraction, 15 bins. held-out elpd: sum over the report "
        "questions of log mean_s p(y | x, s) (the BMA's log predictive density, nats; SE over "
        "questions, pooled over seeds). k-hat q: Pareto k of log p(s) + sum_i log p(y_i | s) - "
        "log q(s) over all training questions (< 0.5 good, < 0.7 usable, above: q cannot be "
        "importance-corrected to the posterior). train LOO elpd: PSIS-LOO of the training "
        "questions with ratios w_s / p(y_i | s); the k column counts training questions per "
        "Pareto-k band (<= 0.5, <= 0.7, <= 1, > 1), summed over seeds. mean sd(s): posterior "
        "std of s averaged over latent dimensions. max abs corr: largest off-diagonal "
        "posterior correlation.",
    ]
    if paired:
        md += [
            "",
            f"Held-out elpd minus {cfg.families[0]}'s, paired by question "
            "(mean over seeds; SE of the paired differences, pooled):",
            "",
            "| guide | elpd diff | SE | per seed |",
            "|---|---:|---:|---|",
        ]
        for p in paired:
            per = "; ".join(
                f"seed {x['seed']}: {x['elpd_diff']:.1f} ± {x['dse']:.1f}" for x in p["seeds"]
            )
            md.append(f"| {p['family']} | {p['elpd_diff']:.1f} | {p['dse']:.1f} | {per} |")
    if command:
        md += ["", f"Command: `{command}`"]
    machine = _machine()
    md += ["", f"Machine: {machine['platform']}, {machine['cpus']} CPUs, torch {machine['torch']}"]
    if machine["cuda"]:
        md[-1] += f", {machine['cuda']}"
    write_text_atomic(out / f"{TABLE_STEM}.md", "\n".join(md) + "\n")
    write_text_atomic(out / f"{TABLE_STEM}.csv", csv_table(rows))
    write_json(
        out / f"{TABLE_STEM}.json",
        _json_safe(
            {
                "config": cfg.to_dict(),
                "rows": rows,
                "cells": [c.row for c in result.cells.values()],
                "paired": paired,
                "command": command,
                "machine": machine,
                "num_train": len(train),
                "num_report": len(report),
            }
        ),
    )
    for ext in ("md", "csv", "json"):
        result.files[ext] = str(out / f"{TABLE_STEM}.{ext}")
