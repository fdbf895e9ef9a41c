"""Is ScalaBL's calibration limited by the width of its posterior? Measured, not assumed.

Trains mean-field ScalaBL once in the calibration study's overfitting regime,
then predicts the selection (validation) split with every posterior draw moved
away from the mean by a factor k: ``s_k = mu + k (s - mu)``, i.e. the posterior
std multiplied by k (k = 1 is the trained posterior). If calibration improved
steadily with k, a wider posterior (a smaller KL weight's opposite, a larger
initial scale, the reverse KL) would be the lever; if it does not, the noise on
``s`` cannot reach the over-confidence, whatever its size. The factor with the
lowest selection NLL is then evaluated on the test split, beside k = 0 and 1.

    python benchmarks/posterior_width.py --task arc_easy \
        --out benchmarks/results/calibration/posterior_width_arc_easy.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from scalabl_pyro import ScalaBL, TrainConfig, load_task
from scalabl_pyro.experiments.benchmark import machine, split_metrics
from scalabl_pyro.inference.predict import draw_latents, posterior_point


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="arc_easy")
    p.add_argument("--train-limit", type=int, default=64)
    p.add_argument("--steps", type=int, default=160)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--select-limit", type=int, default=100)
    p.add_argument("--samples", type=int, default=10)
    p.add_argument("--factors", default="0,1,2,4,8,16")
    p.add_argument("--eval-limit", type=int, default=200, help="test questions (0: none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--normalization", default="sum", choices=["sum", "mean"])
    p.add_argument("--init-scale", type=float, default=0.05)
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    train = load_task(a.task, "train", limit=a.train_limit, seed=0)
    select = load_task(a.task, "validation", limit=a.select_limit, seed=0)
    report = load_task(a.task, "test", limit=a.eval_limit, seed=0) if a.eval_limit else None
    t0 = time.perf_counter()
    sbl = ScalaBL.from_base(seed=a.seed, normalization=a.normalization, init_scale=a.init_scale)
    sbl.fit(train, TrainConfig(steps=a.steps, batch_size=4, lr=a.lr, seed=a.seed, progress=False))
    t_train = time.perf_counter() - t0
    mean = posterior_point(sbl.guide, sbl.model.site_names)
    draws = draw_latents(sbl.model, sbl.guide, a.samples, seed=a.seed)
    flat_mu = np.concatenate([m.flatten().cpu().numpy() for m in mean.values()])
    flat_sd = np.concatenate([v.std(0).flatten().cpu().numpy() for v in draws.values()])
    sd_over_mu = float(np.mean(flat_sd) / np.mean(np.abs(flat_mu)))  # of the fitted posterior

    def widened(k: float, data) -> dict:
        """Metrics on ``data`` with every draw moved k times as far from the mean."""
        if k:
            pred = sbl.predict(data, num_samples=a.samples, seed=a.seed, width=k, progress=False)
        else:  # the posterior mean: one pass
            pred = sbl.predict(data, mode="mean", progress=False)
        row = {"factor": k, **split_metrics(pred.sample_log_probs, pred.labels)}
        row["mean_std_over_abs_mu"] = k * sd_over_mu
        print(json.dumps({x: round(y, 4) for x, y in row.items()}), flush=True)
        return row

    rows = [widened(float(k), select) for k in a.factors.split(",")]
    best = min(rows, key=lambda r: r["nll"])["factor"]  # chosen on the selection split only
    print(f"factor chosen on the selection split (lowest NLL): {best}", flush=True)
    report_rows = []
    if report is not None:
        for k in dict.fromkeys([0.0, 1.0, best]):
            report_rows.append(widened(k, report))
    out = {
        "command": "python " + " ".join(sys.argv),
        "machine": machine(),
        "train_seconds": t_train,
        "settings": vars(a),
        "rows": rows,
        "chosen_factor": best,
        "report_rows": report_rows,
    }
    path = Path(a.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(out, indent=1))
    os.replace(tmp, path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
