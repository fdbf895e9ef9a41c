"""The paired AUROC gap of two OOD detectors and the a-priori (near-OOD) score choice.

Known answers, no model: the gap's point value against two ``ood_auroc`` calls, its
bootstrap replicates against resampling done by hand, and the far-OOD bar's paired
columns against the function applied to the cells it reads.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from scalabl_pyro.errors import ScalaBLError
from scalabl_pyro.evaluation import metrics, ood
from scalabl_pyro.evaluation.metrics import ood_auroc, ood_auroc_difference_ci, ood_detection_ci
from scalabl_pyro.experiments.benchmark import (
    NEAR_OOD,
    OOD_SHIFTED,
    BenchmarkConfig,
    build_table,
    cell_path,
    near_ood_choice,
)
from scalabl_pyro.experiments.benchmark.cells import _save_arrays

ROOT = Path(__file__).resolve().parent.parent


def _pair(seed: int = 0, n_in: int = 120, n_out: int = 80, noise: float = 0.3):
    """Detector a, and detector b = a plus noise (they agree on which examples are hard)."""
    rng = np.random.default_rng(seed)
    a_in, a_out = rng.normal(0, 1, n_in), rng.normal(1, 1, n_out)
    b_in = a_in + noise * rng.normal(size=n_in)
    b_out = a_out + noise * rng.normal(size=n_out) - 0.2
    return a_in, a_out, b_in, b_out


def test_it_is_re_exported_from_metrics():
    assert metrics.ood_auroc_difference_ci is ood.ood_auroc_difference_ci
    assert metrics.AUROCDifference is ood.AUROCDifference


def test_the_point_value_is_the_difference_of_the_aurocs():
    a_in, a_out, b_in, b_out = _pair()
    got = ood_auroc_difference_ci(a_in, a_out, b_in, b_out, n_boot=200)
    assert got.difference == pytest.approx(ood_auroc(a_in, a_out) - ood_auroc(b_in, b_out))
    assert got.low <= got.difference <= got.high
    assert (got.n_in, got.n_out, got.n_boot) == (120, 80, 200)
    # rows (seeds) are averaged: two rows of a against one of b
    c_in, c_out = a_in[::-1].copy(), a_out + 0.5
    rows = ood_auroc_difference_ci(
        np.stack([a_in, c_in]), np.stack([a_out, c_out]), b_in, b_out, n_boot=50
    )
    mean_a = (ood_auroc(a_in, a_out) + ood_auroc(c_in, c_out)) / 2
    assert rows.difference == pytest.approx(mean_a - ood_auroc(b_in, b_out))


def test_each_replicate_is_the_gap_on_one_shared_resample():
    a_in, a_out, b_in, b_out = _pair(1, n_in=25, n_out=15)
    got = ood_auroc_difference_ci(a_in, a_out, b_in, b_out, n_boot=40, level=0.9, seed=7)
    rng = np.random.default_rng(7)  # one chunk: in-distribution draws, then OOD draws
    i_in, i_out = rng.integers(0, 25, (40, 25)), rng.integers(0, 15, (40, 15))
    by_hand = np.array(
        [
            ood_auroc(a_in[i], a_out[o]) - ood_auroc(b_in[i], b_out[o])
            for i, o in zip(i_in, i_out, strict=True)
        ]
    )
    assert (got.low, got.high) == pytest.approx(tuple(np.quantile(by_hand, [0.05, 0.95])))
    assert got.p_not_above == pytest.approx(np.mean(by_hand <= 0))


def test_identical_detectors_have_a_zero_gap_and_pairing_narrows_the_interval():
    a_in, a_out, b_in, b_out = _pair(2)
    same = ood_auroc_difference_ci(a_in, a_out, a_in, a_out, n_boot=100)
    assert (same.difference, same.low, same.high, same.p_not_above) == (0.0, 0.0, 0.0, 1.0)
    paired = ood_auroc_difference_ci(a_in, a_out, b_in, b_out, n_boot=1000)
    alone = ood_detection_ci(a_in, a_out, n_boot=1000)
    assert paired.high - paired.low < 0.6 * (alone.auroc_high - alone.auroc_low)
    assert paired.low > 0 and paired.p_not_above < 0.025  # b's shifted scores are lower


@pytest.mark.parametrize(
    ("args", "words"),
    [
        ((np.zeros(5), np.ones(4), np.zeros(6), np.ones(4)), "different examples"),
        ((np.zeros((2, 5)), np.ones(4), np.zeros(5), np.ones(4)), "numbers of rows"),
        ((np.zeros((2, 2, 5)), np.ones(4), np.zeros(5), np.ones(4)), "one row per run"),
        ((np.array([0.0, np.nan]), np.ones(4), np.zeros(2), np.ones(4)), "NaN"),
        ((["a", "b"], np.ones(4), np.zeros(2), np.ones(4)), "numeric array"),
    ],
)
def test_bad_input_is_one_line(args, words):
    with pytest.raises(ScalaBLError, match=words) as e:
        ood_auroc_difference_ci(*args, n_boot=10)
    assert "\n" not in str(e.value)


def _row(method: str, ood_set: str, **aurocs: float) -> dict:
    return {"method": method, "eval": ood_set, "seeds": 3} | {
        f"auroc_{k}": v for k, v in aurocs.items()
    }


def test_the_near_ood_choice_reads_only_the_near_sets():
    assert set(NEAR_OOD) == {"arc_challenge", "arc_easy"}
    summary = [
        _row("r", "arc_challenge", max_prob=0.70, entropy=0.72, mutual_information=0.60),
        _row("r", "arc_easy", max_prob=0.66, entropy=0.62, mutual_information=0.61),
        # the far sets would pick MI: the a-priori choice must not see them
        _row("r", "mmlu_college_physics", max_prob=0.5, mutual_information=0.9),
    ]
    assert near_ood_choice(summary, "r") == "max_prob"  # 0.68 beats entropy's 0.67
    with pytest.raises(ScalaBLError, match="no rows of 'other'"):
        near_ood_choice(summary, "other")
    bare = [{"method": "r", "eval": s, "seeds": 1} for s in NEAR_OOD]
    with pytest.raises(ScalaBLError, match="no OOD score with an AUROC"):
        near_ood_choice(bare, "r")


def _bar():
    spec = importlib.util.spec_from_file_location(
        "calibration_bar", ROOT / "benchmarks" / "calibration_bar.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _log_probs(rng: np.random.Generator, s: int, n: int, sharp: float) -> np.ndarray:
    logits = sharp * rng.normal(size=(s, n, 4))
    return logits - np.log(np.exp(logits).sum(-1, keepdims=True))


def _fake_cell(path: Path, s: int, seed: int, questions: int = 99) -> None:
    """One seed's cell: its own draws, on the questions (labels) that ``questions`` picks."""
    rng, qs = np.random.default_rng(10 * seed + s), np.random.default_rng(questions)
    arrays = {
        "selection/slp": _log_probs(rng, s, 20, 2.0),
        "selection/labels": qs.integers(0, 4, 20),
        "report/openbookqa/slp": _log_probs(rng, s, 30, 2.0),
        "report/openbookqa/labels": qs.integers(0, 4, 30),
    }
    for name in OOD_SHIFTED:  # flatter on the shifted sets, so detection is above chance
        arrays[f"report/{name}/slp"] = _log_probs(rng, s, 25, 1.0)
        arrays[f"report/{name}/labels"] = qs.integers(0, 4, 25)
    path.parent.mkdir(parents=True, exist_ok=True)
    _save_arrays(path.with_suffix(".npz"), arrays)
    meta = {"task": "openbookqa", "seed": seed, "extra_parameters": 1, "train_seconds": 1.0}
    path.write_text(json.dumps(meta | {"predict_seconds": {}, "metrics": {}}))


