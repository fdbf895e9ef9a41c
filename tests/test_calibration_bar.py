"""The calibration study's bar and posterior-location tables: known answers, and the
committed files are what the committed cells give."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from scalabl_pyro.errors import ScalaBLError
from scalabl_pyro.experiments.benchmark.spec import FAR_OOD

ROOT = Path(__file__).resolve().parent.parent


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


bar = _script("calibration_bar")
location = _script("posterior_location")


def _row(method: str, seeds: int, acc: float, ece: float, nll: float) -> dict:
    return {"method": method, "task": "t", "eval": "t", "seeds": seeds}, {
        "acc": acc,
        "ece": ece,
        "nll": nll,
    }


def _table(*rows: tuple[str, int, float, float, float]) -> dict:
    summary = []
    for r in rows:
        head, vals = _row(*r)
        summary.append({**head, **vals})
    settings = {"train_limit": 64, "steps": 160, "batch_size": 4}
    return {"settings": settings, "summary": summary}


RECIPE, SUM, MEAN = bar.RECIPE, "mle[normalization=sum]", "mle[normalization=mean]"


def test_recipe_within_every_margin_meets_the_bar():
    t = _table(
        (RECIPE, 3, 0.585, 0.10, 1.21),  # NLL +0.009, ECE +1.9 pt, ACC -0.9 pt: all inside
        (SUM, 3, 0.594, 0.30, 2.0),
        (SUM + "+ts", 3, 0.594, 0.081, 1.201),
        (MEAN, 3, 0.5, 0.2, 1.5),
        (MEAN + "+ts", 3, 0.5, 0.09, 1.25),
    )
    got = bar.judge(t, 3)
    assert got["verdict"] == "meets the bar"
    assert got["nll_ok"] and got["ece_ok"] and got["acc_ok"]
    assert got["epochs"] == 10 and got["train_questions"] == 64


def test_a_gap_of_exactly_one_margin_is_inside_it():
    """ARC-Easy at 256 questions: 375/600 right against 381/600 is exactly -1.0 point, which
    the bar allows, though 0.625 - 0.635 < -0.01 in floating point."""
    acc_recipe = np.mean([126 / 200, 124 / 200, 125 / 200])
    acc_mle = np.mean([122 / 200, 127 / 200, 132 / 200])
    assert acc_recipe - acc_mle < -0.01  # the float trap the bar must not fall into
    t = _table(
        (RECIPE, 3, acc_recipe, 0.10 + 0.02, 1.21),  # ECE exactly +2 pt, NLL exactly +0.01
        (SUM, 3, acc_mle, 0.30, 2.0),
        (SUM + "+ts", 3, acc_mle, 0.10, 1.20),
        (MEAN, 3, 0.5, 0.2, 1.5),
        (MEAN + "+ts", 3, 0.5, 0.09, 1.25),
    )
    got = bar.judge(t, 3)
    assert got["acc_ok"] and got["ece_ok"] and got["nll_ok"]
    assert got["verdict"] == "meets the bar"
    worse = _table(
        (RECIPE, 3, acc_recipe - 0.005, 0.12, 1.21),
        (SUM, 3, acc_mle, 0.30, 2.0),
        (SUM + "+ts", 3, acc_mle, 0.10, 1.20),
        (MEAN, 3, 0.5, 0.2, 1.5),
        (MEAN + "+ts", 3, 0.5, 0.09, 1.25),
    )
    assert bar.judge(worse, 3)["verdict"] == "misses ACC (-1.5 pt)"


def test_the_baseline_is_the_mle_ts_with_the_lower_nll_and_gaps_are_named():
    t = _table(
        (RECIPE, 3, 0.55, 0.14, 1.30),
        (SUM, 3, 0.58, 0.3, 2.0),
        (SUM + "+ts", 3, 0.58, 0.02, 1.35),  # lower ECE, but not the model one would deploy
        (MEAN, 3, 0.50, 0.2, 1.5),
        (MEAN + "+ts", 3, 0.50, 0.11, 1.25),  # the lower NLL: the baseline of NLL and ECE
    )
    got = bar.judge(t, 3)
    assert got["mle_ts_nll_from"] == got["mle_ts_ece_from"] == MEAN + "+ts"
    assert got["mle_acc_from"] == SUM  # accuracy: the more accurate scoring
    assert got["verdict"] == "misses NLL (+0.050), ECE (+3.0 pt), ACC (-3.0 pt)"


def test_a_one_seed_baseline_does_not_stand_against_three_seeds():
    t = _table(
        (RECIPE, 3, 0.36, 0.08, 1.35),
        (SUM, 1, 0.40, 0.6, 6.7),  # the most accurate, but from one seed
        (SUM + "+ts", 1, 0.40, 0.02, 1.20),  # the lowest NLL, but from one seed
        (MEAN, 3, 0.38, 0.3, 1.9),
        (MEAN + "+ts", 3, 0.38, 0.087, 1.33),
    )
    got = bar.judge(t, 3)
    assert got["mle_ts_nll_from"] == MEAN + "+ts" and got["mle_acc_from"] == MEAN


def test_missing_seeds_or_cells_are_pending_not_judged():
    partial = _table(
        (RECIPE, 1, 0.6, 0.05, 1.0), (MEAN, 1, 0.5, 0.2, 1.5), (MEAN + "+ts", 1, 0.5, 0.1, 1.2)
    )
    assert bar.judge(partial, 3)["verdict"] == "pending: 1 of 3 seeds"
    assert bar.judge(partial, 1)["verdict"] == "meets the bar"
    assert bar.judge(_table((MEAN, 3, 0.5, 0.2, 1.5)), 3)["verdict"] == "pending: no cells yet"


def _write_cell(root: Path, spec: str, task: str, seed: int, probs: np.ndarray, y) -> None:
    from scalabl_pyro.experiments.benchmark.cells import _save_arrays, cell_path

    path = cell_path(root, spec, task, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    slp = np.log(probs)[None]  # one draw
    labels = np.asarray(y)
    _save_arrays(
        path.with_suffix(".npz"),
        {
            "selection/slp": slp,
            "selection/labels": labels,
            f"report/{task}/slp": slp,
            f"report/{task}/labels": labels,
        },
    )
    path.write_text(json.dumps({"metrics": {}}))


def test_paired_gaps_are_per_question_differences_averaged_over_seeds(tmp_path):
    y = [0, 1, 0, 1]
    # the recipe: right on Q0-Q2 at both seeds (a temperature keeps every argmax)
    rec = np.array([[0.8, 0.2], [0.2, 0.8], [0.8, 0.2], [0.6, 0.4]])
    # MLE: right on Q0, Q2 and Q3 at seed 0, on Q0 only at seed 1
    mle0 = np.array([[0.9, 0.1], [0.7, 0.3], [0.6, 0.4], [0.1, 0.9]])
    mle1 = np.array([[0.9, 0.1], [0.7, 0.3], [0.4, 0.6], [0.7, 0.3]])
    base = "mle[normalization=sum]"
    for seed, mle in ((0, mle0), (1, mle1)):
        _write_cell(tmp_path, bar.RECIPE.removesuffix("+ts"), "t", seed, rec, y)
        _write_cell(tmp_path, base, "t", seed, mle, y)
    judged = {"mle_ts_nll_from": base, "mle_acc_from": base}  # the untempered MLE here
    got = bar.paired_gaps(tmp_path, "t", judged, [0, 1])
    # per question: recipe right (1, 1, 1, 0); MLE right on average (1, 0, 0.5, 0.5)
    d_acc = np.array([0.0, 1.0, 0.5, -0.5])
    assert got["acc_gap"] == pytest.approx(d_acc.mean())
    assert got["acc_gap_se"] == pytest.approx(d_acc.std(ddof=1) / 2)
    p_mle = np.array([[0.9, 0.3, 0.6, 0.9], [0.9, 0.3, 0.4, 0.3]])  # p(true), seeds x questions
    # the recipe is "+ts": its draws tempered by the T fitted on its selection split
    from scalabl_pyro.inference.temperature import fit_bma_temperature

    temp = fit_bma_temperature(np.log(rec)[None], np.asarray(y))
    logit = np.log(rec) / temp
    p_rec = np.exp(logit - np.logaddexp(logit[:, :1], logit[:, 1:]))[np.arange(4), y]
    d_nll = -np.log(p_rec) + np.log(p_mle).mean(axis=0)
    assert got["nll_gap"] == pytest.approx(d_nll.mean())
    assert got["nll_gap_se"] == pytest.approx(d_nll.std(ddof=1) / 2)
    # a missing seed gives no gaps; other questions at another seed is a one-line error
    assert bar.paired_gaps(tmp_path, "t", judged, [0, 1, 2]) == {}
    _write_cell(tmp_path, base, "t", 1, mle1, [1, 1, 0, 1])
    with pytest.raises(ScalaBLError, match="other questions than seed 0"):
        bar.paired_gaps(tmp_path, "t", judged, [0, 1])


def test_committed_bar_and_location_are_what_the_cells_give(tmp_path):
    bar.main(["--out", str(tmp_path)])
    location.main(["--out", str(tmp_path)])
    for name in ("bar.md", "bar.json", "posterior_location.md", "posterior_location.json"):
        assert (tmp_path / name).read_text(encoding="utf-8") == (bar.STUDY / name).read_text(
            encoding="utf-8"
        ), name


def test_flip_rate_counts_draws_that_leave_the_bma_answer():
    # 4 draws, 3 questions, 2 classes. Q0: all agree; Q1: one of four draws flips; Q2: two do
    # but the BMA stays with class 0 (its average is 0.55).
    p0 = np.array(  # p(class 0), draws x questions
        [
            [0.9, 0.9, 0.9],
            [0.9, 0.3, 0.9],
            [0.9, 0.9, 0.2],
            [0.9, 0.9, 0.2],
        ]
    )
    probs = np.stack([p0, 1 - p0], axis=-1)
    flip, any_flip = location.flips(np.log(probs))
    assert flip == (0 + 1 + 2) / 12 and any_flip == 2 / 3
    agree = np.log(np.tile(np.array([[[0.7, 0.3]]]), (5, 4, 1)))
    assert location.flips(agree) == (0.0, 0.0)


def test_grid_spec_names_the_default_at_scale_one():
    assert location.grid_spec(1.0) == location.DEFAULT
    assert location.grid_spec(2.0) == "scalabl[normalization=mean,init_scale=0.4,prior_scale=2]"
    assert location.grid_spec(0.3).endswith("prior_scale=0.3]")


def _ood_row(method: str, ood_set: str, seeds: int, **aurocs: float) -> dict:
    return {"method": method, "task": "openbookqa", "eval": ood_set, "seeds": seeds} | {
        f"auroc_{k}": v for k, v in aurocs.items()
    }


def test_far_ood_bar_compares_the_recipes_best_score_with_mle_ts_max_p(tmp_path):
    import json

    (tmp_path / "ood").mkdir()
    summary = [
        # chemistry: MI separates better than MLE + TS's confidence
        _ood_row(bar.RECIPE, "mmlu_college_chemistry", 3, max_prob=0.60, mutual_information=0.7),
        _ood_row(bar.OOD_BASELINE, "mmlu_college_chemistry", 3, max_prob=0.65),
        # physics: nothing of the recipe beats it
        _ood_row(bar.RECIPE, "mmlu_college_physics", 3, max_prob=0.55, entropy=0.58),
        _ood_row(bar.OOD_BASELINE, "mmlu_college_physics", 3, max_prob=0.62),
    ]
    (tmp_path / "ood" / "table.json").write_text(json.dumps({"summary": summary}))
    sets = bar.ood_bar(tmp_path)["sets"]
    chem, phys = sets["mmlu_college_chemistry"], sets["mmlu_college_physics"]
    assert chem["recipe_score"] == "mutual_information" and chem["verdict"] == "meets the bar"
    assert phys["recipe_score"] == "entropy" and phys["verdict"] == "misses (AUROC -0.040)"
    text = bar.ood_markdown(bar.ood_bar(tmp_path))
    assert "| mmlu_college_chemistry | 3/3 | mutual_information | 0.700 | 0.650 | – |" in text
    assert chem["near_score"] is None  # no near-OOD rows: nothing chosen a priori


def test_far_ood_bar_is_pending_without_its_rows_or_seeds(tmp_path):
    import json

    assert bar.ood_bar(tmp_path) is None  # no OOD benchmark yet
    (tmp_path / "ood").mkdir()
    one_seed = [_ood_row(bar.RECIPE, s, 1, max_prob=0.7) for s in FAR_OOD] + [
        _ood_row(bar.OOD_BASELINE, s, 1, max_prob=0.6) for s in ("mmlu_college_chemistry",)
    ]
    (tmp_path / "ood" / "table.json").write_text(json.dumps({"summary": one_seed}))
    assert "pending" in bar.ood_bar(tmp_path)  # physics has no MLE + TS row
    one_seed.append(_ood_row(bar.OOD_BASELINE, "mmlu_college_physics", 1, max_prob=0.6))
    (tmp_path / "ood" / "table.json").write_text(json.dumps({"summary": one_seed}))
    verdicts = {v["verdict"] for v in bar.ood_bar(tmp_path)["sets"].values()}
    assert verdicts == {"pending: 1 of 3 seeds"}


def test_prior_scale_is_chosen_on_validation_nll_and_shown_beside_the_default(tmp_path):
    from scalabl_pyro.experiments.benchmark.cells import _save_arrays, cell_path

    y = np.array([0, 1, 1])
    probs = np.log(np.array([[[0.7, 0.3], [0.4, 0.6], [0.2, 0.8]]]))
    # selection NLL per prior scale: 0.5 is the lowest, so it is chosen
    for scale, sel_nll, sigma in ((1.0, 0.9, 0.69), (0.5, 0.8, 0.4), (2.0, 1.1, 1.2)):
        path = cell_path(tmp_path, location.grid_spec(scale), "t", 0)
        path.parent.mkdir(parents=True, exist_ok=True)
        _save_arrays(path.with_suffix(".npz"), {"report/t/slp": probs, "report/t/labels": y})
        meta = {"seed": 0, "metrics": {"selection": {"nll": sel_nll}}}
        path.write_text(json.dumps({**meta, "posterior": {"mean_std_s": sigma}}))
    mle = {"method": "mle[normalization=mean]+ts", "eval": "t", "seed": 0}
    rows = [{**mle, "acc": 0.5, "ece": 0.1, "nll": 0.7}]
    (tmp_path / "table.json").write_text(json.dumps({"rows": rows}))
    ch = location.prior_scale_choice(tmp_path, "t")
    assert ch["chosen"] == 0.5 and list(ch["tried"]) == ["1", "0.5", "2"]  # 0.3 not run
    nll = float(-np.mean(np.log([0.7, 0.6, 0.8])))
    assert ch["chosen_test"]["nll"] == pytest.approx(nll)
    assert ch["mle_ts_test"]["nll"] == 0.7
    text = location.markdown([{"data set": "T", "location": None, "prior_scale": ch}])
    row = text.strip().splitlines()[-1]
    assert row.startswith("| T | 1 (0.900), 0.5 (0.800), 2 (1.100) | 0.5 | 0.400 |")
    assert row.endswith(f"| {nll:.3f} | 0.700 | 10.0 |")  # the default's test NLL, then MLE + TS
