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
The equal-mass variant (``binning="equal_mass"``) puts the cut points at
order statistics of the confidences, so each bin holds about ``N / n_bins``
examples; tied confidences always share a bin (see :func:`reliability_bins`).

Sign conventions: an OOD *score* is higher for inputs that look more
out-of-distribution, and OOD examples are the positive class of AUROC, AUPR
and FPR at 95 % TPR. A selective-prediction *confidence* is higher for
examples the model should keep. Every quantity is a fraction or in nats;
tables multiply fractions by 100. Formulas are in ``docs/metrics.md``.

OOD detection from those scores (``ood_detection``, ``ood_auroc``, ``ood_aupr``,
``ood_fpr_at_tpr`` and the bootstrap intervals of ``ood_detection_ci``) lives in
:mod:`scalabl_pyro.evaluation.ood`; every name is re-exported here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

# OOD detection metrics live in evaluation/ood.py; re-exported here
from scalabl_pyro.evaluation.ood import AUROCDifference as AUROCDifference
from scalabl_pyro.evaluation.ood import OODDetectionCI as OODDetectionCI
from scalabl_pyro.evaluation.ood import OODMetrics as OODMetrics
from scalabl_pyro.evaluation.ood import ood_aupr as ood_aupr
from scalabl_pyro.evaluation.ood import ood_auroc as ood_auroc
from scalabl_pyro.evaluation.ood import ood_auroc_difference_ci as ood_auroc_difference_ci
from scalabl_pyro.evaluation.ood import ood_detection as ood_detection
from scalabl_pyro.evaluation.ood import ood_detection_ci as ood_detection_ci
from scalabl_pyro.evaluation.ood import ood_fpr_at_tpr as ood_fpr_at_tpr

# selective prediction lives in evaluation/selective.py; re-exported here
from scalabl_pyro.evaluation.selective import RiskCoverage as RiskCoverage
from scalabl_pyro.evaluation.selective import accuracy_at_coverage as accuracy_at_coverage
from scalabl_pyro.evaluation.selective import aurc as aurc
from scalabl_pyro.evaluation.selective import risk_coverage_curve as risk_coverage_curve
from scalabl_pyro.evaluation.validation import BINNINGS as BINNINGS
from scalabl_pyro.evaluation.validation import (
    Binning,
    check_binning,
    check_n_bins,
    check_pair,
    check_probs,
    check_sample_probs,
)

#: Lower clamp on p(y) in :func:`negative_log_likelihood`; caps one example's
#: loss at ``-log(NLL_EPS)`` (about 36.04 nats) when the true class has p = 0.
NLL_EPS: float = float(np.finfo(np.float64).eps)


@dataclass(frozen=True)
class ReliabilityBins:
    """Per-bin statistics behind ECE and the reliability diagram.

    ``edges`` has ``n_bins + 1`` entries, from 0 to 1 (data-dependent inner
    edges for equal-mass bins); ``counts``, ``confidence`` (mean top-label
    probability) and ``accuracy`` (fraction correct) have ``n_bins``.
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


def _entropy(p: np.ndarray) -> np.ndarray:
    """Shannon entropy in nats over the last axis, with 0 log 0 = 0."""
    safe = np.where(p > 0, p, 1.0)
    return -np.sum(np.where(p > 0, p * np.log(safe), 0.0), axis=-1)


# --------------------------------------------------------------------------- #
# metrics (validated inputs)


def _accuracy(p: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.argmax(p, axis=1) == y))


def _equal_width_edges(n_bins: int) -> np.ndarray:
    return np.arange(n_bins + 1) / n_bins


def _equal_mass_edges(conf: np.ndarray, n_bins: int) -> np.ndarray:
    """Edges ``[0, e_1, ..., e_{B-1}, 1]`` with ``e_b`` the ``floor(b N / B)``-th smallest ``conf``.

    With the ``(lo, hi]`` rule, bin ``b`` then takes the ranks ``floor(b N/B)``
    to ``floor((b+1) N/B) - 1`` (0-based) when confidences are distinct; a run
    of tied confidences stays in the bin of its lowest-ranked member's edge,
    which can leave a later bin empty. ``e_b = 0`` when ``floor(b N / B) = 0``
    (fewer examples than bins): an empty bin, as a top-label confidence is
    at least ``1 / C > 0``.
    """
    srt = np.sort(conf)
    ranks = (np.arange(1, n_bins) * conf.shape[0]) // n_bins
    inner = np.where(ranks > 0, srt[np.maximum(ranks - 1, 0)], 0.0)
    return np.concatenate([[0.0], inner, [1.0]])


def _bin_index(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin of each value under the ``(lo, hi]`` rule, 0 going to the first bin."""
    # searchsorted(side="left") on the inner edges counts the edges strictly
    # below c: c in (edges[i], edges[i+1]] -> i; c <= edges[1] -> 0; c = 1 -> last.
    return np.searchsorted(edges[1:-1], values, side="left")


