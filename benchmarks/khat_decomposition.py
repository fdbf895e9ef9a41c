"""Where the spread of the importance weights comes from, per guide-comparison cell.

``log w = [log p(s) - log q(s)] + sum_i log p(y_i | s)``: k-hat of q is large when
log w varies a lot across draws. This splits its standard deviation into the
prior-over-q part and the likelihood part, and shows the posterior's width
against the prior's (sd(s) quantiles over latent dimensions). Reads the saved
cells of ``scalabl compare`` (no model is loaded).

    python benchmarks/khat_decomposition.py --root benchmarks/results/guide_comparison
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _common import command, write_results  # noqa: E402


def decompose(arrays: dict[str, np.ndarray]) -> dict[str, float]:
    """Standard deviations over draws of log w and of its two parts, and sd(s) quantiles."""
    prior_q = arrays["log_prior"] - arrays["log_q"]
    lik = arrays["train_log_lik"].sum(axis=1)
    sd = arrays["draws"].reshape(arrays["draws"].shape[0], -1).std(axis=0)
    return {
        "sd_log_w": float(np.std(prior_q + lik)),
        "sd_log_prior_minus_log_q": float(np.std(prior_q)),
        "sd_log_lik_sum": float(np.std(lik)),
        "corr_parts": float(np.corrcoef(prior_q, lik)[0, 1]),
        "sd_s_q10": float(np.quantile(sd, 0.1)),
        "sd_s_median": float(np.median(sd)),
        "sd_s_q90": float(np.quantile(sd, 0.9)),
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default="benchmarks/results/guide_comparison")
    p.add_argument("--out", default=None, help="default: <root>/khat_decomposition.json")
    a = p.parse_args(argv)
    root = Path(a.root)
    rows = []
    for arr in sorted(root.glob("*/families/*/seed*/arrays.npz")):
        with np.load(arr) as z:
            arrays = {k: z[k] for k in z.files}
        if "log_q" not in arrays:
            continue  # a point mass: no density, no weights
        task, _, family, seed = arr.parts[-5:-1]
        rows.append({"task": task, "family": family, "seed": int(seed[4:]), **decompose(arrays)})
    md = [
        "| data | guide | seed | sd log w | sd [log p(s) - log q(s)] | sd sum log-lik | "
        "sd(s) 10% / 50% / 90% |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        md.append(
            f"| {r['task']} | {r['family']} | {r['seed']} | {r['sd_log_w']:.1f} | "
            f"{r['sd_log_prior_minus_log_q']:.1f} | {r['sd_log_lik_sum']:.1f} | "
            f"{r['sd_s_q10']:.2f} / {r['sd_s_median']:.2f} / {r['sd_s_q90']:.2f} |"
        )
    result = {"rows": rows, "command": command(), "root": str(root)}
    out = a.out or str(root / "khat_decomposition.json")
    write_results(out, result, "\n".join(md) + "\n")
    print("\n".join(md))
    return result


if __name__ == "__main__":
    main()
