"""The README's main job: what ScalaBL is for, on the embedded default.

Real SmolLM2-135M-Instruct and real ARC-Easy (both fetched from PyPI packages),
choice scoring. By default it runs the regime Bayesian LoRA is for: LoRA fine-tuned
on few questions for many epochs (64 training questions, 10 epochs), where plain
MLE LoRA becomes over-confident. Side by side on the test split: the zero-shot base
model, MLE LoRA, MLE LoRA + temperature scaling (one temperature fitted on 100
validation questions: the cheap fix a posterior has to beat) and mean-field ScalaBL
(Bayesian model averaging over posterior samples), and ScalaBL + the same temperature
scaling of its BMA (the recommended recipe, ``ScalaBL.calibrate``), every training
setting at the library's defaults. It prints a table of ACC / ECE / NLL / Brier and writes
``results.json`` and ``reliability.png``. See ``docs/calibration.md`` for the study
across seeds and data sets.

``DemoConfig.short()`` (``scalabl demo --regime short``) is the short budget: 150
steps over the whole training split, validation split, no temperature scaling; there
MLE LoRA has not overfitted yet and the two are close.
"""

from __future__ import annotations

import logging
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from scalabl_pyro.api import ScalaBL
from scalabl_pyro.config import ScalaBLConfig
from scalabl_pyro.data import load_task
from scalabl_pyro.data.examples import MCDataset
from scalabl_pyro.evaluation.plots import reliability_diagram
from scalabl_pyro.inference.predict import Prediction, posterior_spread
from scalabl_pyro.inference.train import TrainConfig
from scalabl_pyro.io.checkpoint import write_json
from scalabl_pyro.io.loading import load_base_model

log = logging.getLogger(__name__)


@dataclass
class DemoConfig:
    """Settings of the demo (default: the overfitting regime, ~12 minutes on a quiet 2-core CPU)."""

    base_model: str = "smollm2-135m"
    dtype: str = "bfloat16"  # frozen base weights; LoRA and guide stay float32
    task: str = "arc_easy"
    train_limit: int | None = 64  # a fixed random subset of the training split (None: all)
    steps: int = 160  # 10 epochs of 64 questions in batches of 4
    batch_size: int = 4
    lr: float | None = None  # None: TrainConfig's default (so is var_lr)
    var_lr: float | None = None
    prior_scale: float = 1.0
    report_split: str = "test"
    eval_limit: int | None = 200
    select_limit: int | None = 100  # validation questions to fit MLE's temperature on
    num_samples: int = 10
    seed: int = 0
    output_dir: str = "demo_output"
    progress: bool = True

    @classmethod
    def quick(cls, **overrides) -> DemoConfig:
        """A ~1-2 minute version of the default regime, for smoke tests and notebooks."""
        base: dict = dict(train_limit=8, steps=6, eval_limit=16, select_limit=16, num_samples=3)
        base.update(overrides)
        return cls(**base)

    @classmethod
    def overfit(cls, quick: bool = False, **overrides) -> DemoConfig:
        """The overfitting regime of ``docs/calibration.md`` (the default; kept by name)."""
        return cls.quick(**overrides) if quick else cls(**overrides)

    @classmethod
    def short(cls, quick: bool = False, **overrides) -> DemoConfig:
        """The short budget: 150 steps on the whole training split, validation split, no TS."""
        base: dict = dict(train_limit=None, steps=150, report_split="validation", select_limit=None)
        if quick:
            base.update(steps=10, eval_limit=24, num_samples=4)
        base.update(overrides)
        return cls(**base)


def _row(name: str, pred: Prediction, seconds: float, sbl: ScalaBL) -> dict:
    return {
        "method": name,
        **pred.metrics(),
        "num_samples": pred.num_samples,
        "seconds": seconds,
        "posterior": posterior_spread(sbl.model, sbl.guide),
    }


def format_table(rows: list[dict]) -> str:
    """A fixed-width table of the demo's metrics (ECE in percent, as the paper reports it)."""
    head = f"{'method':<24}{'ACC':>8}{'ECE %':>8}{'NLL':>8}{'Brier':>8}{'S':>4}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['method']:<24}{r['acc']:>8.3f}{100 * r['ece']:>8.2f}{r['nll']:>8.3f}"
            f"{r['brier']:>8.3f}{r['num_samples']:>4d}"
        )
    return "\n".join(lines)


