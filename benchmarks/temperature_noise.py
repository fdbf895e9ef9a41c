"""How much of the bar's verdict is the noise of a temperature fitted on 100 questions.

The recommended recipe and MLE LoRA + TS each fit one temperature on the selection split
(100 validation questions). For every data set of the bar and every seed, from the cells
(nothing is trained), this script gives for both models:

- the fitted T and its 95 % percentile-bootstrap interval over the selection questions
  (``scalabl_pyro.inference.temperature.bootstrap_temperature``, 200 resamples);
- the test NLL at the fitted T (the bar's number) and its 95 % range over the bootstrap fits;
- the test NLL at the T fitted on the test questions themselves: an oracle that no user
  has, shown only to separate the model from the estimate of its temperature.

The second table, per data set and averaged over seeds, sets the recipe-minus-baseline
NLL and ECE gaps the bar judges beside the same gaps at the oracle temperatures (which
minimise test NLL, not ECE): where the first misses its margin and the second does not,
the miss is the temperature estimate, not the model.

    python benchmarks/temperature_noise.py

writes ``benchmarks/results/calibration/temperature_noise.{json,md}``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

from scalabl_pyro.experiments.benchmark import row_arrays, split_metrics
from scalabl_pyro.inference.temperature import (
    _bma_nll,
    bootstrap_temperature,
    fit_bma_temperature,
    tempered_draws,
)
from scalabl_pyro.utils.atomic import write_text_atomic

sys.path.insert(0, os.path.dirname(__file__))
from _common import study_paths  # noqa: E402
from calibration_bar import FOLDERS, RECIPE, STUDY  # noqa: E402

N_BOOT = 200


def cell_noise(arrays: dict[str, np.ndarray], task: str, seed: int = 0) -> dict:
    """The fitted T, its bootstrap interval, and the test NLL at it, over it and at the oracle T."""
    sel, y_sel = arrays["selection/slp"].astype(np.float64), arrays["selection/labels"]
    test, y_test = arrays[f"report/{task}/slp"].astype(np.float64), arrays[f"report/{task}/labels"]
    boot = bootstrap_temperature(sel, y_sel, n_boot=N_BOOT, seed=seed)
    over = np.array([_bma_nll(test, y_test, t) for t in boot.samples])
    oracle = fit_bma_temperature(test, y_test)
    at_fit = split_metrics(tempered_draws(test, boot.temperature), y_test)
    at_oracle = split_metrics(tempered_draws(test, oracle), y_test)
    return {
        "t": boot.temperature,
        "t_low": boot.low,
        "t_high": boot.high,
        "nll": _bma_nll(test, y_test, boot.temperature),
        "nll_low": float(np.quantile(over, 0.025)),
        "nll_high": float(np.quantile(over, 0.975)),
        "t_oracle": oracle,
        "nll_oracle": _bma_nll(test, y_test, oracle),
        "ece": at_fit["ece"],
        "ece_oracle": at_oracle["ece"],
    }


def collect(study: Path) -> tuple[list[dict], list[dict]]:
    """Per (data set, seed, model) rows and per-data-set gap rows, from bar.json and the cells."""
    bar = json.loads((study / "bar.json").read_text(encoding="utf-8"))
    rows, gaps = [], []
    for judged in bar["rows"]:
        folder, baseline = judged["folder"], judged.get("mle_ts_nll_from")
        if baseline is None or folder not in FOLDERS:
            continue
        table = json.loads((study / folder / "table.json").read_text(encoding="utf-8"))
        task = next(r["task"] for r in table["rows"] if r["method"] == RECIPE)
        seeds = sorted({r["seed"] for r in table["rows"] if r["method"] == RECIPE})
        per_seed = []
        for seed in seeds:
            got = {
                model: row_arrays(study / folder, spec.removesuffix("+ts"), task, seed)
                for model, spec in (("recipe", RECIPE), ("MLE + TS", baseline))
            }
            if any(g is None for g in got.values()):
                continue
            noise = {model: cell_noise(g[1], task, seed) for model, g in got.items()}
            for model, n in noise.items():
                rows.append(
                    {
                        "data set": judged["data set"],
                        "folder": folder,
                        "train_questions": judged["train_questions"],
                        "seed": seed,
                        "model": model,
                        "spec": RECIPE if model == "recipe" else baseline,
                        **n,
                    }
                )
            rec, base = noise["recipe"], noise["MLE + TS"]
            per_seed.append([rec[k] - base[k] for k in ("nll", "nll_oracle", "ece", "ece_oracle")])
        if per_seed:
            fitted, oracle, ece, ece_oracle = np.mean(per_seed, axis=0)
            gaps.append(
                {
                    "data set": judged["data set"],
                    "folder": folder,
                    "seeds": len(per_seed),
                    "train_questions": judged["train_questions"],
                    "gap": float(fitted),
                    "gap_oracle": float(oracle),
                    "ece_gap": float(ece),
                    "ece_gap_oracle": float(ece_oracle),
                }
            )
    return rows, gaps


def markdown(rows: list[dict], gaps: list[dict]) -> str:
    """Two tables: per cell, then the gaps per data set."""
    head = (
        "| data set | train questions | seed | model | T (selection) | T 95 % interval | "
        "test NLL | test NLL over the interval | T fitted on test | test NLL at it |"
    )
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        lines.append(
            f"| {r['data set']} | {r['train_questions']} | {r['seed']} | {r['model']} | "
            f"{r['t']:.2f} | "
            f"[{r['t_low']:.2f}, {r['t_high']:.2f}] | {r['nll']:.3f} | "
            f"[{r['nll_low']:.3f}, {r['nll_high']:.3f}] | {r['t_oracle']:.2f} | "
            f"{r['nll_oracle']:.3f} |"
        )
    lines += [
        "",
        "| data set | train questions | seeds | NLL gap (bar) | NLL gap at the test-fitted T | "
        "ECE gap (bar), pt | ECE gap at the test-fitted T, pt |",
    ]
    lines.append("|" + "---|" * 7)
    for g in gaps:
        lines.append(
            f"| {g['data set']} | {g['train_questions']} | {g['seeds']} | {g['gap']:+.3f} | "
            f"{g['gap_oracle']:+.3f} | {100 * g['ece_gap']:+.1f} | "
            f"{100 * g['ece_gap_oracle']:+.1f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    study, out = study_paths(__doc__.splitlines()[0], STUDY, argv)
    if not (study / "bar.json").is_file():
        print(
            f"temperature_noise: {study / 'bar.json'} does not exist; run "
            "benchmarks/calibration_bar.py first (it names each data set's MLE + TS)",
            file=sys.stderr,
        )
        raise SystemExit(2)
    rows, gaps = collect(study)
    meta = {"n_boot": N_BOOT, "level": 0.95, "recipe": RECIPE, "split": "selection (fit), test"}
    write_text_atomic(
        out / "temperature_noise.json",
        json.dumps({"settings": meta, "rows": rows, "gaps": gaps}, indent=1) + "\n",
    )
    text = markdown(rows, gaps)
    write_text_atomic(out / "temperature_noise.md", text)
    print(text, end="")


if __name__ == "__main__":
    main()
