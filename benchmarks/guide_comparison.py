"""Guide families side by side on the embedded default (SmolLM2-135M + ARC-Easy).

Fits mean-field, full-rank, low-rank and block-diagonal ScalaBL with the demo's
recipe (choice scoring, q_proj/v_proj, r = 8, 150 steps of 4, lr 1e-3, var_lr 1e-2,
bf16 base weights), evaluates each on 200 validation questions with a 10-sample
BMA, and writes the table (md/csv/json) and figures. Resumable: re-running with
the same ``--output`` skips finished families.

    nice -n 15 python benchmarks/guide_comparison.py --output runs/guide_comparison

``--publish`` then copies ``guide_comparison.{md,csv,json}`` to ``benchmarks/results/``
and the PNGs to ``docs/img/`` (re-run with it after an unpublished run: finished
families are loaded, not refitted).
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys
from pathlib import Path

from scalabl_pyro.comparison import DEFAULT_FAMILIES, CompareConfig, compare_guides


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output", default="runs/guide_comparison")
    p.add_argument("--families", default=",".join(DEFAULT_FAMILIES))
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--eval-limit", type=int, default=200)
    p.add_argument("--samples", type=int, default=10)
    p.add_argument("--khat-samples", type=int, default=48)
    p.add_argument("--khat-subset", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-figures", action="store_true")
    p.add_argument("--publish", action="store_true", help="copy tables and PNGs into the repo")
    a = p.parse_args()
    cfg = CompareConfig(
        families=tuple(a.families.split(",")),
        steps=a.steps,
        eval_limit=a.eval_limit,
        num_samples=a.samples,
        khat_samples=a.khat_samples,
        khat_subset=a.khat_subset,
        seed=a.seed,
        output_dir=a.output,
    )
    command = "python " + " ".join(shlex.quote(x) for x in sys.argv)
    result = compare_guides(cfg, figures=not a.no_figures, command=command)
    print(result.table())
    if a.publish:
        root = Path(__file__).resolve().parents[1]
        for key, src in result.files.items():
            dest = root / ("docs/img" if src.endswith(".png") else "benchmarks/results")
            tmp = dest / f".{Path(src).name}.tmp"
            shutil.copyfile(src, tmp)
            tmp.replace(dest / Path(src).name)
            print(f"published {key}: {dest / Path(src).name}")


if __name__ == "__main__":
    main()
