"""Temperature scaling, fitted post hoc on a held-out split (Guo et al., 2017).

One scalar ``T > 0`` rescales a method's log-probabilities before the
softmax:

    p_T(y = c | x) = exp(z_c / T) / sum_k exp(z_k / T)

where ``z`` is an ``(N, C)`` array of logits or log-probabilities (the two
differ by a per-row constant, which the softmax ignores). ``T > 1`` softens
an overconfident model, ``T < 1`` sharpens it; the argmax, and so the
accuracy, does not change. For a Bayesian model average the input is the
log of the *averaged* probabilities, ``log((1/S) sum_s p_s)``, so the scaler
applies to any method's predictive the same way.

``T`` minimises the mean NLL of a held-out split (never the test split). The
NLL is convex in ``beta = 1 / T`` (a log-sum-exp of functions linear in
``beta``), so a safeguarded Newton search on ``beta`` over the bounds finds
the global optimum to float64 precision, deterministically, with no
optimiser state. Classes with log-probability ``-inf`` (examples padded to
``C`` with fewer choices) get probability 0 at every ``T``.

**A Bayesian predictive keeps its draws** (:func:`fit_bma_temperature`,
:func:`tempered_draws`). Scaling the log of the *averaged* probabilities
collapses the S draws into one distribution, so mutual information and every
other epistemic measure vanish. Instead each draw's scores are divided by
``T`` and the tempered probabilities averaged,

    p_T(y = c | x) = (1/S) sum_s softmax(z_s / T)_c,

with ``T`` fitted by the NLL of that average on the selection split. With
S = 1 this is ordinary temperature scaling. The NLL is no longer convex in
``1/T``, so the fit scans a log-spaced grid over the bounds and refines the
best cell with a bounded scalar search (``scipy.optimize``); the result is
never worse than ``T = 1`` on the data it was fitted to.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import numpy as np

from scalabl_pyro.errors import ScalaBLError
from scalabl_pyro.evaluation.validation import check_bootstrap, check_labels, read_float_array

#: Default search range for ``T``; it must contain 1.
T_MIN: float = 0.01
T_MAX: float = 100.0

_MAX_ITER = 200


def _check_log_probs(log_probs: Any) -> np.ndarray:
    """Return ``log_probs`` as a validated float64 ``(N, C)`` array (``-inf`` allowed)."""
    z = read_float_array(
        log_probs,
        "log_probs",
        ndim=2,
        what="an (N, C) array of log-probabilities or logits",
        shape_hint="an (N, C) array with one row of log-probabilities per example",
    )
    if z.shape[0] == 0 or z.shape[1] == 0:
        raise ScalaBLError(f"log_probs is empty (shape {z.shape}); pass at least one example")
    if np.isnan(z).any() or np.isposinf(z).any():
        raise ScalaBLError("log_probs contains NaN or +inf; only -inf (a padded class) is allowed")
    empty = ~np.isfinite(z).any(axis=1)
    if empty.any():
        raise ScalaBLError(
            f"log_probs row {int(np.argmax(empty))} is -inf everywhere; every example "
            "needs at least one class"
        )
    return z


def _check_temperature(temperature: Any) -> float:
    if isinstance(temperature, bool):
        raise ScalaBLError(f"temperature is {temperature!r}; pass a positive number such as 1.5")
    try:
        t = float(temperature)
    except (TypeError, ValueError) as exc:
        raise ScalaBLError(
            f"temperature is {temperature!r}; pass a positive number such as 1.5"
        ) from exc
    if not (math.isfinite(t) and t > 0):
        raise ScalaBLError(f"temperature is {temperature!r}; pass a positive finite number")
    return t


def _check_bounds(t_min: float, t_max: float) -> tuple[float, float]:
    lo, hi = _check_temperature(t_min), _check_temperature(t_max)
    if not lo <= 1.0 <= hi or lo == hi:
        raise ScalaBLError(
            f"temperature bounds ({t_min}, {t_max}) must satisfy t_min <= 1 <= t_max "
            "with t_min < t_max; the default is (0.01, 100)"
        )
    return lo, hi


def _centred(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows shifted so their largest finite entry is 0, with -inf set to 0, and the mask."""
    mask = np.isfinite(z)
    top = np.max(np.where(mask, z, -np.inf), axis=1, keepdims=True)
    return np.where(mask, z - top, 0.0), mask


