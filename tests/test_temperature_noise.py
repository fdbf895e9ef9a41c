"""How sure a fitted temperature is: the bootstrap of ``T`` and the bar's temperature-noise table.

Known answers: each replicate is the fit on a resample drawn by hand with the same
generator, the interval narrows with more questions, and the table's test NLL at the
fitted T is the benchmark's own ``+ts`` NLL of the cell.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from scalabl_pyro.errors import ScalaBLError
from scalabl_pyro.experiments.benchmark import split_metrics
from scalabl_pyro.experiments.benchmark.tables import _temperature_scaled
from scalabl_pyro.inference.temperature import (
    bma_log_probs,
    bootstrap_temperature,
    fit_bma_temperature,
)

ROOT = Path(__file__).resolve().parent.parent


def _draws(n: int, seed: int, s: int = 4, scale: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """Overconfident draws (logits scaled by ``scale``) of a model right about 60 % of the time."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    shared = rng.normal(size=(n, 3)) + 1.0 * np.eye(3)[y]  # the draws agree, up to a little noise
    lp = scale * (shared + 0.2 * rng.normal(size=(s, n, 3)))
    return lp - np.log(np.exp(lp).sum(-1, keepdims=True)), y


def test_each_replicate_is_the_fit_on_its_resample_and_deterministic():
    z, y = _draws(40, 0)
    got = bootstrap_temperature(z, y, n_boot=6, seed=3)
    rng = np.random.default_rng(3)
    by_hand = []
    for _ in range(6):
        idx = rng.integers(0, 40, 40)
        by_hand.append(fit_bma_temperature(z[:, idx], y[idx]))
    np.testing.assert_allclose(got.samples, by_hand)
    assert got.temperature == fit_bma_temperature(z, y)
    assert (got.low, got.high) == pytest.approx(tuple(np.quantile(by_hand, [0.025, 0.975])))
    again = bootstrap_temperature(z, y, n_boot=6, seed=3)
    np.testing.assert_array_equal(again.samples, got.samples)
    d = got.to_dict()
    assert d["samples"] == [float(t) for t in got.samples] and d["level"] == 0.95


def test_the_interval_holds_the_fit_and_narrows_with_more_questions():
    small = bootstrap_temperature(*_draws(50, 1), n_boot=60)
    large = bootstrap_temperature(*_draws(2000, 1), n_boot=60)
    for got in (small, large):
        assert got.low <= got.temperature <= got.high
        assert got.temperature > 1.5  # the draws are over-confident: T flattens them
    assert large.high / large.low < (small.high / small.low) ** 0.5


def test_one_draw_is_ordinary_temperature_scaling():
    z, y = _draws(30, 2, s=1)
    got = bootstrap_temperature(z[0], y, n_boot=3)
    assert got.temperature == fit_bma_temperature(z, y)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [({"n_boot": 0}, "n_boot is 0"), ({"level": 1.0}, "level is 1.0"), ({"n_boot": 2.5}, "n_boot")],
)
def test_bad_input_is_one_line(kwargs, words):
    z, y = _draws(10, 0)
    with pytest.raises(ScalaBLError, match=words) as e:
        bootstrap_temperature(z, y, **kwargs)
    assert "\n" not in str(e.value)


def _script():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location(
        "temperature_noise", ROOT / "benchmarks" / "temperature_noise.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_tables_nll_at_the_fitted_t_is_the_benchmarks_ts_nll():
    noise = _script()
    sel, y_sel = _draws(60, 4)
    test, y_test = _draws(80, 5)
    arrays = {
        "selection/slp": sel,
        "selection/labels": y_sel,
        "report/x/slp": test,
        "report/x/labels": y_test,
    }
    got = noise.cell_noise(arrays, "x")
    tempered, t = _temperature_scaled(arrays)
    lp = bma_log_probs(tempered["report/x/slp"])
    assert got["t"] == t
    assert got["nll"] == pytest.approx(-np.mean(lp[np.arange(80), y_test]))
    assert got["t_low"] <= got["t"] <= got["t_high"]
    assert got["nll_oracle"] <= got["nll"] + 1e-12  # the test-fitted T is best on test
    assert got["t_oracle"] == fit_bma_temperature(test, y_test)
    assert got["nll_low"] <= got["nll_high"]
    assert got["ece"] == pytest.approx(split_metrics(tempered["report/x/slp"], y_test)["ece"])


def test_the_committed_table_agrees_with_the_bar():
    import json

    study = ROOT / "benchmarks" / "results" / "calibration"
    noise = json.loads((study / "temperature_noise.json").read_text())
    bar = {r["folder"]: r for r in json.loads((study / "bar.json").read_text())["rows"]}
    assert noise["gaps"], (
        "temperature_noise.json has no data set: run benchmarks/calibration_study.sh T"
    )
    for g in noise["gaps"]:
        judged = bar[g["folder"]]
        # the bar's paired NLL gap is the same mean over seeds and questions
        assert g["gap"] == pytest.approx(judged["nll_gap"], abs=1e-9)
        # and its ECE gap is the difference of the bar's two mean ECEs
        assert g["ece_gap"] == pytest.approx(judged["recipe_ece"] - judged["mle_ts_ece"], abs=1e-9)
        assert g["seeds"] == judged["recipe_seeds"]


def test_without_the_bar_it_says_what_to_run(tmp_path, capsys):
    noise = _script()
    with pytest.raises(SystemExit) as e:
        noise.main(["--study", str(tmp_path)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "bar.json does not exist" in err and err.count("\n") == 1


def test_majority_baseline_counts_the_frequent_answer(tmp_path):
    """Known answer: labels 1,1,1,0 (majority 1, rate 0.75); the model answers 1,0,1,0."""
    import json

    from scalabl_pyro.experiments.benchmark.cells import _save_arrays, cell_path

    sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location(
        "majority_baseline", ROOT / "benchmarks" / "majority_baseline.py"
    )
    mb = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mb)
    method = mb.METHODS[-1]
    lp = np.log(np.array([[[0.2, 0.8], [0.7, 0.3], [0.1, 0.9], [0.6, 0.4]]]))
    y = np.array([1, 1, 1, 0])
    path = cell_path(tmp_path / "boolq", method, "boolq", 0)
    path.parent.mkdir(parents=True)
    arrays = {"selection/slp": lp, "selection/labels": y}
    _save_arrays(
        path.with_suffix(".npz"), arrays | {"report/boolq/slp": lp, "report/boolq/labels": y}
    )
    meta = {"task": "boolq", "seed": 0, "extra_parameters": 1, "train_seconds": 1.0}
    path.write_text(json.dumps(meta | {"predict_seconds": {}, "metrics": {}}))
    table = {
        "settings": {"train_limit": 64},
        "rows": [{"method": method, "task": "boolq", "seed": 0}],
    }
    (tmp_path / "boolq" / "table.json").write_text(json.dumps(table))
    rows = mb.collect(tmp_path, ["boolq"])
    assert [r["split"] for r in rows] == ["validation", "test"]
    for r in rows:
        assert (r["majority_class"], r["majority_rate"]) == (1, 0.75)
        assert (r["says_majority"], r["acc"]) == (0.5, 0.75)
    assert "| BoolQ | 64 | test | 0.750 |" in mb.markdown(rows)
    with pytest.raises(SystemExit) as e:
        mb.main(["--study", str(tmp_path), "--folders", "nothing"])
    assert e.value.code == 2
