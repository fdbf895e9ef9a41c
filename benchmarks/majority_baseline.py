"""Does a model beat always giving the most frequent answer? Per data set, split and seed.

On a two-way task a fine-tuned model near chance can look better or worse than another only
through how often it gives the frequent answer. For each benchmark folder of the study and
each split (validation questions = ``selection``, test = the report split), from the cells
(nothing is trained), this writes:

- the share of questions whose answer is the split's most frequent class (the accuracy of
  always giving it);
- per method and seed: how often the BMA's answer is that class, and its accuracy.

    python benchmarks/majority_baseline.py [--folders boolq winogrande_s winogrande_s_256]

writes ``benchmarks/results/calibration/majority_baseline.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

from scalabl_pyro.experiments.benchmark import _bma_log_probs, row_arrays
from scalabl_pyro.utils.atomic import write_text_atomic

sys.path.insert(0, os.path.dirname(__file__))
from calibration_bar import FOLDERS, MLE, RECIPE, STUDY  # noqa: E402

#: the methods compared: both MLE scorings and the recipe's trained model (TS moves no argmax)
METHODS = (*MLE, RECIPE.removesuffix("+ts"))


def split_rates(slp: np.ndarray, labels: np.ndarray, majority: int) -> dict[str, float]:
    """How often the BMA answers ``majority``, and how often it is right."""
    pred = _bma_log_probs(slp.astype(np.float64)).argmax(axis=1)
    return {
        "says_majority": float(np.mean(pred == majority)),
        "acc": float(np.mean(pred == labels)),
    }


def collect(study: Path, folders: list[str]) -> list[dict]:
    """One row per (folder, split, method, seed), with the split's majority rate."""
    rows = []
    for folder in folders:
        path = study / folder / "table.json"
        if not path.is_file():
            continue
        table = json.loads(path.read_text(encoding="utf-8"))
        train_questions = table["settings"]["train_limit"]
        for spec in METHODS:
            runs = sorted({(r["task"], r["seed"]) for r in table["rows"] if r["method"] == spec})
            for task, seed in runs:
                got = row_arrays(study / folder, spec, task, seed)
                if got is None:
                    continue
                arrays = got[1]
                for split, key in (("validation", "selection"), ("test", f"report/{task}")):
                    y = np.asarray(arrays[f"{key}/labels"])
                    majority = int(np.bincount(y).argmax())
                    rows.append(
                        {
                            "data set": FOLDERS.get(folder, (folder,))[0],
                            "folder": folder,
                            "train_questions": train_questions,
                            "split": split,
                            "method": spec,
                            "seed": seed,
                            "majority_class": majority,
                            "majority_rate": float(np.mean(y == majority)),
                            **split_rates(arrays[f"{key}/slp"], y, majority),
                        }
                    )
    return rows


def markdown(rows: list[dict]) -> str:
    """Per data set, split and method: the seeds' ranges of 'says the majority' and accuracy."""
    head = (
        "| data set | train questions | split | always the majority answer | method | seeds "
        "| says it | ACC |"
    )
    lines = [head, "|" + "---|" * 8]
    keys = dict.fromkeys((r["folder"], r["split"], r["method"]) for r in rows)
    for folder, split, method in keys:
        sel = [r for r in rows if (r["folder"], r["split"], r["method"]) == (folder, split, method)]
        says = [r["says_majority"] for r in sel]
        acc = [r["acc"] for r in sel]

        def span(v: list[float]) -> str:
            return f"{min(v):.3f}" if min(v) == max(v) else f"{min(v):.3f}–{max(v):.3f}"

        lines.append(
            f"| {sel[0]['data set']} | {sel[0]['train_questions']} | {split} | "
            f"{span([r['majority_rate'] for r in sel])} | "
            f"{method} | {len(sel)} | {span(says)} | {span(acc)} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--study", type=Path, default=STUDY)
    p.add_argument("--folders", nargs="+", default=["winogrande_s", "boolq", "winogrande_s_256"])
    args = p.parse_args(argv)
    rows = collect(args.study, args.folders)
    if not rows:
        print(f"majority_baseline: no cells under {args.study} for {args.folders}", file=sys.stderr)
        raise SystemExit(2)
    settings = {"methods": list(METHODS), "folders": args.folders, "split": "validation, test"}
    write_text_atomic(
        args.study / "majority_baseline.json",
        json.dumps({"settings": settings, "rows": rows}, indent=1) + "\n",
    )
    text = markdown(rows)
    write_text_atomic(args.study / "majority_baseline.md", text)
    print(text, end="")


if __name__ == "__main__":
    main()
