"""Figures of the paper's OOD protocol (docs/calibration.md), from the ``ood`` folder.

Reads the benchmark table and cells that ``scalabl benchmark --protocol ood`` wrote
(trained on OpenBookQA; no model is loaded) and draws:

- ``ood_auroc.png``: the AUROC of each OOD score (max p, entropy, MI) per method and
  shifted set, with the table's 95 % bootstrap interval at one seed, mean ∓ std at several;
- ``ood_mi.png``: the recommended recipe's mutual information on the in-distribution test
  questions against each shifted set (seed 0), the epistemic signal the protocol asks about.

    python benchmarks/ood_figures.py [--root benchmarks/results/calibration/ood] \
        [--out docs/img/calibration]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from scalabl_pyro.evaluation.metrics import ood_scores
from scalabl_pyro.evaluation.plots import ood_auroc_plot, ood_histogram
from scalabl_pyro.experiments.benchmark import OOD_TRAIN, row_arrays

ROOT = Path(__file__).resolve().parent.parent
#: the protocol's methods in the order drawn, with the names a reader sees
METHODS = {
    "mle[normalization=mean]+ts": "MLE + TS",
    "scalabl[normalization=mean,init_scale=0.4]": "ScalaBL",
    "scalabl[normalization=mean,init_scale=0.4]+ts": "recipe",
    "blob[normalization=mean]": "BLoB",
}
RECIPE = "scalabl[normalization=mean,init_scale=0.4]+ts"
SETS = {
    "arc_challenge": "ARC-Challenge (near)",
    "arc_easy": "ARC-Easy (near)",
    "mmlu_college_chemistry": "MMLU chemistry (far)",
    "mmlu_college_physics": "MMLU physics (far)",
}
SCORES = {"max_prob": "max p", "entropy": "entropy", "mutual_information": "MI"}


def auroc_intervals(summary: list[dict]) -> dict[str, dict[str, dict[str, tuple]]]:
    """``{set: {method: {score: (auroc, low, high)}}}`` from the table's summary rows.

    One seed: the row's bootstrap interval; several: mean ∓ std over seeds, clipped
    to [0, 1]. Only the methods of :data:`METHODS` and the shifted sets of
    :data:`SETS` that the summary has, in those orders.
    """
    out: dict[str, dict[str, dict[str, tuple]]] = {}
    for name, shown in SETS.items():
        for spec, label in METHODS.items():
            row = next((r for r in summary if r["method"] == spec and r["eval"] == name), None)
            if row is None:
                continue
            for score, score_label in SCORES.items():
                auc = row.get(f"auroc_{score}")
                if auc is None:
                    continue
                if row.get("seeds", 1) > 1:
                    sd = row.get(f"auroc_{score}_std", 0.0)
                    lo, hi = max(auc - sd, 0.0), min(auc + sd, 1.0)
                else:
                    lo, hi = row[f"auroc_{score}_low"], row[f"auroc_{score}_high"]
                out.setdefault(shown, {}).setdefault(label, {})[score_label] = (auc, lo, hi)
    return out


def recipe_mi(root: Path, in_task: str = OOD_TRAIN, seed: int = 0) -> dict:
    """``{set: (MI in-distribution, MI on the set)}`` of the recipe's seed-``seed`` cell."""
    got = row_arrays(root, RECIPE, in_task, seed)
    if got is None:
        return {}
    arrays = got[1]

    def mi(name: str) -> np.ndarray:
        return ood_scores(np.exp(arrays[f"report/{name}/slp"]))["mutual_information"]

    mi_in = mi(in_task)
    return {
        shown: (mi_in, mi(name)) for name, shown in SETS.items() if f"report/{name}/slp" in arrays
    }


def _seeds(seeds: list[int]) -> str:
    return ("seed " if len(seeds) == 1 else "seeds ") + ", ".join(map(str, seeds))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", type=Path, default=ROOT / "benchmarks/results/calibration/ood")
    p.add_argument("--out", type=Path, default=ROOT / "docs/img/calibration")
    args = p.parse_args(argv)
    table = json.loads((args.root / "table.json").read_text(encoding="utf-8"))
    seeds = sorted({r["seed"] for r in table["rows"]})
    aurocs = auroc_intervals(table["summary"])
    ood_auroc_plot(
        aurocs,
        args.out / "ood_auroc.png",
        title=f"OOD detection, trained on OpenBookQA ({_seeds(seeds)})",
    )
    pairs = recipe_mi(args.root)
    if pairs:
        ood_histogram(
            pairs,
            args.out / "ood_mi.png",
            score_name="mutual information (nats)",
            title="The recipe's MI, OpenBookQA test vs each shifted set (seed 0)",
        )
    print(
        f"wrote {args.out / 'ood_auroc.png'}" + (f" and {args.out / 'ood_mi.png'}" if pairs else "")
    )


if __name__ == "__main__":
    main()
