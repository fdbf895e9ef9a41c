"""Accuracy and calibration metrics for multiple-choice predictions.

Every function takes class probabilities ``probs`` of shape ``(N, C)`` and,
where needed, integer labels of shape ``(N,)``, as numpy arrays, torch tensors
or nested lists; they are converted to float64 numpy before any arithmetic so
results do not depend on the input's dtype or device. A class may have
probability exactly 0 (an example with fewer choices than ``C`` is padded with
zeros); every metric handles that.

Binning convention (ECE and reliability diagrams): ``n_bins`` equal-width bins
on ``[0, 1]`` with edges ``np.arange(n_bins + 1) / n_bins`` (each edge is the
correctly rounded ``i / n_bins``, so a confidence equal to an edge lands
predictably). A confidence ``c`` falls in the bin with ``lo < c <= hi``,
except that the first bin also takes ``c == 0``; a confidence of exactly 1.0
therefore lands in the last bin. Confidence is the top-label probability
``max_c p_c`` and the prediction is its ``argmax`` (the first class on ties).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

from scalabl_pyro.errors import ScalaBLError

#: Lower clamp on p(y) in :func:`negative_log_likelihood`; caps one example's
#: loss at ``-log(NLL_EPS)`` (about 36.04 nats) when the true class has p = 0.
NLL_EPS: float = float(np.finfo(np.float64).eps)

#: How far a row of ``probs`` may sum away from 1 (float32 softmax rounding).
_ROW_SUM_ATOL = 1e-4


@dataclass(frozen=True)
class ReliabilityBins:
    """Per-bin statistics behind ECE and the reliability diagram.

    ``edges`` has ``n_bins + 1`` entries; ``counts``, ``confidence`` (mean
    top-label probability) and ``accuracy`` (fraction correct) have ``n_bins``.
    ``confidence`` and ``accuracy`` are NaN for empty bins.
    """

    edges: np.ndarray
    counts: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray

    @property
    def n_bins(self) -> int:
        """Number of bins."""
        return int(self.counts.shape[0])

    @property
    def total(self) -> int:
        """Number of examples over all bins."""
        return int(self.counts.sum())

    @property
    def gap(self) -> np.ndarray:
        """Per-bin ``confidence - accuracy`` (positive = overconfident; NaN if empty)."""
        return self.confidence - self.accuracy

    @property
    def ece(self) -> float:
        """Count-weighted mean of ``|confidence - accuracy|`` (a fraction in [0, 1])."""
        filled = self.counts > 0
        weights = self.counts[filled] / self.total
        return float(np.sum(weights * np.abs(self.gap[filled])))


# --------------------------------------------------------------------------- #
# input handling


def _to_numpy(x: Any, *, floating: bool) -> np.ndarray:
    """Convert a numpy array, torch tensor or list to numpy (float64 if ``floating``)."""
    torch = sys.modules.get("torch")  # a tensor can only exist if torch is imported
    if torch is not None and isinstance(x, torch.Tensor):
        t = x.detach().cpu()
        if t.is_floating_point():
            t = t.double()  # also covers bfloat16, which numpy cannot hold
        x = t.numpy()
    arr = np.asarray(x)
    return arr.astype(np.float64) if floating else arr


def _check_probs(probs: Any, *, name: str = "probs") -> np.ndarray:
    """Return ``probs`` as a validated float64 ``(N, C)`` array."""
    try:
        p = _to_numpy(probs, floating=True)
    except (TypeError, ValueError) as exc:
        raise ScalaBLError(
            f"{name} could not be read as a numeric array ({exc}); "
            "pass an (N, C) numpy array or torch tensor of probabilities"
        ) from exc
    if p.ndim != 2:
        raise ScalaBLError(
            f"{name} has shape {p.shape}; pass an (N, C) array with one row of "
            "class probabilities per example"
        )
    if p.shape[0] == 0 or p.shape[1] == 0:
        raise ScalaBLError(
            f"{name} is empty (shape {p.shape}); pass at least one example with at least one class"
        )
    if not np.all(np.isfinite(p)):
        raise ScalaBLError(f"{name} contains NaN or inf; check the model outputs")
    if p.min() < -_ROW_SUM_ATOL or p.max() > 1 + _ROW_SUM_ATOL:
        raise ScalaBLError(
            f"{name} has values outside [0, 1] (min {p.min():.4g}, max "
            f"{p.max():.4g}); pass probabilities, e.g. softmax(logits)"
        )
    sums = p.sum(axis=1)
    worst = int(np.argmax(np.abs(sums - 1.0)))
    if abs(sums[worst] - 1.0) > _ROW_SUM_ATOL:
        raise ScalaBLError(
            f"{name} row {worst} sums to {sums[worst]:.6g}, not 1; pass "
            "normalized probabilities, e.g. softmax(logits)"
        )
    return np.clip(p, 0.0, 1.0)


def _check_labels(labels: Any, n: int, n_classes: int) -> np.ndarray:
    """Return ``labels`` as a validated int64 ``(N,)`` array of class indices."""
    try:
        y = _to_numpy(labels, floating=False)
    except (TypeError, ValueError) as exc:
        raise ScalaBLError(
            f"labels could not be read as an array ({exc}); pass an (N,) integer array or tensor"
        ) from exc
    if y.ndim != 1:
        raise ScalaBLError(f"labels has shape {y.shape}; pass a 1-D array of N class indices")
    if y.shape[0] != n:
        raise ScalaBLError(
            f"labels has {y.shape[0]} entries but probs has {n} rows; pass one "
            "label per row of probs"
        )
    integral_floats = (
        y.dtype.kind == "f" and bool(np.all(np.isfinite(y))) and bool(np.all(y == np.round(y)))
    )
    if not (y.dtype.kind in "iu" or integral_floats):
        raise ScalaBLError(f"labels has dtype {y.dtype}; pass integer class indices")
    y = y.astype(np.int64)
    if y.min() < 0 or y.max() >= n_classes:
        raise ScalaBLError(
            f"labels range over [{y.min()}, {y.max()}] but probs has "
            f"{n_classes} classes; labels must be 0-based indices below {n_classes}"
        )
    return y


def _check_pair(probs: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate ``probs`` and ``labels`` together."""
    p = _check_probs(probs)
    y = _check_labels(labels, p.shape[0], p.shape[1])
    return p, y


