"""benchmarks/bma_samples.py: metrics of the BMA over k saved draws, on hand-made cells."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scalabl_testutils import load_benchmark_script


@pytest.fixture(scope="module")
def bma():
    return load_benchmark_script("bma_samples")


def _write_cell(root: Path, spec: str, seed: int, slp: np.ndarray, labels: np.ndarray) -> None:
    base = root / "cells" / f"{spec}__toy__seed{seed}"
    base.parent.mkdir(parents=True, exist_ok=True)
    base.with_suffix(".json").write_text(json.dumps({"spec": spec, "seed": seed, "metrics": {}}))
    np.savez(base.with_suffix(".npz"), **{"report/toy/slp": slp, "report/toy/labels": labels})


# two draws that disagree: [0.9, 0.1] and [0.1, 0.9]; question 0 is class 0, question 1 class 1
DRAWS = np.log(np.array([[[0.9, 0.1], [0.9, 0.1]], [[0.1, 0.9], [0.1, 0.9]]]))
LABELS = np.array([0, 1])


def test_one_draw_and_the_full_average_by_hand(bma):
    out = bma.curve(DRAWS, LABELS, [1, 2, 5], subsets=7)
    assert set(out) == {1, 2}  # k above the cell's S is skipped
    # whichever draw: one question at p = 0.9, the other at 0.1
    assert out[1]["nll"] == pytest.approx(-(math.log(0.9) + math.log(0.1)) / 2, rel=1e-12)
    assert out[1]["mutual_information"] == pytest.approx(0.0, abs=1e-12)
    # both draws: the average is uniform, and the MI is the entropy the draws disagree by
    assert out[2]["nll"] == pytest.approx(math.log(2), rel=1e-12)
    h = -(0.9 * math.log(0.9) + 0.1 * math.log(0.1))
    assert out[2]["mutual_information"] == pytest.approx(math.log(2) - h, rel=1e-9)


def test_analyse_skips_point_mass_cells_and_averages_seeds_in_the_table(bma, tmp_path):
    _write_cell(tmp_path, "mle", 0, DRAWS[:1], LABELS)  # S = 1: nothing to average
    _write_cell(tmp_path, "scalabl", 0, DRAWS, LABELS)
    _write_cell(tmp_path, "scalabl", 1, DRAWS[::-1].copy(), LABELS)
    rows = bma.analyse(tmp_path, "toy", "report", [1, 2], subsets=3)
    assert {r["spec"] for r in rows} == {"scalabl"}
    assert sorted((r["seed"], r["k"]) for r in rows) == [(0, 1), (0, 2), (1, 1), (1, 2)]
    md = bma.table(rows)
    assert "| scalabl | 2 | 2 | 0.500 |" in md  # k = 2, both seeds: uniform BMA, ties at 0.5


def test_cli_writes_both_files_and_refuses_an_empty_folder(bma, tmp_path, capsys):
    _write_cell(tmp_path, "scalabl", 0, DRAWS, LABELS)
    out = tmp_path / "res" / "bma"
    assert bma.main(["--root", str(tmp_path), "--task", "toy", "--out", str(out)]) == 0
    saved = json.loads(out.with_suffix(".json").read_text())
    assert {r["k"] for r in saved["rows"]} == {1, 2}
    assert out.with_suffix(".md").read_text().startswith("toy, report split")
    assert bma.main(["--root", str(tmp_path), "--task", "other", "--out", str(out)]) == 2
    assert "no sampling cells" in capsys.readouterr().err
