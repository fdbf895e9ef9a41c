"""Where ScalaBL's posterior sits on each data set, and whether the prior scale moves it.

Read from the calibration study's cells (nothing is trained here). For default ScalaBL
on every data set folder of ``benchmarks/results/calibration/``, mean over its seeds:

- mean posterior σ of ``s`` against the prior's scale σ_p (σ/σ_p near 1: the data
  barely moved q off the prior in width), mean |μ| and the ratio σ/|μ|;
- the test split's mean mutual information, and how often one posterior draw's answer
  differs from the BMA's answer (per question and draw: the flip rate; and the share of
  questions on which at least one of the S draws flips).

Then the prior-scale grid (cells ``scalabl[...,prior_scale=x]`` made by phase G of
``benchmarks/calibration_study.sh``): per data set, the scale with the lowest selection
(validation) NLL is chosen, and its test NLL / ECE / ACC, without temperature scaling,
are set beside MLE LoRA + TS's.

    python benchmarks/posterior_location.py   # writes posterior_location.{json,md} beside the cells
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

from scalabl_pyro.experiments.benchmark.cells import cell_path, load_cell, split_metrics
from scalabl_pyro.utils.atomic import write_text_atomic

sys.path.insert(0, os.path.dirname(__file__))
from _common import study_paths  # noqa: E402
from calibration_bar import FOLDERS as BAR_FOLDERS  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
STUDY = ROOT / "benchmarks" / "results" / "calibration"
DEFAULT = "scalabl[normalization=mean,init_scale=0.4]"
#: the prior scales of phase G (1.0, the default, is DEFAULT itself)
GRID = (0.3, 0.5, 2.0)
MLE_TS = ("mle[normalization=sum]+ts", "mle[normalization=mean]+ts")
#: folder -> (data set, task), from the bar's folders (``<task>_256``: the 256-question regime)
FOLDERS = {f: (name, f.removesuffix("_256")) for f, (name, _seeds) in BAR_FOLDERS.items()}


def grid_spec(scale: float) -> str:
    """The spec of one prior-scale cell (the default spec at ``scale == 1``)."""
    return DEFAULT if scale == 1.0 else f"{DEFAULT[:-1]},prior_scale={scale:g}]"


def flips(slp: np.ndarray) -> tuple[float, float]:
    """(share of (draw, question) pairs whose answer differs from the BMA's, share of
    questions where some draw's does), from (S, N, C) log-probabilities."""
    probs = np.exp(slp.astype(np.float64))
    bma = probs.mean(axis=0).argmax(axis=1)
    differ = probs.argmax(axis=2) != bma[None, :]
    return float(differ.mean()), float(differ.any(axis=0).mean())


def _cells(folder: Path, spec: str, task: str) -> list[tuple[dict, dict]]:
    out = []
    for seed in range(10):
        path = cell_path(folder, spec, task, seed)
        if path.is_file():
            out.append(load_cell(path))
    return out


def location(folder: Path, task: str) -> dict | None:
    """Default ScalaBL's posterior on one data set, mean over its seeds (None: no cells)."""
    cells = _cells(folder, DEFAULT, task)
    if not cells:
        return None
    per = []
    for meta, arrays in cells:
        post = meta["posterior"]
        slp = arrays[f"report/{task}/slp"]
        flip, any_flip = flips(slp)
        per.append(
            {
                "sigma": post["mean_std_s"],
                "sigma_over_prior": post["mean_std_s"] / meta["model_config"]["prior_scale"],
                "abs_mu": post["mean_abs_s"],
                "sigma_over_mu": post["mean_std_s"] / post["mean_abs_s"],
                "mutual_information": meta["metrics"][f"report/{task}"]["mutual_information"],
                "flip_rate": flip,
                "questions_with_a_flip": any_flip,
            }
        )
    row = {k: float(np.mean([p[k] for p in per])) for k in per[0]}
    row["seeds"] = len(per)
    return row


def prior_scale_choice(folder: Path, task: str) -> dict | None:
    """The grid's scale chosen on validation NLL (seed 0), with its test metrics."""
    tried = {}
    for scale in (1.0, *GRID):
        cells = [(m, a) for m, a in _cells(folder, grid_spec(scale), task) if m["seed"] == 0]
        if cells:
            meta, arrays = cells[0]
            test = split_metrics(arrays[f"report/{task}/slp"], arrays[f"report/{task}/labels"])
            tried[scale] = {
                "selection_nll": meta["metrics"]["selection"]["nll"],
                "test": {k: test[k] for k in ("acc", "ece", "nll")},
                "sigma": meta["posterior"]["mean_std_s"],
            }
    if len(tried) < 2:
        return None
    chosen = min(tried, key=lambda s: tried[s]["selection_nll"])
    table = json.loads((folder / "table.json").read_text(encoding="utf-8"))
    mle = [r for r in table["rows"] if r["method"] in MLE_TS and r["seed"] == 0]
    mle = [r for r in mle if r["eval"] == task]
    best = min(mle, key=lambda r: r["nll"]) if mle else None
    return {
        "tried": {f"{s:g}": v for s, v in tried.items()},
        "chosen": chosen,
        "chosen_test": tried[chosen]["test"],
        "mle_ts_test": {k: best[k] for k in ("acc", "ece", "nll")} if best else None,
        "mle_ts_from": best["method"] if best else None,
    }


def markdown(rows: list[dict]) -> str:
    """Two tables: where the posterior sits, and the prior-scale choice."""
    head = (
        "| data set | train questions | seeds | σ | σ / σ_p | mean \\|μ\\| | σ / \\|μ\\| | MI "
        "| flip rate | questions with a flip |"
    )
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        loc = r["location"]
        if loc is None:
            continue
        lines.append(
            f"| {r['data set']} | {r['train_questions']} | {loc['seeds']} | "
            f"{loc['sigma']:.3f} | "
            f"{loc['sigma_over_prior']:.2f} | {loc['abs_mu']:.3f} | {loc['sigma_over_mu']:.2f} | "
            f"{loc['mutual_information']:.4f} | {loc['flip_rate'] * 100:.1f} % | "
            f"{loc['questions_with_a_flip'] * 100:.1f} % |"
        )
    if not any(r["prior_scale"] for r in rows):
        return "\n".join(lines) + "\n"
    lines += [
        "",
        "| data set | σ_p tried (validation NLL) | chosen | learned σ | test NLL | test ECE % "
        "| test ACC | σ_p = 1 test NLL | MLE+TS test NLL | MLE+TS test ECE % |",
        "|" + "---|" * 10,
    ]
    for r in rows:
        ch = r["prior_scale"]
        if ch is None:
            continue
        t, m = ch["chosen_test"], ch["mle_ts_test"] or {}
        tried = ", ".join(f"{s} ({v['selection_nll']:.3f})" for s, v in ch["tried"].items())
        default = ch["tried"].get("1")
        sigma = ch["tried"][f"{ch['chosen']:g}"]["sigma"]
        lines.append(
            f"| {r['data set']} | {tried} | {ch['chosen']:g} | {sigma:.3f} | {t['nll']:.3f} | "
            f"{t['ece'] * 100:.1f} | {t['acc']:.3f} | "
            + (f"{default['test']['nll']:.3f} | " if default else "– | ")
            + (f"{m['nll']:.3f} | {m['ece'] * 100:.1f} |" if m else "– | – |")
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    study, out = study_paths(__doc__.splitlines()[0], STUDY, argv)
    rows = []
    for folder, (name, task) in FOLDERS.items():
        root = study / folder
        if not (root / "table.json").is_file():
            continue
        table = json.loads((root / "table.json").read_text(encoding="utf-8"))
        rows.append(
            {
                "data set": name,
                "folder": folder,
                "train_questions": table["settings"]["train_limit"],
                "location": location(root, task),
                "prior_scale": prior_scale_choice(root, task),
            }
        )
    doc = {"default": DEFAULT, "grid": [1.0, *GRID], "rows": rows}
    write_text_atomic(out / "posterior_location.json", json.dumps(doc, indent=1) + "\n")
    write_text_atomic(out / "posterior_location.md", markdown(rows))
    print(markdown(rows), end="")


if __name__ == "__main__":
    main()