def _softmax_beta(zc: np.ndarray, mask: np.ndarray, beta: float) -> np.ndarray:
    e = np.where(mask, np.exp(beta * zc), 0.0)  # beta * zc <= 0: no overflow
    return e / e.sum(axis=1, keepdims=True)


def _nll_beta(zc: np.ndarray, mask: np.ndarray, zy: np.ndarray, beta: float) -> float:
    """Mean ``logsumexp(beta z) - beta z_y`` over examples."""
    lse = np.log(np.sum(np.where(mask, np.exp(beta * zc), 0.0), axis=1))
    return float(np.mean(lse - beta * zy))


def _grad_hess(
    zc: np.ndarray, mask: np.ndarray, zy: np.ndarray, beta: float
) -> tuple[float, float]:
    """d/dbeta and d2/dbeta2 of the mean NLL: ``mean(E_p[z] - z_y)`` and ``mean(Var_p[z])``."""
    p = _softmax_beta(zc, mask, beta)
    mean_z = np.sum(p * zc, axis=1)
    var_z = np.sum(p * (zc - mean_z[:, None]) ** 2, axis=1)
    return float(np.mean(mean_z - zy)), float(np.mean(var_z))


def _fit(z: np.ndarray, y: np.ndarray, t_min: float, t_max: float) -> float:
    zc, mask = _centred(z)
    zy = zc[np.arange(z.shape[0]), y]
    lo, hi = 1.0 / t_max, 1.0 / t_min  # bracket on beta = 1 / T
    if _grad_hess(zc, mask, zy, 1.0)[1] == 0:
        # Every row has one valid class or equal entries: the NLL does not depend on T.
        return 1.0
    g_lo, _ = _grad_hess(zc, mask, zy, lo)
    if g_lo >= 0:  # NLL increasing over the whole range: smallest beta, largest T
        return t_max
    g_hi, _ = _grad_hess(zc, mask, zy, hi)
    if g_hi <= 0:
        return t_min
    beta = 1.0
    for _ in range(_MAX_ITER):
        g, h = _grad_hess(zc, mask, zy, beta)
        if g > 0:
            hi = beta
        else:
            lo = beta
        if g == 0 or hi - lo <= 1e-15 * beta:
            break
        step = beta - g / h if h > 0 else math.nan
        if lo < step < hi:  # Newton inside the bracket
            converged = abs(step - beta) <= 1e-15 * beta
            beta = step
            if converged:
                break
        else:  # bisect, geometrically: beta spans decades
            beta = math.sqrt(lo * hi)
    # The convex optimum over a range holding beta = 1 cannot be worse than T = 1;
    # keep T = 1 if rounding says otherwise.
    if _nll_beta(zc, mask, zy, beta) > _nll_beta(zc, mask, zy, 1.0):
        return 1.0
    return 1.0 / beta


def fit_temperature(
    log_probs: Any, labels: Any, *, t_min: float = T_MIN, t_max: float = T_MAX
) -> float:
    """The temperature ``T`` in ``[t_min, t_max]`` that minimises the mean NLL of ``labels``.

    ``log_probs`` is ``(N, C)`` (logits, log-probabilities, or for a BMA the
    log of the averaged probabilities; ``-inf`` marks a padded class) and
    ``labels`` is ``(N,)``; fit on a held-out split. Minimises
    ``mean_n[logsumexp_c(z_nc / T) - z_{n,y_n} / T]`` in float64. The result is
    a bound when the optimum lies outside (e.g. ``t_min`` for data that the
    argmax separates perfectly), and never has a higher NLL than ``T = 1``.
    """
    z = _check_log_probs(log_probs)
    y = check_labels(labels, z.shape[0], z.shape[1])
    bad = ~np.isfinite(z[np.arange(z.shape[0]), y])
    if bad.any():
        raise ScalaBLError(
            f"labels[{int(np.argmax(bad))}] points at a class with log-probability -inf "
            "(a padded class?); no temperature can fit it"
        )
    lo, hi = _check_bounds(t_min, t_max)
    return _fit(z, y, lo, hi)


