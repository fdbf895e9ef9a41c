"""The README's main job: MLE LoRA vs ScalaBL on the embedded default.

Real SmolLM2-135M-Instruct and real ARC-Easy (both fetched from PyPI
packages), choice-scoring format (a 135M model does not learn the lettered
format). It trains plain maximum-likelihood LoRA and mean-field ScalaBL with
the same LoRA settings, data order and step budget, evaluates the zero-shot
base model and both fine-tuned models on the validation split (ScalaBL with
Bayesian model averaging over posterior samples), prints a table of ACC /
ECE / NLL / Brier, and writes ``results.json`` and ``reliability.png``.
"""

from __future__ import annotations

import logging
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from scalabl_pyro.api import ScalaBL
from scalabl_pyro.checkpoint import write_json
from scalabl_pyro.config import ScalaBLConfig
from scalabl_pyro.data import load_task
from scalabl_pyro.loading import load_base_model
from scalabl_pyro.plots import reliability_diagram
from scalabl_pyro.predict import Prediction, posterior_spread
from scalabl_pyro.train import TrainConfig

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


def run_demo(cfg: DemoConfig) -> dict:
    """Train MLE LoRA and ScalaBL, evaluate both, write results; returns the results dict."""
    t_start = time.perf_counter()
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    train = load_task(cfg.task, "train")
    val = load_task(cfg.task, "validation", limit=cfg.eval_limit, seed=cfg.seed)
    print(f"data: {cfg.task} train {len(train)} examples, validation {len(val)} examples")
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
        del sbl, base
    table = format_table(rows)
    print("\n" + table)
    reliability_diagram(
        {r["method"]: (preds[r["method"]].probs, preds[r["method"]].labels) for r in rows},
        out / "reliability.png",
        title=f"{cfg.base_model} on {cfg.task} (validation, n={len(val)})",
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
