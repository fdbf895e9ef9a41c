"""Selective prediction: the risk-coverage curve, its area (AURC) and accuracy at a coverage.

A selective classifier keeps the examples it is most confident about: higher
``confidence`` is kept first (the top-label probability unless one is given).
Tied confidences are kept or dropped together, or averaged over every order of
the tied examples, so no result depends on the order of the input. Formulas are
in ``docs/metrics.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from scalabl_pyro.errors import ScalaBLError
from scalabl_pyro.evaluation.validation import check_pair, check_scores


@dataclass(frozen=True)
class RiskCoverage:
    """The risk-coverage curve of a selective classifier, one point per distinct confidence.

    Keeping the examples with confidence ``>= threshold[k]`` covers
    ``coverage[k]`` of the data with error rate ``risk[k]``. Points run from the
    highest threshold (lowest coverage) to coverage 1; arrays share one length.
    """

    coverage: np.ndarray
    risk: np.ndarray
    threshold: np.ndarray

    @property
    def accuracy(self) -> np.ndarray:
        """``1 - risk`` at each point (selective accuracy)."""
        return 1.0 - self.risk


def _selective_inputs(
    probs: Any, labels: Any, confidence: Any | None
) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(confidence, error)`` sorted by confidence, highest first (ties by input order)."""
    p, y = check_pair(probs, labels)
    if confidence is None:
        conf = p.max(axis=1)
    else:
        conf = check_scores(confidence, name="confidence")
        if conf.shape[0] != p.shape[0]:
            raise ScalaBLError(
                f"confidence has {conf.shape[0]} entries but probs has {p.shape[0]} rows; "
                "pass one confidence per example"
            )
    error = (np.argmax(p, axis=1) != y).astype(np.float64)
    order = np.argsort(-conf, kind="stable")
    return conf[order], error[order]


def _expected_errors(conf: np.ndarray, error: np.ndarray) -> np.ndarray:
    """Expected cumulative error count among the ``k`` most confident, ``k = 1..N``.

    Within a run of tied confidences the count is interpolated linearly: the
    mean over every order of the tied examples, so the result does not depend
    on how the input happened to be ordered.
    """
    n = conf.shape[0]
    cum = np.cumsum(error)
    last = np.flatnonzero(np.r_[np.diff(conf) != 0, True])  # last index of each tie run
    first = np.r_[0, last[:-1] + 1]
    before = np.r_[0.0, cum[last[:-1]]]  # errors before each run
    run_len = last - first + 1
    run_err = cum[last] - before
    run_of = np.repeat(np.arange(last.shape[0]), run_len)
    pos = np.arange(n) - first[run_of] + 1  # 1-based position inside its run
    return before[run_of] + pos * run_err[run_of] / run_len[run_of]


def risk_coverage_curve(probs: Any, labels: Any, *, confidence: Any | None = None) -> RiskCoverage:
    """Error rate of the kept examples against the fraction kept, thresholding confidence.

    Confidence is the top-label probability unless ``confidence`` (``(N,)``,
    higher = keep first, e.g. ``-mutual_information``) is given; risk is the
    0-1 error of the argmax prediction. Tied confidences are kept or dropped
    together, so there is one point per distinct confidence and the curve
    does not depend on the order of the examples.
    """
    conf, error = _selective_inputs(probs, labels, confidence)
    n = conf.shape[0]
    last = np.flatnonzero(np.r_[np.diff(conf) != 0, True])
    kept = last + 1
    return RiskCoverage(coverage=kept / n, risk=np.cumsum(error)[last] / kept, threshold=conf[last])


def aurc(probs: Any, labels: Any, *, confidence: Any | None = None) -> float:
    """Area under the risk-coverage curve, a fraction in [0, 1] (lower is better).

    ``AURC = (1/N) sum_{k=1..N} E_k / k``, with ``E_k`` the errors among the
    ``k`` most confident examples (Geifman et al., 2019). Inside a run of tied
    confidences ``E_k`` is interpolated linearly, the average over every
    order of the tied examples. Confidence as in :func:`risk_coverage_curve`.
    """
    conf, error = _selective_inputs(probs, labels, confidence)
    k = np.arange(1, conf.shape[0] + 1)
    return float(np.mean(_expected_errors(conf, error) / k))


def accuracy_at_coverage(
    probs: Any, labels: Any, coverage: float, *, confidence: Any | None = None
) -> float:
    """Accuracy on the ``ceil(coverage * N)`` most confident examples (at least one).

    ``coverage`` is a fraction in (0, 1]; 1 gives plain accuracy. Ties at the
    cut are averaged over every order of the tied examples, as in :func:`aurc`.
    """
    if (
        isinstance(coverage, bool)
        or not isinstance(coverage, (int, float, np.floating))
        or not 0 < coverage <= 1
    ):
        raise ScalaBLError(f"coverage is {coverage!r}; pass a fraction in (0, 1] such as 0.8")
    conf, error = _selective_inputs(probs, labels, confidence)
    n = conf.shape[0]
    k = max(
        1, int(np.ceil(round(float(coverage) * n, 9)))
    )  # round: 0.07 * 100 is 7.000000000000001
    return float(1.0 - _expected_errors(conf, error)[k - 1] / k)


__all__ = ["RiskCoverage", "accuracy_at_coverage", "aurc", "risk_coverage_curve"]
