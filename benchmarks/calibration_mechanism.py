"""How much of the softening that calibration needs does the posterior supply? From saved cells.

Reads the calibration study's cells (per-sample log-probabilities, S x N x C)
and, for every method and seed, measures on one split:

* ``T_needed``: the temperature that temperature scaling fits to the method's
  own BMA prediction. ``T = 1`` means the prediction is already as soft as the
  held-out labels ask; MLE's ``T`` is the softening an ideal posterior would
  have to supply. The fraction of MLE's log-temperature that a method removes
  is ``1 - log T_method / log T_mle``.
* the decision margin (log-probability gap between the BMA's top two classes)
  and how far the posterior's draws move it: the mean over questions of the
  across-draw std of that gap, relative to the gap itself;
* ``flip``: the share of questions where at least one draw's argmax differs
  from the BMA's;
* the mutual information between the label and the latents.

If the draws moved the margin by a fraction of its size comparable to
``1 - 1/T_mle``, the posterior would be doing temperature scaling's job; the
table shows how far from that each method is. No model is loaded.

    python benchmarks/calibration_mechanism.py --root benchmarks/results/calibration/arc_easy \
        --task arc_easy --out benchmarks/results/calibration/mechanism_arc_easy
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

import numpy as np

from scalabl_pyro.evaluation.metrics import uncertainty_decomposition
from scalabl_pyro.experiments.benchmark import CELL_DIR, _bma_log_probs, load_cell
from scalabl_pyro.inference.temperature import fit_temperature


def margin_stats(slp: np.ndarray) -> dict[str, float]:
    """Decision margin of the BMA and the draws' movement of it, from (S, N, C) log-probs."""
    bma = _bma_log_probs(slp)
    order = np.argsort(-np.where(np.isfinite(bma), bma, -np.inf), axis=1)
    top, second = order[:, 0], order[:, 1]
    rows = np.arange(bma.shape[0])
    gap_bma = bma[rows, top] - bma[rows, second]
    gap_draws = slp[:, rows, top] - slp[:, rows, second]  # (S, N), same two classes
    moved = gap_draws.std(axis=0, ddof=1) if slp.shape[0] > 1 else np.zeros_like(gap_bma)
    flips = (slp.argmax(axis=2) != top[None]).any(axis=0)
    return {
        "margin": float(np.mean(gap_bma)),
        "margin_std_draws": float(np.mean(moved)),
        "margin_moved_frac": float(np.mean(moved) / max(np.mean(gap_bma), 1e-12)),
        "flip": float(np.mean(flips)),
    }


def analyse(root: Path, task: str, split: str) -> list[dict]:
    """One row per finished cell of ``task`` under ``root``."""
    rows = []
    for path in sorted((root / CELL_DIR).glob(f"*__{task}__seed*.json")):
        meta, arrays = load_cell(path)
        key = split if split == "selection" else f"report/{task}"
        slp, labels = arrays[f"{key}/slp"].astype(np.float64), arrays[f"{key}/labels"]
        temp = fit_temperature(_bma_log_probs(slp), labels)
        dec = uncertainty_decomposition(np.exp(slp))
        rows.append(
            {
                "spec": meta["spec"],
                "seed": meta["seed"],
                "samples": int(slp.shape[0]),
                "T_needed": temp,
                "mi": float(np.mean(dec.epistemic)),
                "entropy": float(np.mean(dec.total)),
                **margin_stats(slp),
            }
        )
    return rows


def table(rows: list[dict], reference: str = "mle") -> str:
    """Markdown, mean over seeds per method, with ``reference``'s log-temperature as the scale."""
    by: dict[str, list[dict]] = {}
    for r in rows:
        by.setdefault(r["spec"], []).append(r)
    ref = {r["seed"]: math.log(r["T_needed"]) for r in by.get(reference, [])}
    out = [
        f"| method | seeds | T needed | share of {reference}'s log T removed | margin (nats) "
        "| draw std of margin | std / margin | flip | MI (nats) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for spec, rs in by.items():
        mean = lambda k, rs=rs: float(np.mean([r[k] for r in rs]))  # noqa: E731
        shares = [1 - math.log(r["T_needed"]) / ref[r["seed"]] for r in rs if ref.get(r["seed"])]
        share = f"{np.mean(shares):+.2f}" if shares else "–"
        out.append(
            f"| {spec} | {len(rs)} | {mean('T_needed'):.2f} | {share} | {mean('margin'):.2f} "
            f"| {mean('margin_std_draws'):.3f} | {mean('margin_moved_frac'):.3f} "
            f"| {mean('flip'):.2f} | {mean('mi'):.4f} |"
        )
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", required=True, type=Path)
    p.add_argument("--task", required=True)
    p.add_argument("--split", default="selection", choices=["selection", "report"])
    p.add_argument("--out", required=True, help="output stem: writes <out>.json and <out>.md")
    p.add_argument("--reference", default="mle", help="the spec whose log T is the scale")
    a = p.parse_args(argv)
    rows = analyse(a.root, a.task, a.split)
    if not rows:
        print(f"error: no cells for {a.task!r} under {a.root / CELL_DIR}", file=sys.stderr)
        return 2
    md = f"{a.task}, {a.split} split\n\n" + table(rows, a.reference)
    print(md)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for suffix, text in ((".json", json.dumps(rows, indent=1)), (".md", md)):
        tmp = out.with_name(f".{out.name}{suffix}.tmp")
        tmp.write_text(text)
        os.replace(tmp, out.with_name(out.name + suffix))
    return 0


if __name__ == "__main__":
    sys.exit(main())
