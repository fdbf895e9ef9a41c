"""Figures of the calibration study (docs/calibration.md) from saved benchmark cells.

Reads the cells that ``scalabl benchmark`` wrote (no model is loaded) and draws:

- ``overfit_<task>.png``: training NLL per step against validation NLL (overfitting);
- ``posterior_ratio_<task>.png``: the posterior's std / |mu| per layer over training;
- ``mi_<task>.png``: mutual information on correct vs wrong test answers;
- ``reliability_<task>.png`` and ``risk_coverage_<task>.png`` on the report split.

    python benchmarks/calibration_figures.py --root benchmarks/results/calibration/openbookqa \
        --task openbookqa --methods mle,mle+ts,scalabl --out docs/img
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from scalabl_pyro.cli.benchmark import split_specs
from scalabl_pyro.evaluation.metrics import uncertainty_decomposition
from scalabl_pyro.evaluation.plots import reliability_diagram, risk_coverage_plot, training_curves
from scalabl_pyro.experiments.benchmark import _bma_log_probs, row_arrays


def _cell(root: Path, spec: str, task: str, seed: int):
    return row_arrays(root, spec, task, seed)


def _history(meta: dict) -> dict:
    h = meta["history"]
    steps = [{"step": i + 1, "nll": v} for i, v in enumerate(h["nll"])]
    return {"steps": steps, "validation": h["validation"]}


def posterior_ratio_figure(runs: dict[str, dict]) -> Figure:
    """Median and 10-90 % band over layers of std/|mu|, against the training step."""
    fig = Figure(figsize=(6.0, 3.8), layout="constrained")
    ax = fig.add_subplot()
    for name, meta in runs.items():
        recs = [r for r in meta["history"]["validation"] if "posterior_by_site" in r]
        if not recs:
            continue
        steps = [r["step"] for r in recs]
        ratios = np.array(
            [
                [
                    v["mean_std_s"] / max(v["mean_abs_s"], 1e-12)
                    for v in r["posterior_by_site"].values()
                ]
                for r in recs
            ]
        )
        lo, med, hi = np.percentile(ratios, [10, 50, 90], axis=1)
        (line,) = ax.plot(steps, med, marker="o", label=name)
        ax.fill_between(steps, lo, hi, color=line.get_color(), alpha=0.15)
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("posterior std / |mean| of s (per layer)")
    ax.set_title("std / |mean| of s per layer (median, 10-90 %)")
    ax.legend(fontsize=8)
    return fig


def mi_figure(runs: dict[str, dict[str, np.ndarray]], split: str) -> Figure:
    """Box plots of the mutual information on correct and on wrong answers, per method."""
    fig = Figure(figsize=(1.6 * max(len(runs), 2) + 1.5, 3.8), layout="constrained")
    ax = fig.add_subplot()
    data, labels, pos = [], [], []
    for i, (name, arrays) in enumerate(runs.items()):
        slp = arrays[f"{split}/slp"].astype(np.float64)
        y = arrays[f"{split}/labels"]
        mi = uncertainty_decomposition(np.exp(slp)).epistemic
        right = np.exp(_bma_log_probs(slp)).argmax(1) == y
        data += [mi[right], mi[~right]]
        labels += [f"{name}\ncorrect", f"{name}\nwrong"]
        pos += [3 * i, 3 * i + 1]
    ax.boxplot(data, positions=pos, widths=0.8, showfliers=False)
    ax.set_xticks(pos, labels, fontsize=7)
    ax.set_ylabel("mutual information (nats)")
    ax.set_title("MI on correct vs wrong test answers")
    return fig


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", required=True, help="a benchmark folder (holds cells/)")
    p.add_argument("--task", required=True)
    p.add_argument("--methods", required=True, help="method specs, comma-separated")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="docs/img")
    p.add_argument("--label", action="append", default=[], help="spec=name (split at the last =)")
    p.add_argument("--tag", default="", help="suffix of the figure names (e.g. _mean)")
    args = p.parse_args(argv)
    root, out = Path(args.root), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = dict(item.rsplit("=", 1) for item in args.label)  # specs hold "=" too
    cells = {}
    for spec in split_specs(args.methods):
        got = _cell(root, spec, args.task, args.seed)
        if got is None:
            print(f"no finished cell for {spec}; skipped", file=sys.stderr)
            continue
        cells[names.get(spec, spec)] = got
    split = f"report/{args.task}"
    trained = {n: m for n, (m, _) in cells.items() if not n.endswith("+ts")}
    curves = {n: _history(m) for n, m in trained.items() if m["history"]["validation"]}
    if curves:
        training_curves(
            curves,
            out / f"overfit_{args.task}{args.tag}.png",
            val_metrics=("ece", "acc"),
            smooth=10,
            title=f"{args.task}: training NLL vs validation NLL (seed {args.seed})",
        )
    bayes = {n: m for n, m in trained.items() if m.get("posterior")}
    if bayes:
        posterior_ratio_figure(bayes).savefig(
            out / f"posterior_ratio_{args.task}{args.tag}.png", dpi=110
        )
    sampled = {n: a for n, (m, a) in cells.items() if a[f"{split}/slp"].shape[0] > 1}
    if sampled:
        mi_figure(sampled, split).savefig(out / f"mi_{args.task}{args.tag}.png", dpi=110)
    probs = {
        n: (np.exp(_bma_log_probs(a[f"{split}/slp"].astype(np.float64))), a[f"{split}/labels"])
        for n, (_, a) in cells.items()
    }
    reliability_diagram(
        probs, out / f"reliability_{args.task}{args.tag}.png", title=f"{args.task} test"
    )
    risk_coverage_plot(
        probs, out / f"risk_coverage_{args.task}{args.tag}.png", title=f"{args.task} test"
    )
    print(f"figures written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