def _check_n_bins(n_bins: int) -> int:
    """Reject a bin count that is not a positive integer."""
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ScalaBLError(f"n_bins is {n_bins!r}; pass a positive integer such as 15")
    return int(n_bins)


def _entropy(p: np.ndarray) -> np.ndarray:
    """Shannon entropy in nats over the last axis, with 0 log 0 = 0."""
    safe = np.where(p > 0, p, 1.0)
    return -np.sum(np.where(p > 0, p * np.log(safe), 0.0), axis=-1)


# --------------------------------------------------------------------------- #
# metrics (validated inputs)


def _accuracy(p: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.argmax(p, axis=1) == y))


def _reliability_bins(p: np.ndarray, y: np.ndarray, n_bins: int) -> ReliabilityBins:
    conf = p.max(axis=1)
    correct = (np.argmax(p, axis=1) == y).astype(np.float64)
    edges = np.arange(n_bins + 1) / n_bins
    # searchsorted(side="left") gives i with edges[i-1] < c <= edges[i]: bin i-1.
    idx = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    counts = np.bincount(idx, minlength=n_bins)
    conf_sum = np.bincount(idx, weights=conf, minlength=n_bins)
    acc_sum = np.bincount(idx, weights=correct, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.where(counts > 0, conf_sum / counts, np.nan)
        mean_acc = np.where(counts > 0, acc_sum / counts, np.nan)
    return ReliabilityBins(
        edges=edges, counts=counts.astype(np.int64), confidence=mean_conf, accuracy=mean_acc
    )


def _nll(p: np.ndarray, y: np.ndarray) -> float:
    p_true = p[np.arange(p.shape[0]), y]
    return float(np.mean(-np.log(np.maximum(p_true, NLL_EPS))))


def _brier(p: np.ndarray, y: np.ndarray) -> float:
    onehot = np.zeros_like(p)
    onehot[np.arange(p.shape[0]), y] = 1.0
    return float(np.mean(np.sum((p - onehot) ** 2, axis=1)))


# --------------------------------------------------------------------------- #
# public API


def accuracy(probs: Any, labels: Any) -> float:
    """Fraction of examples whose argmax class equals the label."""
    p, y = _check_pair(probs, labels)
    return _accuracy(p, y)


def reliability_bins(probs: Any, labels: Any, n_bins: int = 15) -> ReliabilityBins:
    """Bin examples by top-label confidence and return per-bin count, confidence, accuracy.

    Bins are equal-width on [0, 1], each ``(lo, hi]`` with 0 in the first bin
    (see the module docstring); empty bins get NaN confidence and accuracy.
    """
    p, y = _check_pair(probs, labels)
    return _reliability_bins(p, y, _check_n_bins(n_bins))


def expected_calibration_error(probs: Any, labels: Any, n_bins: int = 15) -> float:
    """Top-label expected calibration error as a fraction in [0, 1].

    ECE = sum over bins of ``(count / N) * |mean confidence - accuracy|``, with
    ``n_bins`` equal-width bins (see :func:`reliability_bins`). Papers usually
    report it multiplied by 100, as a percentage.
    """
    return reliability_bins(probs, labels, n_bins).ece


def negative_log_likelihood(probs: Any, labels: Any) -> float:
    """Mean ``-log p(label)`` in nats.

    ``p(label)`` is clamped below at :data:`NLL_EPS` (float64 machine epsilon)
    so a zero probability on the true class costs about 36.04 nats instead of
    making the mean infinite.
    """
    p, y = _check_pair(probs, labels)
    return _nll(p, y)


def brier_score(probs: Any, labels: Any) -> float:
    """Multiclass Brier score: mean over examples of ``sum_c (p_c - onehot_c)^2``.

    Ranges over [0, 2]: 0 for a confident correct prediction, 2 for a confident
    wrong one. Zero-padded classes contribute nothing.
    """
    p, y = _check_pair(probs, labels)
    return _brier(p, y)


def classification_metrics(probs: Any, labels: Any, n_bins: int = 15) -> dict[str, float]:
    """All headline metrics at once: ``acc``, ``ece`` (fraction), ``nll``, ``brier``, ``n``.

    Validates the inputs once; ``n`` is the number of examples (an int).
    """
    p, y = _check_pair(probs, labels)
    bins = _reliability_bins(p, y, _check_n_bins(n_bins))
    return {
        "acc": _accuracy(p, y),
        "ece": bins.ece,
        "nll": _nll(p, y),
        "brier": _brier(p, y),
        "n": int(p.shape[0]),
    }


def predictive_entropy(probs: Any) -> np.ndarray:
    """Entropy of each example's predictive distribution, in nats (shape ``(N,)``).

    This is the total uncertainty; ``0 log 0`` is taken as 0 so zero-padded
    classes do not contribute.
    """
    return _entropy(_check_probs(probs))


def mutual_information(sample_probs: Any) -> np.ndarray:
    """Epistemic uncertainty per example: entropy of the mean minus mean entropy.

    ``sample_probs`` has shape ``(S, N, C)``: ``S`` posterior samples of the
    class probabilities. The result (nats, shape ``(N,)``) is the mutual
    information between the prediction and the weights; it is 0 when all
    samples agree. Tiny negative values from rounding are clipped to 0.
    """
    try:
        sp = _to_numpy(sample_probs, floating=True)
    except (TypeError, ValueError) as exc:
        raise ScalaBLError(
            f"sample_probs could not be read as a numeric array ({exc}); pass "
            "an (S, N, C) array of per-sample probabilities"
        ) from exc
    if sp.ndim != 3:
        raise ScalaBLError(
            f"sample_probs has shape {sp.shape}; pass an (S, N, C) array: "
            "S posterior samples of (N, C) probabilities"
        )
    if sp.shape[0] == 0:
        raise ScalaBLError("sample_probs has no samples (S = 0); pass at least one sample")
    s, n, c = sp.shape
    flat = _check_probs(sp.reshape(s * n, c), name="sample_probs").reshape(s, n, c)
    mi = _entropy(flat.mean(axis=0)) - _entropy(flat).mean(axis=0)
    return np.maximum(mi, 0.0)