def _fake_ood_folder(tmp_path: Path, bar, questions_of_seed_1: int = 99) -> dict:
    cfg = BenchmarkConfig(
        methods=[bar.OOD_BASELINE, bar.RECIPE],
        seeds=[0, 1],
        protocol="ood",
        output=str(tmp_path / "ood"),
    )
    for spec in cfg.specs:
        for seed in cfg.seeds:
            path = cell_path(tmp_path / "ood", spec.trained, "openbookqa", seed)
            _fake_cell(path, 3, seed, questions_of_seed_1 if seed == 1 else 99)
    table = build_table(cfg)
    (tmp_path / "ood" / "table.json").write_text(json.dumps(table))
    return table


def test_seeds_on_other_questions_cannot_be_paired(tmp_path, capsys):
    bar = _bar()
    _fake_ood_folder(tmp_path, bar, questions_of_seed_1=7)
    with pytest.raises(ScalaBLError, match="reports other questions than seed 0"):
        bar.ood_bar(tmp_path)
    with pytest.raises(SystemExit) as e:
        bar.main(["--study", str(tmp_path)])
    assert e.value.code == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert not (tmp_path / "bar.md").exists()  # nothing half-written


def test_the_far_ood_bar_shows_the_paired_gaps_of_its_cells(tmp_path):
    bar = _bar()
    table = _fake_ood_folder(tmp_path, bar)
    got = bar.ood_bar(tmp_path)
    assert got["paired_seeds"] == [0, 1]
    assert got["near_score"] == near_ood_choice(table["summary"], bar.RECIPE)
    chem = got["sets"]["mmlu_college_chemistry"]
    assert chem["verdict"] == "pending: 2 of 3 seeds"
    # the gap is the function applied to the cells' scores, seeds as rows
    rec = bar._ood_scores(tmp_path / "ood", bar.RECIPE, "mmlu_college_chemistry",
                          chem["recipe_score"], [0, 1])  # fmt: skip
    base = bar._ood_scores(
        tmp_path / "ood", bar.OOD_BASELINE, "mmlu_college_chemistry", "max_prob", [0, 1]
    )
    assert rec[0].shape == (2, 30) and rec[1].shape == (2, 25)
    want = ood_auroc_difference_ci(*rec, *base, n_boot=bar.OOD_BOOT, seed=0).to_dict()
    assert chem["gap_best"] == want
    assert chem["gap_best"]["difference"] == pytest.approx(
        chem["recipe_auroc"] - chem["baseline_auroc"]
    )
    text = bar.ood_markdown(got)
    assert "a-priori score (best on near OOD)" in text and f"{want['difference']:+.3f} [" in text
