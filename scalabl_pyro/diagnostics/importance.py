"""Importance-sampling diagnostics of a variational posterior, on plain arrays.

Everything here works on numbers a fit produced (draws of ``s`` from ``q``,
their log densities and the pointwise log-likelihood matrix), so the maths
is tested against exact answers without a language model
(``tests/test_importance.py`` uses a conjugate Gaussian model).

**k-hat of q** (Yao, Vehtari, Simpson and Gelman 2018, "Yes, but did it
work?"). With ``s_1..s_S ~ q`` and the training set ``D`` of N questions,

    log w_s = log p(s_s) + sum_{i=1}^N log p(y_i | x_i, s_s) - log q(s_s)

are the importance ratios of the posterior ``p(s | D) ∝ p(s) p(D | s)``
over ``q`` (up to the constant ``log p(D)``). ``az.psislw`` fits a
generalised Pareto distribution to the largest ratios; its shape ``k``
says how heavy their tail is: k < 0.5 is good, k < 0.7 usable, k > 0.7
means expectations under q cannot be corrected towards the posterior by
importance sampling. The sum runs over **every** training question: the
weights of a subset scaled by N / n are those of a different (tempered)
posterior. Where N is too large to score every question under every draw,
:func:`difference_log_lik_sum` estimates the sum with the difference
estimator of Magnusson, Andersen, Jonasson and Vehtari (ICML 2019): an
exact first-order Taylor surrogate of every question around the posterior
mean plus a random subsample of the residual, with its standard error.

**PSIS-LOO of q** (Vehtari, Gelman and Gabry 2017; for a variational
proposal, Magnusson et al. 2019). Leave-one-out predictive densities of the
training questions from the same S x N matrix, with the ratios corrected for
``q`` not being the posterior:

    log r_is = log w_s - log p(y_i | x_i, s_s),
    elpd_loo_i = log sum_s r~_is p(y_i | x_i, s_s)      (r~: PSIS-smoothed, normalised)

**Held-out elpd.** On questions the posterior never saw there is nothing to
leave out: the estimate of out-of-sample fit is the log predictive density
of the Bayesian model average itself, ``elpd_i = log (1/S) sum_s p(y_i |
x_i, s_s)``, with standard error ``sqrt(N var_i elpd_i)``. Two methods are
compared on the same questions by paired differences (what ``az.compare``
reports as ``elpd_diff`` and ``dse``); :meth:`ElpdResult.to_elpd_data`
packs either estimate as an ArviZ ``ELPDData`` for ``az.compare``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.special import logsumexp

from scalabl_pyro.errors import ScalaBLError

#: k-hat below which importance sampling is reliable (Vehtari et al. 2024).
KHAT_GOOD = 0.5
#: k-hat below which q is usable (Yao et al. 2018).
KHAT_OK = 0.7
#: Fewest draws for which PSIS fits a tail (it needs more than 4 tail weights).
MIN_KHAT_SAMPLES = 25
#: Log weights whose range is below this are constant (q equals the target up to a constant).
_FLAT = 1e-9


def _matrix(log_lik: Any, name: str = "log_lik") -> np.ndarray:
    ll = np.asarray(log_lik, dtype=np.float64)
    if ll.ndim != 2 or ll.shape[0] < 1 or ll.shape[1] < 1:
        raise ScalaBLError(f"{name} must be an (S draws, N examples) array, got shape {ll.shape}")
    if not np.all(np.isfinite(ll)):
        raise ScalaBLError(
            f"{name} has {int(np.sum(~np.isfinite(ll)))} non-finite entries; every draw must "
            "give every example a finite log-likelihood"
        )
    return ll


def pareto_k_from_log_weights(log_weights: Any) -> tuple[float, np.ndarray]:
    """(k-hat, PSIS-smoothed normalised log weights) of raw log importance weights.

    Exactly constant weights (q equal to the target up to a constant) have
    no tail to fit; k-hat is then reported as -inf.
    """
    lw = np.asarray(log_weights, dtype=np.float64).reshape(-1)
    if lw.size < 2 or not np.all(np.isfinite(lw)):
        raise ScalaBLError(
            f"need at least 2 finite log weights, got {lw.size} with "
            f"{int(np.sum(~np.isfinite(lw)))} non-finite; draw more samples"
        )
    if np.ptp(lw) <= _FLAT * max(1.0, float(np.max(np.abs(lw)))):
        return float("-inf"), np.full_like(lw, -math.log(lw.size))
    import arviz as az

    smoothed, k = az.psislw(lw.copy())
    return float(k), np.asarray(smoothed)


@dataclass
class ParetoK:
    """k-hat of the importance ratios p(D, s) / q(s), and how the likelihood sum was made.

    ``estimator`` is ``"exact"`` (every training question scored under every
    draw) or ``"difference"`` (Taylor surrogate + a subsample of
    ``subsample_size`` residuals; ``log_lik_se`` is then the mean standard
    error of the per-draw log-likelihood sum, 0 when exact).
    """

    khat: float
    log_weights: np.ndarray  # (S,) raw log w
    smoothed_log_weights: np.ndarray  # (S,) PSIS-smoothed, normalised
    num_data: int
    estimator: str = "exact"
    subsample_size: int | None = None
    log_lik_se: float = 0.0

    @property
    def usable(self) -> bool:
        """k-hat < 0.7 (Yao et al. 2018)."""
        return bool(self.khat < KHAT_OK)

    @property
    def ess(self) -> float:
        """Effective sample size 1 / sum w^2 of the smoothed, normalised weights."""
        w = np.exp(self.smoothed_log_weights)
        return float(1.0 / np.sum(w**2))

    def to_dict(self) -> dict[str, Any]:
        """Scalars for tables; k-hat of exactly constant weights (-inf) is written as None."""
        return {
            "khat": self.khat if math.isfinite(self.khat) else None,
            "khat_constant_weights": not math.isfinite(self.khat),
            "ess": self.ess,
            "num_draws": int(self.log_weights.shape[0]),
            "num_data": self.num_data,
            "estimator": self.estimator,
            "subsample_size": self.subsample_size,
            "log_lik_se": self.log_lik_se,
        }


def khat_of_q(
    log_lik_sum: Any,
    log_prior: Any,
    log_q: Any,
    *,
    num_data: int,
    estimator: str = "exact",
    subsample_size: int | None = None,
    log_lik_se: float = 0.0,
) -> ParetoK:
    """k-hat of q from per-draw log-likelihood sums, log p(s) and log q(s), each (S,)."""
    ll, lp, lq = (
        np.asarray(a, dtype=np.float64).reshape(-1) for a in (log_lik_sum, log_prior, log_q)
    )
    if not ll.shape == lp.shape == lq.shape:
        raise ScalaBLError(
            f"log_lik_sum, log_prior and log_q need one value per draw; got shapes "
            f"{ll.shape}, {lp.shape}, {lq.shape}"
        )
    if ll.size < MIN_KHAT_SAMPLES:
        raise ScalaBLError(
            f"k-hat needs at least {MIN_KHAT_SAMPLES} draws (PSIS fits the largest 20 % of the "
            f"weights), got {ll.size}; draw more samples"
        )
    lw = ll + lp - lq
    khat, smoothed = pareto_k_from_log_weights(lw)
    return ParetoK(khat, lw, smoothed, int(num_data), estimator, subsample_size, log_lik_se)


def difference_log_lik_sum(
    draws: Any,
    point: Any,
    point_log_lik_sum: float,
    total_grad: Any,
    sub_log_lik: Any,
    sub_point_log_lik: Any,
    sub_grads: Any,
    num_data: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Difference estimate of ``sum_{i=1}^N log p(y_i | s_s)`` per draw, and its standard error.

    Surrogate ``l~_i(s) = l_i(mu) + g_i . (s - mu)`` (first-order Taylor
    expansion around ``point`` = mu); its sum over all N questions is exact
    from one pass: ``point_log_lik_sum + total_grad . (s - mu)``. The residual
    ``l_i(s) - l~_i(s)`` is estimated from a simple random subsample of m
    questions (without replacement), scaled by N / m; the standard error is
    ``N sqrt((1 - m/N) var_j(residual_j) / m)`` per draw (Magnusson et al. 2019).

    Shapes: ``draws`` (S, D), ``point`` (D,), ``total_grad`` (D,),
    ``sub_log_lik`` (S, m), ``sub_point_log_lik`` (m,), ``sub_grads`` (m, D).
    """
    s = np.asarray(draws, dtype=np.float64)
    mu = np.asarray(point, dtype=np.float64).reshape(-1)
    g = np.asarray(total_grad, dtype=np.float64).reshape(-1)
    sub = _matrix(sub_log_lik, "sub_log_lik")
    sub_pt = np.asarray(sub_point_log_lik, dtype=np.float64).reshape(-1)
    sub_g = np.asarray(sub_grads, dtype=np.float64)
    if s.ndim != 2 or s.shape[1] != mu.size or g.size != mu.size:
        raise ScalaBLError(
            f"draws {s.shape}, point {mu.shape} and total_grad {g.shape} must share the latent "
            "dimension D: draws (S, D), point (D,), total_grad (D,)"
        )
    m = sub.shape[1]
    if sub.shape[0] != s.shape[0] or sub_pt.size != m or sub_g.shape != (m, mu.size):
        raise ScalaBLError(
            f"subsample arrays do not line up: sub_log_lik {sub.shape}, sub_point_log_lik "
            f"{sub_pt.shape}, sub_grads {sub_g.shape} for {s.shape[0]} draws of dimension {mu.size}"
        )
    if not 1 <= m <= num_data:
        raise ScalaBLError(f"subsample size {m} must be between 1 and num_data={num_data}")
    delta = s - mu  # (S, D)
    surrogate_sum = float(point_log_lik_sum) + delta @ g  # (S,)
    residual = sub - sub_pt[None, :] - delta @ sub_g.T  # (S, m)
    estimate = surrogate_sum + num_data * residual.mean(axis=1)
    if m > 1:
        var = residual.var(axis=1, ddof=1)
        se = num_data * np.sqrt((1.0 - m / num_data) * var / m)
    else:
        se = np.full(s.shape[0], np.inf) if m < num_data else np.zeros(s.shape[0])
    return estimate, se


