"""Temperature scaling: recovery of a known temperature, optimality, padding, validation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from scalabl_pyro.errors import ScalaBLError
from scalabl_pyro.evaluation.metrics import accuracy, negative_log_likelihood
from scalabl_pyro.inference.temperature import (
    T_MAX,
    T_MIN,
    TemperatureScaler,
    apply_temperature,
    fit_temperature,
)


def _log_softmax(z: np.ndarray) -> np.ndarray:
    """Over the last axis; ``-inf`` entries stay ``-inf``."""
    top = np.max(z, axis=-1, keepdims=True)
    e = np.exp(z - top)  # exp(-inf) = 0 for padded classes
    return z - top - np.log(e.sum(axis=-1, keepdims=True))


def _synthetic(
    seed: int, t_true: float, n: int = 20_000, c: int = 4, scale: float = 3.0
) -> tuple[np.ndarray, np.ndarray]:
    """Logits ``z`` and labels drawn from ``softmax(z / t_true)``."""
    rng = np.random.default_rng(seed)
    z = rng.normal(scale=scale, size=(n, c))
    p = np.exp(_log_softmax(z / t_true))
    labels = (rng.random(n)[:, None] > np.cumsum(p, axis=1)).sum(axis=1)
    return z, np.minimum(labels, c - 1)


def _nll_at(z: np.ndarray, labels: np.ndarray, t: float) -> float:
    return negative_log_likelihood(apply_temperature(z, t), labels)


def _standard_error_of_t(z: np.ndarray, t_hat: float) -> float:
    """Asymptotic standard error of the MLE of T from the observed Fisher information.

    With beta = 1/T, the per-example information is Var_{p_beta}[z]; the
    delta method gives se(T) = se(beta) * T^2.
    """
    p = apply_temperature(z, t_hat)
    mean = np.sum(p * z, axis=1, keepdims=True)
    info = np.sum(p * (z - mean) ** 2, axis=1).sum()
    return t_hat**2 / math.sqrt(info)


@pytest.mark.parametrize(("seed", "t_true"), [(0, 0.5), (1, 1.0), (2, 2.0), (3, 3.0)])
def test_recovers_known_temperature(seed: int, t_true: float) -> None:
    z, labels = _synthetic(seed, t_true)
    t_hat = fit_temperature(_log_softmax(z), labels)
    se = _standard_error_of_t(z, t_hat)
    # The fit is a maximum-likelihood estimate, so |T_hat - T| / se is about N(0, 1):
    # 4 se is a 6e-5 two-sided tail. With 20,000 examples se is ~1 % of T, so
    # the check still pins T to a few percent.
    assert se < 0.015 * t_true
    assert abs(t_hat - t_true) < 4 * se


def test_fit_is_the_grid_minimum_and_beats_t_one() -> None:
    z, labels = _synthetic(4, 2.5, n=3000)
    lp = _log_softmax(z)
    t_hat = fit_temperature(lp, labels)
    grid = np.exp(np.linspace(np.log(0.5), np.log(10), 400))
    best_grid = min(_nll_at(lp, labels, t) for t in grid)
    assert _nll_at(lp, labels, t_hat) <= best_grid + 1e-12
    assert _nll_at(lp, labels, t_hat) < _nll_at(lp, labels, 1.0)
    # First-order optimality on each side.
    for t in (t_hat * (1 - 1e-4), t_hat * (1 + 1e-4)):
        assert _nll_at(lp, labels, t) >= _nll_at(lp, labels, t_hat)


@pytest.mark.parametrize("seed", range(6))
def test_never_increases_fitting_nll(seed: int) -> None:
    # Small, already calibrated sets: the fitted T may move, but never above the T = 1 NLL.
    z, labels = _synthetic(seed, 1.0, n=30, c=3)
    t_hat = fit_temperature(z, labels)
    assert _nll_at(z, labels, t_hat) <= _nll_at(z, labels, 1.0) + 1e-15


def test_logits_and_log_probs_give_the_same_temperature() -> None:
    z, labels = _synthetic(5, 1.7, n=2000)
    shifted = z + np.random.default_rng(0).normal(size=(2000, 1)) * 10
    assert fit_temperature(z, labels) == pytest.approx(fit_temperature(_log_softmax(z), labels))
    assert fit_temperature(shifted, labels) == pytest.approx(fit_temperature(z, labels))


def test_padded_classes() -> None:
    z, labels = _synthetic(6, 2.0, n=4000, c=4)
    # Half the examples have only two choices: classes 2 and 3 padded with -inf.
    z_pad = z.copy()
    two = np.arange(4000) % 2 == 0
    z_pad[two, 2:] = -np.inf
    labels = np.where(two, labels % 2, labels)
    lp = _log_softmax(z_pad)
    t_hat = fit_temperature(lp, labels)
    probs = apply_temperature(lp, t_hat)
    assert np.all(probs[two, 2:] == 0.0)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    # Same answer as fitting each row on its own valid classes (brute force on a grid).
    grid = np.exp(np.linspace(np.log(1.0), np.log(4.0), 300))
    nll = [_nll_at(lp, labels, t) for t in grid]
    assert _nll_at(lp, labels, t_hat) <= min(nll) + 1e-12
    # Extra all--inf columns change nothing.
    wider = np.concatenate([lp, np.full((4000, 2), -np.inf)], axis=1)
    assert fit_temperature(wider, labels) == pytest.approx(t_hat, rel=1e-12)


def test_apply_temperature_hand_computed() -> None:
    with np.errstate(divide="ignore"):
        lp = np.log(np.array([[0.8, 0.2, 0.0]]))  # -inf third class, as np.log gives
    np.testing.assert_allclose(apply_temperature(lp, 1.0), [[0.8, 0.2, 0.0]])
    # T = 2: softmax(log p / 2) = sqrt(p) / sum sqrt(p).
    r = np.sqrt([0.8, 0.2])
    np.testing.assert_allclose(apply_temperature(lp, 2.0), [[*(r / r.sum()), 0.0]])
    # Temperature never changes the argmax, so never changes accuracy.
    z, labels = _synthetic(7, 1.0, n=500)
    assert accuracy(apply_temperature(z, 0.3), labels) == accuracy(apply_temperature(z, 3), labels)


def test_bounds_are_hit_for_extreme_data() -> None:
    # Every argmax right by a wide margin: the NLL falls as T -> 0, so the lower bound.
    z = np.array([[5.0, 0.0], [0.0, 5.0], [4.0, 1.0]])
    labels = np.array([0, 1, 0])
    assert fit_temperature(z, labels) == T_MIN
    assert fit_temperature(z, labels, t_min=0.2) == 0.2
    # Every argmax wrong: the NLL falls as T grows, so the upper bound.
    assert fit_temperature(z, 1 - labels) == T_MAX
    assert fit_temperature(z, 1 - labels, t_max=7.0) == 7.0


def test_degenerate_rows_keep_t_one() -> None:
    # One valid class per row, or all classes equal: the NLL does not depend on T.
    z = np.array([[0.0, -np.inf], [-np.inf, 0.0]])
    assert fit_temperature(z, np.array([0, 1])) == 1.0
    assert fit_temperature(np.zeros((4, 3)), np.array([0, 1, 2, 0])) == 1.0


def test_scaler_round_trip_and_bma_use() -> None:
    # A 5-sample "BMA": the input is the log of the averaged probabilities.
    rng = np.random.default_rng(8)
    z, labels = _synthetic(9, 2.0, n=2000)
    samples = np.exp(_log_softmax(z[None] + rng.normal(scale=0.3, size=(5, 2000, 4))))
    with np.errstate(divide="ignore"):
        log_bma = np.log(samples.mean(axis=0))
    val, test = slice(0, 1000), slice(1000, 2000)
    scaler = TemperatureScaler().fit(log_bma[val], labels[val])
    assert scaler.fitted and not TemperatureScaler().fitted
    assert scaler.n_fit == 1000
    assert scaler.temperature == pytest.approx(fit_temperature(log_bma[val], labels[val]))
    assert scaler.nll_after is not None and scaler.nll_before is not None
    assert scaler.nll_after < scaler.nll_before
    assert scaler.nll_before == pytest.approx(
        negative_log_likelihood(np.exp(log_bma[val]), labels[val])
    )
    calibrated = scaler.transform(log_bma[test])
    assert negative_log_likelihood(calibrated, labels[test]) < negative_log_likelihood(
        np.exp(log_bma[test]), labels[test]
    )
    again = TemperatureScaler.from_dict(json.loads(json.dumps(scaler.to_dict())))
    assert again == scaler
    np.testing.assert_array_equal(again.transform(log_bma[test]), calibrated)


def test_torch_inputs() -> None:
    z, labels = _synthetic(10, 1.5, n=500)
    t_np = fit_temperature(z, labels)
    assert fit_temperature(torch.tensor(z), torch.tensor(labels)) == t_np
    np.testing.assert_array_equal(
        apply_temperature(torch.tensor(z), t_np), apply_temperature(z, t_np)
    )


@pytest.mark.parametrize(
    ("log_probs", "labels", "match"),
    [
        (np.zeros(3), np.array([0]), "shape"),
        (np.zeros((0, 3)), np.zeros(0, dtype=int), "empty"),
        (np.array([[np.nan, 0.0]]), np.array([0]), "NaN"),
        (np.array([[np.inf, 0.0]]), np.array([0]), r"\+inf"),
        (np.array([[-np.inf, -np.inf]]), np.array([0]), "row 0 is -inf everywhere"),
        (np.array([[0.0, -np.inf]]), np.array([1]), "padded class"),
        (np.zeros((2, 2)), np.array([0]), "2 rows"),
        (np.zeros((2, 2)), np.array([0, 2]), "2 classes"),
        ("abc", np.array([0]), "could not be read"),
    ],
)
def test_fit_refuses_bad_input(log_probs: object, labels: object, match: str) -> None:
    with pytest.raises(ScalaBLError, match=match):
        fit_temperature(log_probs, labels)


@pytest.mark.parametrize("t", [0, -1.0, math.nan, math.inf, True, "hot"])
def test_bad_temperature(t: object) -> None:
    with pytest.raises(ScalaBLError, match="temperature"):
        apply_temperature(np.zeros((1, 2)), t)  # type: ignore[arg-type]
    with pytest.raises(ScalaBLError, match="temperature"):
        TemperatureScaler(temperature=t)  # type: ignore[arg-type]


@pytest.mark.parametrize(("t_min", "t_max"), [(2.0, 5.0), (0.1, 0.5), (1.0, 1.0), (-1.0, 2.0)])
def test_bad_bounds(t_min: float, t_max: float) -> None:
    with pytest.raises(ScalaBLError, match="t_min|temperature"):
        fit_temperature(np.zeros((2, 2)), np.array([0, 1]), t_min=t_min, t_max=t_max)


def test_from_dict_refuses_unknown_fields() -> None:
    with pytest.raises(ScalaBLError, match="unknown TemperatureScaler fields"):
        TemperatureScaler.from_dict({"temperature": 1.2, "tau": 3})
    with pytest.raises(ScalaBLError, match="dict"):
        TemperatureScaler.from_dict([1.2])  # type: ignore[arg-type]


def test_errors_are_one_line() -> None:
    with pytest.raises(ValueError) as info:
        fit_temperature(np.array([[0.0, -np.inf]]), np.array([1]))
    assert "\n" not in str(info.value)


# ------------------------------------------------ a Bayesian predictive keeps its draws


def _disagreeing_draws(seed: int = 0, s: int = 8, n: int = 200, c: int = 4):
    """Draws whose argmax differs between draws (epistemic spread) on top of shared logits."""
    rng = np.random.default_rng(seed)
    shared = rng.normal(0, 2.0, size=(n, c))
    z = shared[None] + rng.normal(0, 1.5, size=(s, n, c))
    labels = np.array([rng.choice(c, p=np.exp(r) / np.exp(r).sum()) for r in shared / 2.0])
    return z - np.log(np.exp(z).sum(-1, keepdims=True)), labels


def test_bma_temperature_keeps_mutual_information():
    from scalabl_pyro.evaluation.metrics import uncertainty_decomposition
    from scalabl_pyro.inference.temperature import (
        bma_log_probs,
        fit_bma_temperature,
        tempered_draws,
    )

    slp, y = _disagreeing_draws()
    t = fit_bma_temperature(slp, y)
    assert t != 1.0
    tempered = tempered_draws(slp, t)
    mi = uncertainty_decomposition(np.exp(tempered)).mean()["epistemic"]
    assert mi > 0.01  # the draws still disagree after scaling
    # each draw is a normalised distribution, its argmax unchanged
    np.testing.assert_allclose(np.exp(tempered).sum(-1), 1.0, rtol=1e-12)
    np.testing.assert_array_equal(tempered.argmax(-1), slp.argmax(-1))

    # T minimises the NLL of the averaged tempered probabilities over a fine grid
    def nll(temp):
        lp = bma_log_probs(tempered_draws(slp, temp))
        return -np.mean(lp[np.arange(len(y)), y])

    grid = np.exp(np.linspace(np.log(0.05), np.log(20), 400))
    assert nll(t) <= min(nll(g) for g in grid) + 1e-9
    assert nll(t) <= nll(1.0)


def test_bma_temperature_of_one_draw_is_classic_temperature_scaling():
    from scalabl_pyro.inference.temperature import fit_bma_temperature, tempered_draws

    slp, y = _disagreeing_draws(seed=1, s=1)
    t = fit_bma_temperature(slp, y)
    assert t == pytest.approx(fit_temperature(slp[0], y), rel=1e-9)
    np.testing.assert_allclose(np.exp(tempered_draws(slp, t))[0], apply_temperature(slp[0], t))


def test_prediction_tempered_and_padded_classes():
    from scalabl_pyro.inference.predict import Prediction
    from scalabl_pyro.inference.temperature import tempered_draws

    slp, y = _disagreeing_draws(seed=2, s=3, n=5, c=3)
    slp[:, 0, 2] = -np.inf  # a padded class stays at probability 0
    mask = np.isfinite(slp[0])
    pred = Prediction(np.exp(slp).mean(0), slp, y, mask)
    hot = pred.tempered(2.0)
    assert hot.num_samples == 3 and hot.probs[0, 2] == 0.0
    np.testing.assert_allclose(hot.probs, np.exp(tempered_draws(slp, 2.0)).mean(0))
    np.testing.assert_allclose(hot.probs.sum(-1), 1.0)
    with pytest.raises(ScalaBLError, match="temperature"):
        pred.tempered(-1.0)