def _demo_data(cfg: DemoConfig) -> tuple[MCDataset, MCDataset, MCDataset | None]:
    """Training, report and (with ``select_limit``) temperature-selection questions."""
    train = load_task(cfg.task, "train", limit=cfg.train_limit, seed=cfg.seed)
    val = load_task(cfg.task, cfg.report_split, limit=cfg.eval_limit, seed=cfg.seed)
    select = (
        load_task(cfg.task, "validation", limit=cfg.select_limit, seed=cfg.seed)
        if cfg.select_limit
        else None
    )
    epochs = cfg.steps * cfg.batch_size / len(train)
    print(
        f"data: {cfg.task} train {len(train)} examples ({epochs:.1f} epochs), "
        f"{cfg.report_split} {len(val)} examples"
        + (f", temperature fitted on {len(select)} validation examples" if select else "")
    )
    return train, val, select


def _write_results(
    cfg: DemoConfig,
    out: Path,
    rows: list[dict],
    preds: dict[str, Prediction],
    histories: dict[str, dict],
    tcfg: TrainConfig,
    val: MCDataset,
    t_start: float,
) -> dict:
    """Print the table; write ``reliability.png`` and ``results.json``; return the results."""
    table = format_table(rows)
    print("\n" + table)
    reliability_diagram(
        {r["method"]: (preds[r["method"]].probs, preds[r["method"]].labels) for r in rows},
        out / "reliability.png",
        title=f"{cfg.base_model} on {cfg.task} ({cfg.report_split}, n={len(val)})",
    )
    results = {
        "config": asdict(cfg),
        "train_config": tcfg.to_dict(),
        "results": rows,
        "histories": histories,
        "machine": {
            "platform": platform.platform(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        },
        "total_seconds": time.perf_counter() - t_start,
    }
    write_json(out / "results.json", results)
    print(
        f"\nwrote {out / 'results.json'} and {out / 'reliability.png'} "
        f"in {results['total_seconds']:.0f} s"
    )
    return results


def _build(cfg: DemoConfig, family: str) -> ScalaBL:
    """A fresh model on its own copy of the base model (``mle`` is plain LoRA)."""
    base, tok = load_base_model(cfg.base_model, dtype=cfg.dtype)
    config = ScalaBLConfig(
        base_model=cfg.base_model,
        task_format="choice",
        guide=family,
        prior_scale=None if family == "mle" else cfg.prior_scale,
        dtype=cfg.dtype,
        seed=cfg.seed,
    )
    return ScalaBL(config, base, tok)


def _add(rows: list[dict], preds: dict, name: str, pred: Prediction, row: dict) -> None:
    rows.append(row)
    preds[name] = pred
    line = f"{name}: {row['acc']:.3f} acc, {100 * row['ece']:.2f} % ECE"
    print(line + (f", T = {row['temperature']:.2f}" if "temperature" in row else ""))


def run_demo(cfg: DemoConfig) -> dict:
    """Train MLE LoRA and ScalaBL, evaluate them (and their TS), write results; returns them."""
    t_start = time.perf_counter()
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    train, val, select = _demo_data(cfg)
    rates = {k: v for k, v in {"lr": cfg.lr, "var_lr": cfg.var_lr}.items() if v is not None}
    tcfg = TrainConfig(
        steps=cfg.steps, batch_size=cfg.batch_size, seed=cfg.seed, progress=cfg.progress, **rates
    )
    rows: list[dict] = []
    preds: dict[str, Prediction] = {}
    histories: dict[str, dict] = {}
    methods = [  # name, guide, steps, the row of its temperature-scaled BMA (None: none)
        ("zero-shot", "mle", 0, None),
        ("MLE LoRA", "mle", cfg.steps, "MLE LoRA + TS"),
        ("ScalaBL (mean-field)", "mean_field", cfg.steps, "ScalaBL + TS (recipe)"),
    ]
    for name, family, steps, scaled_name in methods:
        t0 = time.perf_counter()
        sbl = _build(cfg, family)
        if steps:
            print(f"\n{name}: {sbl.summary()}")
            histories[name] = sbl.fit(train, tcfg).to_dict()
        samples = cfg.num_samples if family == "mean_field" else 1
        pred = sbl.predict(val, num_samples=samples, progress=cfg.progress)
        _add(rows, preds, name, pred, _row(name, pred, time.perf_counter() - t0, sbl))
        if select is not None and scaled_name is not None:  # one T, fitted on validation
            temp = sbl.calibrate(select, num_samples=samples)
            scaled = pred.tempered(temp)
            row = {**_row(scaled_name, scaled, 0.0, sbl), "temperature": temp}
            _add(rows, preds, scaled_name, scaled, row)
        del sbl
    return _write_results(cfg, out, rows, preds, histories, tcfg, val, t_start)