@dataclass
class ElpdResult:
    """An elpd estimate: total, standard error, pointwise values and (for LOO) Pareto k's.

    ``kind`` is ``"loo"`` (PSIS-LOO of q on the training questions) or
    ``"heldout"`` (the BMA's log predictive density on unseen questions).
    """

    kind: str
    elpd: float
    se: float
    pointwise: np.ndarray  # (N,)
    num_draws: int
    p_loo: float | None = None
    pareto_k: np.ndarray | None = None  # (N,), LOO only
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_data(self) -> int:
        """N, the number of questions."""
        return int(self.pointwise.shape[0])

    def k_counts(self) -> dict[str, int] | None:
        """How many questions have k in (-inf, 0.5], (0.5, 0.7], (0.7, 1], (1, inf) (LOO only)."""
        if self.pareto_k is None:
            return None
        k = self.pareto_k
        return {
            "good": int(np.sum(k <= KHAT_GOOD)),
            "ok": int(np.sum((k > KHAT_GOOD) & (k <= KHAT_OK))),
            "bad": int(np.sum((k > KHAT_OK) & (k <= 1.0))),
            "very_bad": int(np.sum(k > 1.0)),
        }

    def to_dict(self) -> dict[str, Any]:
        """Scalars for tables (no infinities: k's are counted, not listed)."""
        out: dict[str, Any] = {
            "kind": self.kind,
            "elpd": self.elpd,
            "se": self.se,
            "num_data": self.num_data,
            "num_draws": self.num_draws,
        }
        if self.p_loo is not None:
            out["p_loo"] = self.p_loo
        counts = self.k_counts()
        if counts is not None:
            out["k_counts"] = counts
            out["max_k"] = float(np.max(self.pareto_k)) if self.pareto_k.size else None
        return out

    def to_elpd_data(self) -> Any:
        """An ArviZ ``ELPDData`` (pointwise, log scale) that ``az.compare`` accepts.

        ArviZ knows only ``loo`` and ``waic``, so a held-out estimate is packed
        as ``elpd_loo`` too: ``az.compare`` then ranks by it and reports the
        paired difference ``elpd_diff`` with its standard error ``dse``. Its
        ``pareto_k`` is all zeros (nothing was left out).
        """
        import xarray as xr
        from arviz.stats.stats import ELPDData

        k = self.pareto_k if self.pareto_k is not None else np.zeros(self.num_data)
        good_k = min(1 - 1 / np.log10(max(self.num_draws, 11)), KHAT_OK)
        p = self.p_loo if self.p_loo is not None else 0.0
        return ELPDData(
            data=[
                self.elpd,
                self.se,
                p,
                self.num_draws,
                self.num_data,
                bool(np.any(k > good_k)),
                xr.DataArray(self.pointwise, dims=["example"], name="loo_i"),
                xr.DataArray(k, dims=["example"], name="pareto_shape"),
                "log",
                good_k,
            ],
            index=[
                "elpd_loo",
                "se",
                "p_loo",
                "n_samples",
                "n_data_points",
                "warning",
                "loo_i",
                "pareto_k",
                "scale",
                "good_k",
            ],
        )


