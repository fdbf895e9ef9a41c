"""How many BMA samples does calibration need? From the saved cells, no model loaded.

Every sampling cell of the calibration study saves its S per-draw class
log-probabilities (S x N x C). The BMA over any k <= S of those draws is what
``predict(num_samples=k)`` would have returned for the same draws, so the
metrics as a function of k come without re-running anything:

* for each k in ``--samples`` (those above a cell's S are skipped), draw
  ``--subsets`` random subsets of k of the cell's draws (without
  replacement; k = S is the one full set), score the BMA of each with the
  benchmark's own ``split_metrics``, and average over subsets;
* then average over the seeds of each method.

k = 1 is a single posterior draw: no averaging at all. The gap between k = 1
and k = S is what the Bayesian model average buys over one sampled network;
where the metrics flatten tells how many forward passes a user needs.

    python benchmarks/bma_samples.py --root benchmarks/results/calibration/arc_easy \
        --task arc_easy --split report --out benchmarks/results/calibration/bma_samples_arc_easy
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import command, write_results  # noqa: E402

from scalabl_pyro.experiments.benchmark import CELL_DIR, load_cell, split_metrics  # noqa: E402

METRICS = ("acc", "ece", "nll", "brier", "mutual_information")


def curve(
    slp: np.ndarray, labels: np.ndarray, ks: list[int], subsets: int, seed: int = 0
) -> dict[int, dict[str, float]]:
    """Metrics of the BMA over k of the S draws in ``slp`` (S, N, C), averaged over subsets."""
    rng = np.random.default_rng(seed)
    s = slp.shape[0]
    out: dict[int, dict[str, float]] = {}
    for k in ks:
        if k > s:
            continue
        if k == s:
            picks = [np.arange(s)]
        else:
            picks = [rng.choice(s, k, replace=False) for _ in range(subsets)]
        scored = [split_metrics(slp[idx], labels) for idx in picks]
        out[k] = {m: float(np.mean([r[m] for r in scored])) for m in METRICS}
    return out


def analyse(root: Path, task: str, split: str, ks: list[int], subsets: int) -> list[dict]:
    """One row per (sampling cell, k) of ``task`` under ``root``; point-mass cells are skipped."""
    key = split if split == "selection" else f"report/{task}"
    rows = []
    for path in sorted((root / CELL_DIR).glob(f"*__{task}__seed*.json")):
        meta, arrays = load_cell(path)
        slp = arrays[f"{key}/slp"].astype(np.float64)
        if slp.shape[0] < 2:
            continue
        for k, metrics in curve(slp, arrays[f"{key}/labels"], ks, subsets, meta["seed"]).items():
            rows.append({"spec": meta["spec"], "seed": meta["seed"], "k": k, **metrics})
    return rows


def table(rows: list[dict]) -> str:
    """Markdown: per method and k, the mean over seeds."""
    by: dict[tuple[str, int], list[dict]] = {}
    for r in rows:
        by.setdefault((r["spec"], r["k"]), []).append(r)
    out = [
        "| method | k draws averaged | seeds | ACC | ECE % | NLL | Brier | MI (nats) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (spec, k), rs in sorted(by.items()):
        m = {name: float(np.mean([r[name] for r in rs])) for name in METRICS}
        out.append(
            f"| {spec} | {k} | {len(rs)} | {m['acc']:.3f} | {100 * m['ece']:.1f} "
            f"| {m['nll']:.3f} | {m['brier']:.3f} | {m['mutual_information']:.4f} |"
        )
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", required=True, type=Path, help="a benchmark output folder")
    p.add_argument("--task", required=True)
    p.add_argument("--split", default="report", choices=["selection", "report"])
    p.add_argument("--samples", default="1,2,4,10", help="comma-separated k values")
    p.add_argument("--subsets", type=int, default=20, help="random subsets per k < S")
    p.add_argument("--out", required=True, help="output stem: writes <out>.json and <out>.md")
    a = p.parse_args(argv)
    try:
        ks = sorted({int(k) for k in a.samples.split(",")})
    except ValueError:
        p.error(f"--samples must be comma-separated integers, got {a.samples!r}")
    if not ks or ks[0] < 1 or a.subsets < 1:
        p.error("--samples values and --subsets must be at least 1")
    rows = analyse(a.root, a.task, a.split, ks, a.subsets)
    if not rows:
        print(f"error: no sampling cells for {a.task!r} under {a.root / CELL_DIR}", file=sys.stderr)
        return 2
    md = f"{a.task}, {a.split} split: BMA over k of each cell's draws\n\n" + table(rows)
    print(md)
    write_results(
        Path(a.out).with_suffix(".json"),
        {
            "command": command(),
            "task": a.task,
            "split": a.split,
            "subsets": a.subsets,
            "rows": rows,
        },
        md,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
