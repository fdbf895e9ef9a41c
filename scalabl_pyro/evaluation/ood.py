"""Out-of-distribution detection metrics, with percentile-bootstrap intervals.

Sign conventions (as in :mod:`scalabl_pyro.evaluation.metrics`): an OOD *score*
is higher for inputs that look more out-of-distribution, and OOD examples are
the positive class of AUROC, AUPR and FPR at 95 % TPR. The scores themselves
(max probability, entropy, mutual information) come from
``scalabl_pyro.evaluation.metrics.ood_scores``; every name here is re-exported
there. Formulas are in ``docs/metrics.md``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from scalabl_pyro.errors import ScalaBLError
from scalabl_pyro.evaluation.validation import check_bootstrap, check_scores, read_float_array


@dataclass(frozen=True)
class OODMetrics:
    """Detection of OOD examples from a score, all fractions in [0, 1].

    ``auroc`` and ``aupr`` treat OOD as the positive class (``aupr`` is the
    average precision, "AUPR-Out"); ``fpr_at_tpr`` is the FPR at
    ``tpr_level`` (0.95 by default: "FPR at 95 % TPR"). ``n_in`` and
    ``n_out`` count the examples.
    """

    auroc: float
    aupr: float
    fpr_at_tpr: float
    tpr_level: float
    n_in: int
    n_out: int

    def to_dict(self) -> dict[str, float]:
        """JSON-ready copy of the fields."""
        return {
            "auroc": self.auroc,
            "aupr": self.aupr,
            "fpr_at_tpr": self.fpr_at_tpr,
            "tpr_level": self.tpr_level,
            "n_in": self.n_in,
            "n_out": self.n_out,
        }


def _check_in_out(scores_in: Any, scores_out: Any) -> tuple[np.ndarray, np.ndarray]:
    return check_scores(scores_in, name="scores_in"), check_scores(scores_out, name="scores_out")


def _roc_steps(s_in: np.ndarray, s_out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative (true, false) positive counts at each distinct threshold, highest first.

    The detector flags ``score >= t``; tied scores enter together, so the
    curve has one point per distinct score value (plus none for "flag nothing").
    """
    scores = np.concatenate([s_out, s_in])
    is_out = np.concatenate([np.ones(s_out.shape[0]), np.zeros(s_in.shape[0])])
    order = np.argsort(-scores, kind="stable")
    scores, is_out = scores[order], is_out[order]
    last_of_run = np.r_[np.diff(scores) != 0, True]
    tp = np.cumsum(is_out)[last_of_run]
    fp = np.cumsum(1.0 - is_out)[last_of_run]
    return tp, fp


def _auroc(s_in: np.ndarray, s_out: np.ndarray) -> float:
    # Mann-Whitney: P(s_out > s_in) + P(s_out = s_in) / 2, via mid-ranks.
    scores = np.concatenate([s_out, s_in])
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    mid_rank = np.cumsum(counts) - (counts - 1) / 2.0  # 1-based average rank per value
    n_out, n_in = s_out.shape[0], s_in.shape[0]
    rank_sum = float(np.sum(mid_rank[inverse[:n_out]]))
    return (rank_sum - n_out * (n_out + 1) / 2.0) / (n_out * n_in)


def _aupr(s_in: np.ndarray, s_out: np.ndarray) -> float:
    tp, fp = _roc_steps(s_in, s_out)
    precision = tp / (tp + fp)
    recall = tp / s_out.shape[0]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def _fpr_at_tpr(s_in: np.ndarray, s_out: np.ndarray, level: float) -> float:
    tp, fp = _roc_steps(s_in, s_out)
    # tp / n_out >= level, written so that e.g. 19 / 20 >= 0.95 holds despite rounding.
    first = int(np.argmax(tp >= level * s_out.shape[0] - 1e-9))
    return float(fp[first] / s_in.shape[0])


def _check_level(level: float) -> float:
    if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0 < level <= 1:
        raise ScalaBLError(f"tpr_level is {level!r}; pass a fraction in (0, 1] such as 0.95")
    return float(level)


