"""Input validation shared by the metrics, their figures and temperature scaling.

Each ``check_*`` function takes what a user may pass (a numpy array, a torch
tensor or nested lists), converts it to float64 (or int64) numpy, and either
returns it or raises one :class:`~scalabl_pyro.errors.ScalaBLError` that names
the argument and says what to pass instead. Nothing here computes a metric.
"""

from __future__ import annotations

import sys
from typing import Any, Literal

import numpy as np

from scalabl_pyro.errors import ScalaBLError

#: How far a row of ``probs`` may sum away from 1 (float32 softmax rounding).
ROW_SUM_ATOL: float = 1e-4

#: Ways to cut the confidence axis into bins
#: (see :func:`scalabl_pyro.evaluation.metrics.reliability_bins`).
Binning = Literal["equal_width", "equal_mass"]
BINNINGS: tuple[str, ...] = ("equal_width", "equal_mass")


def to_numpy(x: Any, *, floating: bool) -> np.ndarray:
    """Convert a numpy array, torch tensor or list to numpy (float64 if ``floating``)."""
    torch = sys.modules.get("torch")  # a tensor can only exist if torch is imported
    if torch is not None and isinstance(x, torch.Tensor):
        t = x.detach().cpu()
        if t.is_floating_point():
            t = t.double()  # also covers bfloat16, which numpy cannot hold
        x = t.numpy()
    arr = np.asarray(x)
    return arr.astype(np.float64) if floating else arr


def read_float_array(
    x: Any, name: str, *, ndim: int | tuple[int, ...], what: str, shape_hint: str
) -> np.ndarray:
    """``x`` as a float64 array of ``ndim`` dimensions (or one of several), else one clear error."""
    try:
        arr = to_numpy(x, floating=True)
    except (TypeError, ValueError) as exc:
        raise ScalaBLError(
            f"{name} could not be read as a numeric array ({exc}); pass {what}"
        ) from exc
    if arr.ndim not in (ndim if isinstance(ndim, tuple) else (ndim,)):
        raise ScalaBLError(f"{name} has shape {arr.shape}; pass {shape_hint}")
    return arr


def check_bootstrap(n_boot: Any, level: Any, seed: Any) -> None:
    """One clear error unless ``n_boot`` is a positive int, ``level`` in (0, 1), ``seed`` >= 0."""
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise ScalaBLError(f"n_boot is {n_boot!r}; pass a positive number of resamples, e.g. 1000")
    if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0 < level < 1:
        raise ScalaBLError(f"level is {level!r}; pass a coverage in (0, 1) such as 0.95")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ScalaBLError(f"seed is {seed!r}; pass a non-negative integer")


def check_probs(probs: Any, *, name: str = "probs") -> np.ndarray:
    """Return ``probs`` as a validated float64 ``(N, C)`` array."""
    p = read_float_array(
        probs,
        name,
        ndim=2,
        what="an (N, C) numpy array or torch tensor of probabilities",
        shape_hint="an (N, C) array with one row of class probabilities per example",
    )
    if p.shape[0] == 0 or p.shape[1] == 0:
        raise ScalaBLError(
            f"{name} is empty (shape {p.shape}); pass at least one example with at least one class"
        )
    if not np.all(np.isfinite(p)):
        raise ScalaBLError(f"{name} contains NaN or inf; check the model outputs")
    if p.min() < -ROW_SUM_ATOL or p.max() > 1 + ROW_SUM_ATOL:
        raise ScalaBLError(
            f"{name} has values outside [0, 1] (min {p.min():.4g}, max "
            f"{p.max():.4g}); pass probabilities, e.g. softmax(logits)"
        )
    sums = p.sum(axis=1)
    worst = int(np.argmax(np.abs(sums - 1.0)))
    if abs(sums[worst] - 1.0) > ROW_SUM_ATOL:
        raise ScalaBLError(
            f"{name} row {worst} sums to {sums[worst]:.6g}, not 1; pass "
            "normalized probabilities, e.g. softmax(logits)"
        )
    return np.clip(p, 0.0, 1.0)


def check_labels(labels: Any, n: int, n_classes: int) -> np.ndarray:
    """Return ``labels`` as a validated int64 ``(N,)`` array of class indices."""
    try:
        y = to_numpy(labels, floating=False)
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


def check_pair(probs: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate ``probs`` and ``labels`` together."""
    p = check_probs(probs)
    y = check_labels(labels, p.shape[0], p.shape[1])
    return p, y


def check_n_bins(n_bins: int) -> int:
    """Reject a bin count that is not a positive integer."""
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ScalaBLError(f"n_bins is {n_bins!r}; pass a positive integer such as 15")
    return int(n_bins)


def check_binning(binning: str) -> str:
    """Reject an unknown binning scheme."""
    if binning not in BINNINGS:
        raise ScalaBLError(f"binning is {binning!r}; use one of {', '.join(BINNINGS)}")
    return binning


def check_scores(scores: Any, *, name: str) -> np.ndarray:
    """Return ``scores`` as a validated, non-empty, finite float64 ``(N,)`` array."""
    try:
        x = to_numpy(scores, floating=True)
    except (TypeError, ValueError) as exc:
        raise ScalaBLError(
            f"{name} could not be read as a numeric array ({exc}); pass a 1-D array of scores"
        ) from exc
    if x.ndim != 1:
        raise ScalaBLError(
            f"{name} has shape {x.shape}; pass a 1-D array with one score per example"
        )
    if x.shape[0] == 0:
        raise ScalaBLError(f"{name} is empty; pass at least one example")
    if not np.all(np.isfinite(x)):
        raise ScalaBLError(f"{name} contains NaN or inf; pass finite scores")
    return x


def check_sample_probs(sample_probs: Any) -> np.ndarray:
    """Return ``sample_probs`` as a validated float64 ``(S, N, C)`` array."""
    sp = read_float_array(
        sample_probs,
        "sample_probs",
        ndim=3,
        what="an (S, N, C) array of per-sample probabilities",
        shape_hint="an (S, N, C) array: S posterior samples of (N, C) probabilities",
    )
    if sp.shape[0] == 0:
        raise ScalaBLError("sample_probs has no samples (S = 0); pass at least one sample")
    s, n, c = sp.shape
    return check_probs(sp.reshape(s * n, c), name="sample_probs").reshape(s, n, c)


__all__ = [
    "BINNINGS",
    "Binning",
    "ROW_SUM_ATOL",
    "check_binning",
    "check_labels",
    "check_n_bins",
    "check_pair",
    "check_probs",
    "check_sample_probs",
    "check_scores",
    "read_float_array",
    "to_numpy",
]