def _total_and_se(pointwise: np.ndarray) -> tuple[float, float]:
    n = pointwise.shape[0]
    se = float(math.sqrt(n * np.var(pointwise))) if n > 1 else 0.0
    return float(np.sum(pointwise)), se


def psis_loo_of_q(log_lik: Any, log_weights: Any) -> ElpdResult:
    """PSIS-LOO of the training questions from draws of q (module docstring).

    ``log_lik``: (S, N) log p(y_i | x_i, s_s) of the training questions the
    posterior conditioned on; ``log_weights``: (S,) log w_s of :func:`khat_of_q`
    (log p(s) + sum_i log p(y_i | s) - log q(s)). With ``log_weights`` all
    zero this is ordinary PSIS-LOO of posterior draws.
    """
    ll = _matrix(log_lik)
    lw = np.asarray(log_weights, dtype=np.float64).reshape(-1)
    if lw.shape[0] != ll.shape[0] or not np.all(np.isfinite(lw)):
        raise ScalaBLError(
            f"log_weights needs one finite value per draw ({ll.shape[0]}), got shape {lw.shape}"
        )
    if ll.shape[0] < MIN_KHAT_SAMPLES:
        raise ScalaBLError(
            f"PSIS-LOO needs at least {MIN_KHAT_SAMPLES} draws to fit its tails, got "
            f"{ll.shape[0]}; draw more samples (the default is 100)"
        )
    import arviz as az

    log_r = (lw[:, None] - ll).T  # (N, S): ratios of the leave-one-out posterior over q
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # k's are reported as counts, not as warnings
        smoothed, k = az.psislw(log_r.copy())
    smoothed = np.asarray(smoothed)
    k = np.asarray(k, dtype=np.float64).reshape(-1)
    elpd_i = logsumexp(smoothed + ll.T, axis=1)
    # the full-data predictive under the importance-weighted q, for p_loo
    _, w_smooth = pareto_k_from_log_weights(lw)
    lpd_i = logsumexp(w_smooth[:, None] + ll, axis=0)
    total, se = _total_and_se(elpd_i)
    return ElpdResult(
        "loo",
        total,
        se,
        elpd_i,
        ll.shape[0],
        p_loo=float(np.sum(lpd_i - elpd_i)),
        pareto_k=k,
        extra={"lpd": float(np.sum(lpd_i))},
    )