def ood_auroc(scores_in: Any, scores_out: Any) -> float:
    """Area under the ROC curve for telling OOD (positive) from in-distribution examples.

    Equals ``P(s_out > s_in) + P(s_out = s_in) / 2`` over all pairs (the
    Mann-Whitney statistic): 0.5 is chance, 1 perfect. Inputs are ``(N_in,)``
    and ``(N_out,)`` scores, higher meaning more likely OOD.
    """
    s_in, s_out = _check_in_out(scores_in, scores_out)
    return _auroc(s_in, s_out)


def ood_aupr(scores_in: Any, scores_out: Any) -> float:
    """Area under the precision-recall curve with OOD as positive, as average precision.

    ``AP = sum_k (R_k - R_{k-1}) P_k`` over the distinct score thresholds,
    highest first (scikit-learn's ``average_precision_score``, no
    interpolation). Chance level is ``N_out / (N_in + N_out)``.
    """
    s_in, s_out = _check_in_out(scores_in, scores_out)
    return _aupr(s_in, s_out)


def ood_fpr_at_tpr(scores_in: Any, scores_out: Any, tpr_level: float = 0.95) -> float:
    """Fraction of in-distribution examples flagged when ``tpr_level`` of the OOD ones are.

    The detector flags ``score >= t``; ``t`` is the highest distinct score at
    which the true-positive rate reaches ``tpr_level`` (the lowest FPR with
    TPR >= ``tpr_level``). Lower is better; 0.95 gives "FPR at 95 % TPR".
    """
    s_in, s_out = _check_in_out(scores_in, scores_out)
    return _fpr_at_tpr(s_in, s_out, _check_level(tpr_level))


def ood_detection(scores_in: Any, scores_out: Any, tpr_level: float = 0.95) -> OODMetrics:
    """AUROC, AUPR and FPR at ``tpr_level`` TPR at once (see the three functions above)."""
    s_in, s_out = _check_in_out(scores_in, scores_out)
    level = _check_level(tpr_level)
    return OODMetrics(
        auroc=_auroc(s_in, s_out),
        aupr=_aupr(s_in, s_out),
        fpr_at_tpr=_fpr_at_tpr(s_in, s_out, level),
        tpr_level=level,
        n_in=int(s_in.shape[0]),
        n_out=int(s_out.shape[0]),
    )


# --------------------------------------------------------------------------- #
# bootstrap confidence intervals


@dataclass(frozen=True)
class OODDetectionCI:
    """AUROC and FPR at ``tpr_level`` TPR with percentile-bootstrap intervals.

    ``auroc`` and ``fpr_at_tpr`` are the point values on the data as given;
    ``*_low`` and ``*_high`` bound the central ``level`` fraction of ``n_boot``
    bootstrap replicates, each resampling the in-distribution and the OOD
    scores independently, with replacement (a stratified bootstrap: both
    set sizes stay fixed).
    """

    auroc: float
    auroc_low: float
    auroc_high: float
    fpr_at_tpr: float
    fpr_low: float
    fpr_high: float
    tpr_level: float
    level: float
    n_boot: int
    n_in: int
    n_out: int

    def to_dict(self) -> dict[str, float]:
        """JSON-ready copy of the fields."""
        return dataclasses.asdict(self)


def _resample_counts(keys: np.ndarray, n_values: int, n_boot: int, rng: Any) -> np.ndarray:
    """``(n_boot, n_values)``: how often each distinct value occurs in each resample of ``keys``."""
    n = keys.shape[0]
    drawn = keys[rng.integers(0, n, size=(n_boot, n))]
    flat = (drawn + n_values * np.arange(n_boot)[:, None]).ravel()
    counts = np.bincount(flat, minlength=n_boot * n_values)
    return counts.reshape(n_boot, n_values).astype(np.float64)


