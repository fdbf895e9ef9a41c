"""Why the posterior's mutual information does or does not flag OOD questions.

For each Bayesian method of the OOD protocol (``ood`` folder, trained on OpenBookQA) and
each report set, from the saved cells (nothing is trained): the mean over questions of

- the *score range*: max minus min over the choices of the draws' mean centred class
  log-probability, how far apart the model puts the answers;
- the *draw spread*: the std over posterior draws of each centred class log-probability,
  averaged over the choices, how much the draws move the answers' scores;
- their ratio, and the entropy and MI of the predictive.

A posterior whose draws perturb the scores in proportion to their separation (as a
scale on the adapter's update, ``B diag(s) A``, does) gives a spread that follows the range;
MI then follows how separated the answers are, not how new the question is.

    python benchmarks/ood_mechanism.py   # writes mechanism.{json,md} in the ood folder
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from scalabl_pyro.evaluation.metrics import ood_scores
from scalabl_pyro.experiments.benchmark import OOD_SHIFTED, OOD_TRAIN, cell_path, load_cell
from scalabl_pyro.utils.atomic import write_text_atomic

ROOT = Path(__file__).resolve().parent.parent
OOD = ROOT / "benchmarks" / "results" / "calibration" / "ood"
METHODS = {
    "scalabl[normalization=mean,init_scale=0.4]": "ScalaBL",
    "blob[normalization=mean]": "BLoB",
}
IN_TASK = OOD_TRAIN
SETS = (OOD_TRAIN, *OOD_SHIFTED)


def score_geometry(slp: np.ndarray) -> dict[str, float]:
    """Mean score range, draw spread, their ratio, entropy and MI from (S, N, C) log-probs.

    Absent choices (``-inf``, a question with fewer answers) are left out of every mean.
    """
    slp = slp.astype(np.float64)
    present = np.isfinite(slp[0])  # (N, C)
    safe = np.where(present, slp, 0.0)
    centred = slp - (safe.sum(-1, keepdims=True) / present.sum(-1, keepdims=True))
    centred = np.where(present, centred, np.nan)  # (S, N, C)
    mean = centred.mean(axis=0)  # an absent choice is NaN in every draw
    score_range = np.nanmax(mean, -1) - np.nanmin(mean, -1)
    spread = np.nanmean(centred.std(axis=0), -1)
    scores = ood_scores(np.exp(slp))
    return {
        "score_range": float(score_range.mean()),
        "draw_spread": float(spread.mean()),
        "spread_over_range": float((spread / np.maximum(score_range, 1e-12)).mean()),
        "entropy": float(scores["entropy"].mean()),
        "mutual_information": float(scores["mutual_information"].mean()),
        "questions": int(slp.shape[1]),
    }


def collect(root: Path = OOD) -> list[dict]:
    """One row per (method, seed, report set) for every Bayesian cell of the folder."""
    rows = []
    for spec, name in METHODS.items():
        for seed in range(10):
            path = cell_path(root, spec, IN_TASK, seed)
            if not path.is_file():
                continue
            _, arrays = load_cell(path)
            for split in SETS:
                key = f"report/{split}/slp"
                if key in arrays:
                    rows.append(
                        {"method": name, "seed": seed, "set": split, **score_geometry(arrays[key])}
                    )
    return rows


def markdown(rows: list[dict]) -> str:
    """Mean over seeds per (method, set), in the order of :data:`METHODS` and :data:`SETS`."""
    head = (
        "| method | report set | seeds | score range | draw spread | spread / range "
        "| entropy | MI |"
    )
    lines = [head, "|" + "---|" * 8]
    for name in METHODS.values():
        for split in SETS:
            got = [r for r in rows if r["method"] == name and r["set"] == split]
            if not got:
                continue
            m = {
                k: float(np.mean([r[k] for r in got]))
                for k in got[0]
                if k not in ("method", "seed", "set")
            }
            shown = f"{split} (in-distribution)" if split == IN_TASK else split
            cells = [name, shown, str(len(got)), f"{m['score_range']:.2f}"]
            cells += [f"{m['draw_spread']:.3f}", f"{m['spread_over_range']:.3f}"]
            cells += [f"{m['entropy']:.3f}", f"{m['mutual_information']:.4f}"]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", type=Path, default=OOD, help="the ood benchmark folder")
    p.add_argument("--out", type=Path, default=None, help="where to write (default: --root)")
    args = p.parse_args(argv)
    out = args.out or args.root
    rows = collect(args.root)
    write_text_atomic(out / "mechanism.json", json.dumps({"rows": rows}, indent=1) + "\n")
    write_text_atomic(out / "mechanism.md", markdown(rows))
    print(markdown(rows), end="")


if __name__ == "__main__":
    main()