def _reliability_bins(
    p: np.ndarray, y: np.ndarray, n_bins: int, binning: str = "equal_width"
) -> ReliabilityBins:
    conf = p.max(axis=1)
    correct = (np.argmax(p, axis=1) == y).astype(np.float64)
    if binning == "equal_mass":
        edges = _equal_mass_edges(conf, n_bins)
    else:
        edges = _equal_width_edges(n_bins)
    idx = _bin_index(conf, edges)
    counts = np.bincount(idx, minlength=n_bins)
    conf_sum = np.bincount(idx, weights=conf, minlength=n_bins)
    acc_sum = np.bincount(idx, weights=correct, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.where(counts > 0, conf_sum / counts, np.nan)
        mean_acc = np.where(counts > 0, acc_sum / counts, np.nan)
    return ReliabilityBins(
        edges=edges, counts=counts.astype(np.int64), confidence=mean_conf, accuracy=mean_acc
    )


def _classwise_ece(p: np.ndarray, y: np.ndarray, n_bins: int) -> float:
    n, c = p.shape
    flat = (_bin_index(p, _equal_width_edges(n_bins)) + n_bins * np.arange(c)).ravel()
    hit = (y[:, None] == np.arange(c)).astype(np.float64)
    p_sum = np.bincount(flat, weights=p.ravel(), minlength=c * n_bins)
    hit_sum = np.bincount(flat, weights=hit.ravel(), minlength=c * n_bins)
    # sum_b (n_b / N) |mean p - freq| = sum_b |sum p - sum hits| / N; empty bins add 0.
    return float(np.sum(np.abs(p_sum - hit_sum)) / (n * c))


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
    p, y = check_pair(probs, labels)
    return _accuracy(p, y)


def reliability_bins(
    probs: Any, labels: Any, n_bins: int = 15, *, binning: Binning = "equal_width"
) -> ReliabilityBins:
    """Bin examples by top-label confidence and return per-bin count, confidence, accuracy.

    Every bin is ``(lo, hi]``, the first also taking 0 (see the module
    docstring); empty bins get NaN confidence and accuracy.

    - ``"equal_width"``: edges ``i / n_bins``.
    - ``"equal_mass"``: inner edge ``b`` is the ``k_b``-th smallest confidence,
      ``k_b = floor(b N / n_bins)``, so with distinct confidences bin ``b``
      holds ranks ``k_b .. k_{b+1} - 1`` (sizes differ by at most one). Tied
      confidences share a bin, which keeps the result independent of the
      order of the examples but can leave bins empty.
    """
    p, y = check_pair(probs, labels)
    return _reliability_bins(p, y, check_n_bins(n_bins), check_binning(binning))


def expected_calibration_error(
    probs: Any, labels: Any, n_bins: int = 15, *, binning: Binning = "equal_width"
) -> float:
    """Top-label expected calibration error as a fraction in [0, 1].

    ECE = sum over bins of ``(count / N) * |mean confidence - accuracy|``, with
    ``n_bins`` equal-width bins, or equal-mass bins for
    ``binning="equal_mass"`` (see :func:`reliability_bins`). Papers usually
    report it multiplied by 100, as a percentage.
    """
    return reliability_bins(probs, labels, n_bins, binning=binning).ece


def classwise_calibration_error(probs: Any, labels: Any, n_bins: int = 15) -> float:
    """Classwise ECE (Kull et al., 2019) as a fraction in [0, 1].

    For every class ``k``, the ``N`` probabilities ``p_nk`` are binned on
    equal-width ``(lo, hi]`` bins (0 in the first) and compared with the
    frequency of ``y_n = k`` in the bin; the result is the mean over classes:

        cwECE = (1 / C) sum_k sum_b (n_bk / N) |mean_{n in b} p_nk - mean_{n in b} [y_n = k]|

    Every one of the ``C`` columns counts, so a zero-padded class (p = 0 and
    never the label) is perfectly calibrated and dilutes the mean: compare
    sets padded to the same ``C``.
    """
    p, y = check_pair(probs, labels)
    return _classwise_ece(p, y, check_n_bins(n_bins))


def negative_log_likelihood(probs: Any, labels: Any) -> float:
    """Mean ``-log p(label)`` in nats.

    ``p(label)`` is clamped below at :data:`NLL_EPS` (float64 machine epsilon)
    so a zero probability on the true class costs about 36.04 nats instead of
    making the mean infinite.
    """
    p, y = check_pair(probs, labels)
    return _nll(p, y)


def brier_score(probs: Any, labels: Any) -> float:
    """Multiclass Brier score: mean over examples of ``sum_c (p_c - onehot_c)^2``.

    Ranges over [0, 2]: 0 for a confident correct prediction, 2 for a confident
    wrong one. Zero-padded classes contribute nothing.
    """
    p, y = check_pair(probs, labels)
    return _brier(p, y)


def classification_metrics(probs: Any, labels: Any, n_bins: int = 15) -> dict[str, float]:
    """All headline metrics at once: ``acc``, ``ece`` (fraction), ``nll``, ``brier``, ``n``.

    Validates the inputs once; ``n`` is the number of examples (an int).
    """
    p, y = check_pair(probs, labels)
    bins = _reliability_bins(p, y, check_n_bins(n_bins))
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
    return _entropy(check_probs(probs))


def mutual_information(sample_probs: Any) -> np.ndarray:
    """Epistemic uncertainty per example: entropy of the mean minus mean entropy.

    ``sample_probs`` has shape ``(S, N, C)``: ``S`` posterior samples of the
    class probabilities. The result (nats, shape ``(N,)``) is the mutual
    information between the prediction and the weights; it is 0 when all
    samples agree. Tiny negative values from rounding are clipped to 0.
    """
    return uncertainty_decomposition(sample_probs).epistemic


@dataclass(frozen=True)
class UncertaintyDecomposition:
    """Per-example predictive uncertainty split into its two parts, in nats (each ``(N,)``).

    ``total = aleatoric + epistemic`` up to rounding (about 1e-15):

    - ``total``: ``H[(1/S) sum_s p_s]``, the entropy of the averaged predictive;
    - ``aleatoric``: ``(1/S) sum_s H[p_s]``, the expected entropy;
    - ``epistemic``: ``total - aleatoric``, the mutual information between the
      label and the weights, clipped at 0 against rounding.
    """

    total: np.ndarray
    aleatoric: np.ndarray
    epistemic: np.ndarray

    def mean(self) -> dict[str, float]:
        """Averages over examples: ``{"total", "aleatoric", "epistemic"}`` in nats."""
        return {
            "total": float(self.total.mean()),
            "aleatoric": float(self.aleatoric.mean()),
            "epistemic": float(self.epistemic.mean()),
        }


def uncertainty_decomposition(sample_probs: Any) -> UncertaintyDecomposition:
    """Split predictive entropy into expected entropy and mutual information.

    ``sample_probs`` is ``(S, N, C)``: ``S`` posterior samples of the class
    probabilities (``np.exp(prediction.sample_log_probs)``; padded classes
    are 0 and add nothing). With ``S = 1`` the epistemic part is 0.
    """
    sp = check_sample_probs(sample_probs)
    total = _entropy(sp.mean(axis=0))
    aleatoric = _entropy(sp).mean(axis=0)
    return UncertaintyDecomposition(
        total=total, aleatoric=aleatoric, epistemic=np.maximum(total - aleatoric, 0.0)
    )


# --------------------------------------------------------------------------- #
# out-of-distribution scores (higher score = more likely OOD). The detection
# metrics (ood_detection, its bootstrap interval ood_detection_ci, ood_auroc,
# ood_aupr, ood_fpr_at_tpr) are in evaluation/ood.py, imported above.


def max_probability_score(probs: Any) -> np.ndarray:
    """OOD score ``1 - max_c p_c`` per example (shape ``(N,)``): higher = less confident."""
    return 1.0 - check_probs(probs).max(axis=1)


#: Names of the scores :func:`ood_scores` returns.
OOD_SCORES: tuple[str, ...] = ("max_prob", "entropy", "mutual_information")


def ood_scores(sample_probs: Any) -> dict[str, np.ndarray]:
    """The three OOD scores of every example from ``(S, N, C)`` per-sample probabilities.

    ``"max_prob"`` is ``1 - max_c pbar_c`` and ``"entropy"`` is ``H[pbar]``,
    both of the averaged predictive ``pbar = (1/S) sum_s p_s``;
    ``"mutual_information"`` is the epistemic part (all zeros when ``S = 1``).
    Each is ``(N,)``, higher meaning more likely OOD.
    """
    sp = check_sample_probs(sample_probs)
    mean = sp.mean(axis=0)
    parts = uncertainty_decomposition(sp)
    return {
        "max_prob": 1.0 - mean.max(axis=1),
        "entropy": parts.total,
        "mutual_information": parts.epistemic,
    }
