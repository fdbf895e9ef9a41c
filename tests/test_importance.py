"""k-hat of q, PSIS-LOO of q and held-out elpd against exact answers (conjugate Gaussian).

Bayesian linear regression y_i ~ N(x_i . theta, sigma^2), theta ~ N(0, tau^2 I)
has a Gaussian posterior and exact leave-one-out predictive densities, so
every estimate of :mod:`scalabl_pyro.diagnostics.importance` has a known answer.
"""

from __future__ import annotations

import math

import arviz as az
import numpy as np
import pytest

from scalabl_pyro.diagnostics.importance import (
    KHAT_GOOD,
    KHAT_OK,
    difference_log_lik_sum,
    heldout_elpd,
    khat_of_q,
    paired_difference,
    psis_loo_of_q,
)
from scalabl_pyro.errors import ScalaBLError

SIGMA, TAU = 1.0, 1.0


class Regression:
    """A conjugate Gaussian model with its exact posterior and exact LOO."""

    def __init__(self, n: int = 30, d: int = 3, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.x = rng.normal(size=(n, d))
        self.y = self.x @ rng.normal(size=d) + SIGMA * rng.normal(size=n)
        self.mean, self.cov = self._posterior(np.arange(n))
        self.n, self.d = n, d

    def _posterior(self, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x, y = self.x[keep], self.y[keep]
        cov = np.linalg.inv(x.T @ x / SIGMA**2 + np.eye(x.shape[1]) / TAU**2)
        return cov @ x.T @ y / SIGMA**2, cov

    def log_lik(self, theta: np.ndarray) -> np.ndarray:
        """(S, N) log p(y_i | theta_s)."""
        r = self.y[None] - theta @ self.x.T
        return -0.5 * r**2 / SIGMA**2 - 0.5 * math.log(2 * math.pi * SIGMA**2)

    def log_prior(self, theta: np.ndarray) -> np.ndarray:
        return (-0.5 * theta**2 / TAU**2 - 0.5 * math.log(2 * math.pi * TAU**2)).sum(1)

    def exact_loo(self) -> np.ndarray:
        out = []
        for i in range(self.n):
            m, c = self._posterior(np.arange(self.n) != i)
            v = self.x[i] @ c @ self.x[i] + SIGMA**2
            out.append(
                -0.5 * (self.y[i] - self.x[i] @ m) ** 2 / v - 0.5 * math.log(2 * math.pi * v)
            )
        return np.array(out)

    def grad(self, theta: np.ndarray) -> np.ndarray:
        """(N, D) gradients of log p(y_i | theta) at one theta."""
        return ((self.y - self.x @ theta) / SIGMA**2)[:, None] * self.x


def _log_normal(theta, mean, cov):
    chol = np.linalg.cholesky(cov)
    z = np.linalg.solve(chol, (theta - mean).T)
    return (
        -0.5 * (z**2).sum(0) - np.log(np.diag(chol)).sum() - 0.5 * len(mean) * math.log(2 * math.pi)
    )


def _draws(model, cov, num, seed):
    rng = np.random.default_rng(seed)
    theta = rng.multivariate_normal(model.mean, cov, size=num)
    return theta, _log_normal(theta, model.mean, cov)


def test_q_equal_to_the_posterior_gives_constant_weights_and_exact_loo():
    m = Regression()
    theta, log_q = _draws(m, m.cov, 4000, seed=1)
    ll = m.log_lik(theta)
    pk = khat_of_q(ll.sum(1), m.log_prior(theta), log_q, num_data=m.n)
    # log w = log p(D): constant, so no tail at all (k-hat -inf) and ESS = S
    assert pk.khat < KHAT_GOOD and pk.usable
    assert pk.ess == pytest.approx(4000, rel=1e-6)
    loo = psis_loo_of_q(ll, pk.log_weights)
    exact = m.exact_loo()
    assert abs(loo.elpd - exact.sum()) < loo.se
    np.testing.assert_allclose(loo.pointwise, exact, atol=0.1)
    assert np.mean(np.abs(loo.pointwise - exact)) < 0.02
    assert loo.k_counts()["good"] + loo.k_counts()["ok"] == m.n
    # p_loo of a 3-parameter model with a weak prior is about 3
    assert 2.0 < loo.p_loo < 4.0


def test_psis_loo_of_q_corrects_an_approximation_that_is_too_wide():
    m = Regression()
    theta, log_q = _draws(m, 2.0 * m.cov, 4000, seed=2)
    ll = m.log_lik(theta)
    pk = khat_of_q(ll.sum(1), m.log_prior(theta), log_q, num_data=m.n)
    assert pk.khat < KHAT_OK  # wider than the posterior: light-tailed weights
    corrected = psis_loo_of_q(ll, pk.log_weights)
    naive = psis_loo_of_q(ll, np.zeros(4000))  # treating q's draws as posterior draws
    exact = m.exact_loo()
    err_corrected = np.abs(corrected.pointwise - exact).mean()
    err_naive = np.abs(naive.pointwise - exact).mean()
    assert err_corrected < 0.03 < err_naive


def test_a_q_three_times_too_narrow_has_heavy_tailed_weights():
    m = Regression()
    theta, log_q = _draws(m, m.cov / 9.0, 4000, seed=3)  # sd / 3
    ll = m.log_lik(theta)
    pk = khat_of_q(ll.sum(1), m.log_prior(theta), log_q, num_data=m.n)
    assert pk.khat > KHAT_OK and not pk.usable
    assert pk.ess < 0.05 * 4000


def test_difference_estimator_agrees_with_the_full_data_khat():
    m = Regression(n=400, d=3, seed=4)
    for scale, seed in ((1.5, 5), (1 / 9.0, 6)):
        theta, log_q = _draws(m, scale * m.cov, 400, seed=seed)
        ll = m.log_lik(theta)
        exact = khat_of_q(ll.sum(1), m.log_prior(theta), log_q, num_data=m.n)
        rng = np.random.default_rng(seed)
        sub = np.sort(rng.choice(m.n, size=100, replace=False))
        mu = m.mean
        est, se = difference_log_lik_sum(
            theta,
            mu,
            float(m.log_lik(mu[None])[0].sum()),
            m.grad(mu).sum(0),
            ll[:, sub],
            m.log_lik(mu[None])[0, sub],
            m.grad(mu)[sub],
            m.n,
        )
        err = est - ll.sum(1)
        assert np.all(np.abs(err) <= 5 * se + 1e-9)  # the SE it reports is honest
        approx = khat_of_q(est, m.log_prior(theta), log_q, num_data=m.n, estimator="difference")
        assert abs(approx.khat - exact.khat) < 0.15
        assert (approx.khat > KHAT_OK) == (exact.khat > KHAT_OK)


def test_difference_estimator_with_the_whole_data_as_subsample_is_exact():
    m = Regression(n=40)
    theta, _ = _draws(m, m.cov, 50, seed=7)
    ll = m.log_lik(theta)
    pt = m.log_lik(m.mean[None])[0]
    est, se = difference_log_lik_sum(
        theta, m.mean, float(pt.sum()), m.grad(m.mean).sum(0), ll, pt, m.grad(m.mean), m.n
    )
    np.testing.assert_allclose(est, ll.sum(1), rtol=1e-10)
    np.testing.assert_allclose(se, 0.0)


def test_heldout_elpd_is_the_bma_log_density_and_pairs_by_question():
    rng = np.random.default_rng(0)
    ll_a = np.log(rng.uniform(0.2, 0.9, size=(10, 50)))
    ll_b = ll_a - 0.1
    a, b = heldout_elpd(ll_a), heldout_elpd(ll_b)
    expected = np.log(np.exp(ll_a).mean(0))
    np.testing.assert_allclose(a.pointwise, expected)
    assert a.elpd == pytest.approx(expected.sum())
    assert a.se == pytest.approx(math.sqrt(50 * np.var(expected)))
    d = paired_difference(a, b)
    assert d["elpd_diff"] == pytest.approx(0.1 * 50) and d["dse"] == pytest.approx(0.0, abs=1e-9)
    # az.compare reads the packed estimates and reports the same paired difference
    cmp = az.compare({"a": a.to_elpd_data(), "b": b.to_elpd_data()})
    assert cmp.loc["b", "elpd_diff"] == pytest.approx(5.0)
    assert cmp.loc["b", "dse"] == pytest.approx(0.0, abs=1e-6)
    assert cmp.index[0] == "a"


def test_az_compare_accepts_training_loo_of_q():
    m = Regression()
    out = {}
    for name, scale in (("exact", 1.0), ("wide", 2.0)):
        theta, log_q = _draws(m, scale * m.cov, 1000, seed=8)
        ll = m.log_lik(theta)
        pk = khat_of_q(ll.sum(1), m.log_prior(theta), log_q, num_data=m.n)
        out[name] = psis_loo_of_q(ll, pk.log_weights).to_elpd_data()
    cmp = az.compare(out)
    assert set(cmp.index) == {"exact", "wide"}
    assert abs(cmp["elpd_diff"].max()) < 3 * cmp["dse"].max() + 0.5  # the same model twice


def test_bad_inputs_get_one_line_errors():
    with pytest.raises(ScalaBLError, match="at least 25 draws"):
        khat_of_q(np.zeros(10), np.zeros(10), np.zeros(10), num_data=5)
    with pytest.raises(ScalaBLError, match="one value per draw"):
        khat_of_q(np.zeros(30), np.zeros(29), np.zeros(30), num_data=5)
    with pytest.raises(ScalaBLError, match="non-finite"):
        psis_loo_of_q(np.full((30, 4), np.nan), np.zeros(30))
    with pytest.raises(ScalaBLError, match="same questions"):
        paired_difference(heldout_elpd(np.zeros((2, 3))), heldout_elpd(np.zeros((2, 4))))
