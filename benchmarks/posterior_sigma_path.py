"""The posterior's mean sigma and mean |mu| over training, from the calibration cells.

Each ScalaBL cell of the calibration study records, at every validation step,
``history.validation[].posterior_by_site`` (per latent site: mean |posterior mean| and
mean posterior std of ``s``). This averages them over the sites, step by step, for the
cells named, and writes a markdown table that ``docs/calibration.md`` renders.

    python benchmarks/posterior_sigma_path.py   # the table of docs/calibration.md, section 3
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from scalabl_pyro.utils.atomic import write_text_atomic

ROOT = Path(__file__).resolve().parent.parent
CELLS = ROOT / "benchmarks" / "results" / "calibration" / "arc_easy" / "cells"
OUT = ROOT / "benchmarks" / "results" / "calibration" / "posterior_sigma_path_arc_easy.md"
#: label -> cell file stem (seed 0 of the calibration study's ARC-Easy cells)
DEFAULT_CELLS = {
    "summed scores": "scalabl_normalization=sum_init_scale=0.05__arc_easy__seed0",
    "mean scores": "scalabl_normalization=mean_init_scale=0.05__arc_easy__seed0",
    "mean scores, KL weight 16": (
        "scalabl_normalization=mean_kl_weight=16_init_scale=0.05__arc_easy__seed0"
    ),
}


def path_of(cell: Path) -> list[tuple[int, float, float]]:
    """(step, mean sigma, mean |mu|) at every validation step of one cell."""
    rows = []
    for v in json.loads(cell.read_text(encoding="utf-8"))["history"]["validation"]:
        sites = list(v["posterior_by_site"].values())
        std = sum(s["mean_std_s"] for s in sites) / len(sites)
        mu = sum(s["mean_abs_s"] for s in sites) / len(sites)
        rows.append((int(v["step"]), std, mu))
    return rows


def table(cells: dict[str, Path]) -> str:
    """One row per (quantity, cell), one column per validation step."""
    paths = {label: path_of(p) for label, p in cells.items()}
    steps = [s for s, _, _ in next(iter(paths.values()))]
    lines = [
        "| quantity | " + " | ".join(f"step {s}" for s in steps) + " |",
        "|---|" + "---|" * len(steps),
    ]
    for what, idx, fmt in (("mean σ", 1, "{:.4f}"), ("mean \\|μ\\|", 2, "{:.3f}")):
        for label, rows in paths.items():
            cells_ = " | ".join(fmt.format(r[idx]) for r in rows)
            lines.append(f"| {what}, {label} | {cells_} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    cells = {label: CELLS / f"{stem}.json" for label, stem in DEFAULT_CELLS.items()}
    write_text_atomic(args.out, table(cells))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