def heldout_elpd(log_lik: Any) -> ElpdResult:
    """The BMA's log predictive density on held-out questions: ``sum_i log mean_s p(y_i | s_s)``."""
    ll = _matrix(log_lik)
    elpd_i = logsumexp(ll, axis=0) - math.log(ll.shape[0])
    total, se = _total_and_se(elpd_i)
    return ElpdResult("heldout", total, se, elpd_i, ll.shape[0])


def paired_difference(a: ElpdResult, b: ElpdResult) -> dict[str, float]:
    """``elpd(a) - elpd(b)`` on the same questions, with the SE of the paired differences."""
    if a.num_data != b.num_data:
        raise ScalaBLError(
            f"paired differences need the same questions; got {a.num_data} and {b.num_data}"
        )
    d = a.pointwise - b.pointwise
    diff, se = _total_and_se(d)
    return {"elpd_diff": diff, "dse": se, "n": int(d.shape[0])}


__all__ = [
    "ElpdResult",
    "KHAT_GOOD",
    "KHAT_OK",
    "MIN_KHAT_SAMPLES",
    "ParetoK",
    "difference_log_lik_sum",
    "heldout_elpd",
    "khat_of_q",
    "paired_difference",
    "pareto_k_from_log_weights",
    "psis_loo_of_q",
]
