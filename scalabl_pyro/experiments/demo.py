"""The README's main job: MLE LoRA vs ScalaBL on the embedded default.

Real SmolLM2-135M-Instruct and real ARC-Easy (both fetched from PyPI
packages), choice-scoring format (a 135M model does not learn the lettered
format). It trains plain maximum-likelihood LoRA and mean-field ScalaBL with
the same LoRA settings, data order and step budget, evaluates the zero-shot
base model and both fine-tuned models on the validation split (ScalaBL with
Bayesian model averaging over posterior samples), prints a table of ACC /
ECE / NLL / Brier, and writes ``results.json`` and ``reliability.png``.

``DemoConfig.overfit()`` (``scalabl demo --regime overfit``) is the second mode:
the regime where LoRA overfits (64 training questions, 10 epochs), reported on
the test split, with MLE LoRA + temperature scaling (fitted on validation
questions) as the baseline a posterior has to beat. See ``docs/calibration.md``.
"""

from __future__ import annotations

import logging
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from scalabl_pyro.api import ScalaBL
from scalabl_pyro.config import ScalaBLConfig
from scalabl_pyro.data import load_task
from scalabl_pyro.data.examples import MCDataset
from scalabl_pyro.evaluation.plots import reliability_diagram
from scalabl_pyro.inference.predict import Prediction, posterior_spread
from scalabl_pyro.inference.temperature import TemperatureScaler
from scalabl_pyro.inference.train import TrainConfig
from scalabl_pyro.io.checkpoint import write_json
from scalabl_pyro.io.loading import load_base_model

log = logging.getLogger(__name__)


@dataclass
class DemoConfig:
    """Settings of the demo (defaults: ~15 minutes on a 2-core CPU)."""

    base_model: str = "smollm2-135m"
    dtype: str = "bfloat16"  # frozen base weights; LoRA and guide stay float32
    task: str = "arc_easy"
    steps: int = 150
    batch_size: int = 4
    lr: float = 1e-3
    var_lr: float = 1e-2
    prior_scale: float = 1.0
    eval_limit: int | None = 200
    train_limit: int | None = None  # a fixed random subset of the training split
    report_split: str = "validation"
    select_limit: int | None = None  # validation questions to fit MLE's temperature on
    num_samples: int = 10
    seed: int = 0
    output_dir: str = "demo_output"
    progress: bool = True

    @classmethod
    def quick(cls, **overrides) -> DemoConfig:
        """A ~1-2 minute version for smoke tests and notebooks."""
        base = dict(steps=10, eval_limit=24, num_samples=4)
        base.update(overrides)
        return cls(**base)

    @classmethod
    def overfit(cls, quick: bool = False, **overrides) -> DemoConfig:
        """The overfitting regime of ``docs/calibration.md``: 64 questions, 10 epochs, test split.

        Temperature scaling of MLE LoRA is fitted on 100 validation questions and
        every method is reported on 200 test questions (~25 minutes on a 2-core CPU).
        """
        base: dict = dict(train_limit=64, steps=160, report_split="test", select_limit=100)
        if quick:
            base.update(train_limit=8, steps=6, eval_limit=16, select_limit=16, num_samples=3)
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


def _temperature_scaled(
    sbl: ScalaBL, select, pred: Prediction, progress: bool
) -> tuple[Prediction, TemperatureScaler]:
    """``pred`` after temperature scaling fitted on ``sbl``'s predictions for ``select``."""
    fit_on = sbl.predict(select, num_samples=1, progress=progress)
    scaler = TemperatureScaler().fit(np.log(fit_on.probs), fit_on.labels)
    with np.errstate(divide="ignore"):  # padded classes have probability 0
        probs = scaler.transform(np.log(pred.probs))
        scaled = Prediction(probs, np.log(probs)[None], pred.labels, pred.class_mask)
    return scaled, scaler


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


def run_demo(cfg: DemoConfig) -> dict:
    """Train MLE LoRA and ScalaBL, evaluate both, write results; returns the results dict."""
    t_start = time.perf_counter()
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    train, val, select = _demo_data(cfg)
    tcfg = TrainConfig(
        steps=cfg.steps,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        var_lr=cfg.var_lr,
        seed=cfg.seed,
        progress=cfg.progress,
    )
    rows: list[dict] = []
    preds: dict[str, Prediction] = {}
    histories: dict[str, dict] = {}
    methods = [
        ("zero-shot", "mle", 0),
        ("MLE LoRA", "mle", cfg.steps),
        ("ScalaBL (mean-field)", "mean_field", cfg.steps),
    ]
    for name, family, steps in methods:
        t0 = time.perf_counter()
        base, tok = load_base_model(cfg.base_model, dtype=cfg.dtype)
        sbl = ScalaBL(
            ScalaBLConfig(
                base_model=cfg.base_model,
                task_format="choice",
                guide=family,
                prior_scale=None if family == "mle" else cfg.prior_scale,
                dtype=cfg.dtype,
                seed=cfg.seed,
            ),
            base,
            tok,
        )
        if steps:
            print(f"\n{name}: {sbl.summary()}")
            hist = sbl.fit(train, tcfg)
            histories[name] = hist.to_dict()
        pred = sbl.predict(
            val, num_samples=cfg.num_samples if family == "mean_field" else 1, progress=cfg.progress
        )
        preds[name] = pred
        rows.append(_row(name, pred, time.perf_counter() - t0, sbl))
        print(
            f"{name}: {rows[-1]['acc']:.3f} acc, {100 * rows[-1]['ece']:.2f} % ECE "
            f"({rows[-1]['seconds']:.0f} s)"
        )
        if select is not None and name == "MLE LoRA":
            scaled, scaler = _temperature_scaled(sbl, select, pred, cfg.progress)
            preds["MLE LoRA + TS"] = scaled
            rows.append(
                {**_row("MLE LoRA + TS", scaled, 0.0, sbl), "temperature": scaler.temperature}
            )
            print(f"MLE LoRA + TS: T = {scaler.temperature:.2f}, {100 * rows[-1]['ece']:.2f} % ECE")
        del sbl, base
    return _write_results(cfg, out, rows, preds, histories, tcfg, val, t_start)