def apply_temperature(log_probs: Any, temperature: float) -> np.ndarray:
    """Probabilities ``softmax(z / T)`` per row, float64 ``(N, C)``; ``-inf`` classes get 0."""
    z = _check_log_probs(log_probs)
    zc, mask = _centred(z)
    return _softmax_beta(zc, mask, 1.0 / _check_temperature(temperature))


def _mean_nll(z: np.ndarray, y: np.ndarray, temperature: float) -> float:
    zc, mask = _centred(z)
    return _nll_beta(zc, mask, zc[np.arange(z.shape[0]), y], 1.0 / temperature)


def _check_draws(sample_log_probs: Any) -> np.ndarray:
    """(S, N, C) float64 per-draw log-probabilities (``-inf``: padded class)."""
    z = np.asarray(sample_log_probs, dtype=np.float64)
    if z.ndim == 2:
        z = z[None]
    if z.ndim != 3 or 0 in z.shape:
        raise ScalaBLError(
            f"sample_log_probs must be (S draws, N examples, C classes), got shape {z.shape}"
        )
    if np.isnan(z).any() or np.isposinf(z).any():
        raise ScalaBLError("sample_log_probs contains NaN or +inf; only -inf (a padded class)")
    return z


def tempered_draws(sample_log_probs: Any, temperature: float) -> np.ndarray:
    """Each draw's log-probabilities at temperature ``T``: ``log_softmax(z_s / T)``, (S, N, C)."""
    z = _check_draws(sample_log_probs)
    beta = 1.0 / _check_temperature(temperature)
    mask = np.isfinite(z)
    top = np.max(np.where(mask, z, -np.inf), axis=-1, keepdims=True)
    zc = np.where(mask, beta * (z - top), -np.inf)
    with np.errstate(divide="ignore"):
        lse = np.log(np.sum(np.where(mask, np.exp(zc), 0.0), axis=-1, keepdims=True))
    return zc - lse


def bma_log_probs(sample_log_probs: Any) -> np.ndarray:
    """log of the probabilities averaged over draws, (N, C) (``-inf`` where every draw has 0)."""
    z = _check_draws(sample_log_probs)
    top = np.max(z, axis=0)
    top = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore"):
        return top + np.log(np.mean(np.exp(z - top), axis=0))


def _bma_nll(z: np.ndarray, y: np.ndarray, temperature: float) -> float:
    lp = bma_log_probs(tempered_draws(z, temperature))
    return float(-np.mean(lp[np.arange(y.shape[0]), y]))


def fit_bma_temperature(
    sample_log_probs: Any, labels: Any, *, t_min: float = T_MIN, t_max: float = T_MAX
) -> float:
    """``T`` minimising the NLL of the average of per-draw tempered probabilities (module doc).

    ``sample_log_probs`` is (S, N, C) (a (N, C) array is one draw), ``labels``
    (N,); fit on a held-out split, never on test.
    """
    from scipy.optimize import minimize_scalar

    z = _check_draws(sample_log_probs)
    if z.shape[0] == 1:
        return fit_temperature(z[0], labels, t_min=t_min, t_max=t_max)
    y = check_labels(labels, z.shape[1], z.shape[2])
    if (~np.isfinite(z[:, np.arange(z.shape[1]), y])).all(axis=0).any():
        raise ScalaBLError(
            "a label points at a class with log-probability -inf in every draw (a padded "
            "class?); no temperature can fit it"
        )
    lo, hi = _check_bounds(t_min, t_max)
    grid = np.exp(np.linspace(math.log(lo), math.log(hi), 49))
    nll = np.array([_bma_nll(z, y, t) for t in grid])
    k = int(np.argmin(nll))
    a, b = math.log(grid[max(k - 1, 0)]), math.log(grid[min(k + 1, len(grid) - 1)])
    res = minimize_scalar(
        lambda u: _bma_nll(z, y, math.exp(u)),
        bounds=(a, b),
        method="bounded",
        options={"xatol": 1e-6},
    )
    best_t, best = (math.exp(res.x), float(res.fun)) if res.fun < nll[k] else (grid[k], nll[k])
    return 1.0 if _bma_nll(z, y, 1.0) <= best else float(best_t)