def _count_stats(
    c_in: np.ndarray, c_out: np.ndarray, level: float
) -> tuple[np.ndarray, np.ndarray]:
    """AUROC and FPR at ``level`` TPR of each row of value counts (values in ascending order).

    The same definitions as :func:`ood_auroc` and :func:`ood_fpr_at_tpr`: a
    value absent from a resample only repeats the ROC point above it.
    """
    n_in, n_out = c_in[0].sum(), c_out[0].sum()
    below_in = np.cumsum(c_in, axis=1) - c_in
    auroc = np.sum(c_out * (below_in + 0.5 * c_in), axis=1) / (n_in * n_out)
    tp = np.cumsum(c_out[:, ::-1], axis=1)  # flagged OOD at each threshold, highest first
    fp = np.cumsum(c_in[:, ::-1], axis=1)
    first = np.argmax(tp >= level * n_out - 1e-9, axis=1)
    return auroc, fp[np.arange(fp.shape[0]), first] / n_in


def ood_detection_ci(
    scores_in: Any,
    scores_out: Any,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    tpr_level: float = 0.95,
) -> OODDetectionCI:
    """AUROC and FPR at ``tpr_level`` TPR, each with a percentile-bootstrap interval.

    Each of the ``n_boot`` replicates resamples ``scores_in`` and
    ``scores_out`` independently with replacement (stratified: sizes kept)
    and recomputes both metrics; the interval is the ``(1 - level) / 2`` and
    ``(1 + level) / 2`` quantiles of the replicates. Vectorised over
    replicates (1000 resamples of 500 + 500 scores take a few tens of ms) and
    deterministic given ``seed``.
    """
    s_in, s_out = _check_in_out(scores_in, scores_out)
    tpr = _check_level(tpr_level)
    check_bootstrap(n_boot, level, seed)
    values, keys = np.unique(np.concatenate([s_in, s_out]), return_inverse=True)
    keys = keys.reshape(-1)
    k_in, k_out, n_values = keys[: s_in.shape[0]], keys[s_in.shape[0] :], values.shape[0]
    rng = np.random.default_rng(int(seed))
    chunk = max(1, min(int(n_boot), 4_000_000 // max(n_values, k_in.shape[0], k_out.shape[0])))
    aurocs, fprs = [], []
    for start in range(0, int(n_boot), chunk):
        b = min(chunk, int(n_boot) - start)
        c_in = _resample_counts(k_in, n_values, b, rng)
        c_out = _resample_counts(k_out, n_values, b, rng)
        a, f = _count_stats(c_in, c_out, tpr)
        aurocs.append(a)
        fprs.append(f)
    q = [(1 - level) / 2, (1 + level) / 2]
    a_lo, a_hi = np.quantile(np.concatenate(aurocs), q)
    f_lo, f_hi = np.quantile(np.concatenate(fprs), q)
    return OODDetectionCI(
        auroc=_auroc(s_in, s_out),
        auroc_low=float(a_lo),
        auroc_high=float(a_hi),
        fpr_at_tpr=_fpr_at_tpr(s_in, s_out, tpr),
        fpr_low=float(f_lo),
        fpr_high=float(f_hi),
        tpr_level=tpr,
        level=float(level),
        n_boot=int(n_boot),
        n_in=int(s_in.shape[0]),
        n_out=int(s_out.shape[0]),
    )


# --------------------------------------------------------------------------- #
# paired comparison of two detectors on the same questions


@dataclass(frozen=True)
class AUROCDifference:
    """AUROC of detector ``a`` minus detector ``b`` on the same examples, with its interval.

    ``difference`` is the point value (each detector's AUROC averaged over its
    rows, e.g. seeds); ``low`` and ``high`` bound the central ``level`` fraction
    of ``n_boot`` paired bootstrap replicates; ``p_not_above`` is the fraction
    of replicates with ``difference <= 0`` (a one-sided bootstrap p-value for
    "``a`` separates better than ``b``").
    """

    difference: float
    low: float
    high: float
    p_not_above: float
    level: float
    n_boot: int
    n_in: int
    n_out: int

    def to_dict(self) -> dict[str, float]:
        """JSON-ready copy of the fields."""
        return dataclasses.asdict(self)


def _check_rows(scores: Any, name: str) -> np.ndarray:
    """``scores`` as a finite ``(R, N)`` array: one row per run on the same examples."""
    x = read_float_array(
        scores,
        name,
        ndim=(1, 2),
        what="(N,) or (R, N) scores",
        shape_hint="(N,) scores or (R, N) scores, one row per run",
    )
    x = x[None, :] if x.ndim == 1 else x
    if 0 in x.shape:
        raise ScalaBLError(f"{name} is empty (shape {x.shape}); pass at least one example")
    for row in x:
        check_scores(row, name=name)
    return x


def _pair_wins(s_in: np.ndarray, s_out: np.ndarray) -> np.ndarray:
    """``(N_in, N_out)``: 1 where the OOD score is higher, 1/2 on ties, averaged over rows."""
    d = s_out[:, None, :] - s_in[:, :, None]
    return ((d > 0) + 0.5 * (d == 0)).mean(axis=0)


def ood_auroc_difference_ci(
    scores_in_a: Any,
    scores_out_a: Any,
    scores_in_b: Any,
    scores_out_b: Any,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> AUROCDifference:
    """AUROC(a) - AUROC(b) with a paired percentile-bootstrap interval.

    Both detectors score the same in-distribution and OOD examples: each input
    is ``(N_in,)`` / ``(N_out,)``, or ``(R, N)`` with one row per run (seeds)
    whose AUROCs are averaged. Every replicate resamples the examples once,
    with replacement and stratified, and uses those draws for both detectors
    and every row, so the interval is of the difference itself: far narrower
    than two independent intervals when the detectors agree on which examples
    are hard. AUROC is bilinear in the resample counts, so each replicate is
    ``c_in W c_out / (N_in N_out)`` with ``W`` the averaged pair-win matrix
    (memory ``R N_in N_out``: fine for the thousands of questions of a benchmark).
    """
    in_a, out_a = _check_rows(scores_in_a, "scores_in_a"), _check_rows(scores_out_a, "scores_out_a")
    in_b, out_b = _check_rows(scores_in_b, "scores_in_b"), _check_rows(scores_out_b, "scores_out_b")
    n_in, n_out = in_a.shape[1], out_a.shape[1]
    if in_b.shape[1] != n_in or out_b.shape[1] != n_out:
        raise ScalaBLError(
            f"the detectors score different examples ({n_in} vs {in_b.shape[1]} in-distribution, "
            f"{n_out} vs {out_b.shape[1]} OOD); pass both detectors' scores on the same examples"
        )
    if in_a.shape[0] != out_a.shape[0] or in_b.shape[0] != out_b.shape[0]:
        raise ScalaBLError(
            "a detector's in-distribution and OOD scores have different numbers of rows; "
            "pass one row per run for both"
        )
    check_bootstrap(n_boot, level, seed)
    w = _pair_wins(in_a, out_a) - _pair_wins(in_b, out_b)
    rng = np.random.default_rng(int(seed))
    chunk = max(1, min(int(n_boot), 4_000_000 // max(n_in, n_out)))
    reps = []
    for start in range(0, int(n_boot), chunk):
        b = min(chunk, int(n_boot) - start)
        c_in = _resample_counts(np.arange(n_in), n_in, b, rng)
        c_out = _resample_counts(np.arange(n_out), n_out, b, rng)
        reps.append(np.einsum("bi,ij,bj->b", c_in, w, c_out) / (n_in * n_out))
    diffs = np.concatenate(reps)
    lo, hi = np.quantile(diffs, [(1 - level) / 2, (1 + level) / 2])
    return AUROCDifference(
        difference=float(w.mean()),
        low=float(lo),
        high=float(hi),
        p_not_above=float(np.mean(diffs <= 0)),
        level=float(level),
        n_boot=int(n_boot),
        n_in=int(n_in),
        n_out=int(n_out),
    )
