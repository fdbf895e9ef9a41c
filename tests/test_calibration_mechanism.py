"""benchmarks/calibration_mechanism.py: its margin and temperature figures on hand-made cells."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scalabl_testutils import load_benchmark_script


@pytest.fixture(scope="module")
def mech():
    return load_benchmark_script("calibration_mechanism")


def _log_softmax(z: np.ndarray) -> np.ndarray:
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_margin_of_identical_draws_does_not_move(mech):
    z = _log_softmax(np.array([[[2.0, 0.0, -1.0], [0.0, 1.0, 0.5]]]))  # (1, N=2, C=3)
    stats = mech.margin_stats(np.repeat(z, 4, axis=0))
    assert stats["margin"] == pytest.approx(np.mean([2.0, 0.5]))
    assert stats["margin_std_draws"] == 0.0 and stats["flip"] == 0.0


def test_margin_movement_and_flips_by_hand(mech):
    # one question, two classes; draws put the gap at 1 and 3 -> std sqrt(2), no flip
    slp = _log_softmax(np.array([[[1.0, 0.0]], [[3.0, 0.0]]]))
    stats = mech.margin_stats(slp)
    assert stats["margin_std_draws"] == pytest.approx(math.sqrt(2.0), rel=1e-9)
    assert stats["flip"] == 0.0
    flipped = _log_softmax(np.array([[[2.0, 0.0]], [[-0.5, 0.0]]]))
    assert mech.margin_stats(flipped)["flip"] == 1.0


def test_analyse_reads_cells_and_mle_needs_its_temperature(mech, tmp_path):
    rng = np.random.default_rng(0)
    n, c = 400, 4
    labels = rng.integers(0, c, n)
    true_logits = rng.normal(0, 1, (n, c))
    true_logits[np.arange(n), labels] += 1.0
    for spec, temp, s in (("mle", 1 / 3.0, 1), ("scalabl", 1.0, 3)):  # MLE 3x too sharp
        z = _log_softmax(true_logits[None] / temp + 0.01 * rng.normal(size=(s, n, c)))
        base = tmp_path / "cells" / f"{spec}__toy__seed0"
        base.parent.mkdir(exist_ok=True)
        base.with_suffix(".json").write_text(json.dumps({"spec": spec, "seed": 0, "metrics": {}}))
        np.savez(base.with_suffix(".npz"), **{"selection/slp": z, "selection/labels": labels})
    rows = {r["spec"]: r for r in mech.analyse(tmp_path, "toy", "selection")}
    assert rows["mle"]["T_needed"] > 2.0  # the sharpened model asks for softening
    assert rows["scalabl"]["T_needed"] < 1.5
    md = mech.table(list(rows.values()))
    assert "| mle | 1 |" in md and "+0.00" in md