@dataclass(frozen=True)
class TemperatureInterval:
    """A fitted temperature with a percentile-bootstrap interval over the fitting questions.

    ``temperature`` is the fit on the data as given; ``low`` and ``high`` bound
    the central ``level`` fraction of ``samples``, the fits on ``n_boot``
    resamples of the questions (with replacement). A wide interval says the
    split is too small to pin ``T`` down: on a model near chance, 100 questions
    can leave it anywhere from sharpening to flattening.
    """

    temperature: float
    low: float
    high: float
    level: float
    samples: np.ndarray

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (``samples`` as a list)."""
        return {**asdict(self), "samples": [float(t) for t in self.samples]}


def bootstrap_temperature(
    sample_log_probs: Any,
    labels: Any,
    *,
    n_boot: int = 200,
    level: float = 0.95,
    seed: int = 0,
    t_min: float = T_MIN,
    t_max: float = T_MAX,
) -> TemperatureInterval:
    """How sure is the fitted ``T``? :func:`fit_bma_temperature` on resampled questions.

    ``sample_log_probs`` is (S, N, C) (or (N, C): one draw), ``labels`` (N,).
    Replicate ``b`` refits ``T`` on the questions ``rng.integers(0, N, N)`` of a
    ``numpy.random.default_rng(seed)``, drawn one replicate after another;
    deterministic given ``seed``.
    """
    z = _check_draws(sample_log_probs)
    y = check_labels(labels, z.shape[1], z.shape[2])
    check_bootstrap(n_boot, level, seed)
    t = fit_bma_temperature(z, y, t_min=t_min, t_max=t_max)
    rng = np.random.default_rng(seed)
    n = z.shape[1]
    samples = np.empty(int(n_boot))
    for b in range(int(n_boot)):
        idx = rng.integers(0, n, n)
        samples[b] = fit_bma_temperature(z[:, idx], y[idx], t_min=t_min, t_max=t_max)
    lo, hi = np.quantile(samples, [(1 - level) / 2, (1 + level) / 2])
    return TemperatureInterval(
        temperature=float(t), low=float(lo), high=float(hi), level=float(level), samples=samples
    )


@dataclass(frozen=True)
class TemperatureScaler:
    """A fitted temperature and the held-out NLL before and after, for the record.

    ``TemperatureScaler().fit(val_log_probs, val_labels).transform(test_log_probs)``
    gives calibrated test probabilities. The object is immutable: :meth:`fit`
    returns a new scaler. ``nll_before`` / ``nll_after`` (nats, at ``T = 1``
    and at the fitted ``T``) and ``n_fit`` are ``None`` until fitted.
    """

    temperature: float = 1.0
    t_min: float = T_MIN
    t_max: float = T_MAX
    nll_before: float | None = None
    nll_after: float | None = None
    n_fit: int | None = None

    def __post_init__(self) -> None:
        _check_temperature(self.temperature)
        _check_bounds(self.t_min, self.t_max)

    @property
    def fitted(self) -> bool:
        """Whether :meth:`fit` produced this scaler."""
        return self.n_fit is not None

    def fit(self, log_probs: Any, labels: Any) -> TemperatureScaler:
        """A new scaler with ``T`` fitted on ``(log_probs (N, C), labels (N,))``."""
        t = fit_temperature(log_probs, labels, t_min=self.t_min, t_max=self.t_max)
        z = _check_log_probs(log_probs)
        y = check_labels(labels, z.shape[0], z.shape[1])
        return replace(
            self,
            temperature=t,
            nll_before=_mean_nll(z, y, 1.0),
            nll_after=_mean_nll(z, y, t),
            n_fit=int(z.shape[0]),
        )

    def transform(self, log_probs: Any) -> np.ndarray:
        """Calibrated probabilities ``softmax(log_probs / T)``, ``(N, C)`` float64."""
        return apply_temperature(log_probs, self.temperature)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TemperatureScaler:
        """Inverse of :meth:`to_dict`; unknown keys are refused."""
        if not isinstance(d, dict):
            raise ScalaBLError(f"expected a dict from TemperatureScaler.to_dict(), got {type(d)}")
        known = {f.name for f in fields(cls)}
        extra = sorted(set(d) - known)
        if extra:
            raise ScalaBLError(
                f"unknown TemperatureScaler fields {extra}; expected some of {sorted(known)}"
            )
        return cls(**d)
