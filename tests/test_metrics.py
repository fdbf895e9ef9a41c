"""Metrics against hand-computed answers, edge cases and input validation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from scalabl_pyro.errors import ScalaBLError
from scalabl_pyro.metrics import (
    NLL_EPS,
    ReliabilityBins,
    accuracy,
    brier_score,
    classification_metrics,
    expected_calibration_error,
    mutual_information,
    negative_log_likelihood,
    predictive_entropy,
    reliability_bins,
)

# Six examples, three classes (the third is zero padding), n_bins = 5 with
# edges 0, .2, .4, .6, .8, 1. Columns: probs, label, confidence, correct, bin.
PROBS = np.array(
    [
        [0.90, 0.10, 0.0],  # y=0  conf .90  correct  bin 4
        [0.70, 0.30, 0.0],  # y=1  conf .70  wrong    bin 3
        [0.60, 0.40, 0.0],  # y=0  conf .60  correct  bin 2 (.6 is the top edge of (.4, .6])
        [1.00, 0.00, 0.0],  # y=0  conf 1.0  correct  bin 4 (1.0 lands in the last bin)
        [0.55, 0.45, 0.0],  # y=1  conf .55  wrong    bin 2
        [0.80, 0.20, 0.0],  # y=0  conf .80  correct  bin 3 (.8 is the top edge of (.6, .8])
    ]
)
LABELS = np.array([0, 1, 0, 0, 1, 0])


def test_accuracy_hand_computed() -> None:
    assert accuracy(PROBS, LABELS) == pytest.approx(4 / 6)


def test_reliability_bins_hand_computed() -> None:
    bins = reliability_bins(PROBS, LABELS, n_bins=5)
    assert isinstance(bins, ReliabilityBins)
    np.testing.assert_allclose(bins.edges, [0, 0.2, 0.4, 0.6, 0.8, 1.0])
    np.testing.assert_array_equal(bins.counts, [0, 0, 2, 2, 2])
    assert bins.n_bins == 5 and bins.total == 6
    np.testing.assert_allclose(bins.confidence[2:], [0.575, 0.75, 0.95])
    np.testing.assert_allclose(bins.accuracy[2:], [0.5, 0.5, 1.0])
    assert np.isnan(bins.confidence[:2]).all() and np.isnan(bins.accuracy[:2]).all()
    np.testing.assert_allclose(bins.gap[2:], [0.075, 0.25, -0.05])


def test_ece_hand_computed() -> None:
    # (2/6) * (|.575 - .5| + |.75 - .5| + |.95 - 1|) = (1/3) * .375
    assert expected_calibration_error(PROBS, LABELS, n_bins=5) == pytest.approx(0.125)


def test_ece_default_15_bins_hand_computed() -> None:
    # 15 bins of width 1/15: .55 and .6 -> (8/15, 9/15], .7 -> (10/15, 11/15],
    # .8 -> (11/15, 12/15], .9 -> (13/15, 14/15], 1.0 -> (14/15, 1]. Gaps:
    #   {.55 wrong, .6 right}: |.575 - .5| = .075 (x2), {.7 wrong}: .7, {.8 right}: .2,
    #   {.9 right}: .1, {1.0 right}: 0
    expected = (2 * 0.075 + 0.7 + 0.2 + 0.1 + 0.0) / 6
    assert expected_calibration_error(PROBS, LABELS) == pytest.approx(expected)


def test_nll_hand_computed() -> None:
    p_true = [0.9, 0.3, 0.6, 1.0, 0.45, 0.8]
    expected = -sum(math.log(p) for p in p_true) / 6
    assert negative_log_likelihood(PROBS, LABELS) == pytest.approx(expected)


def test_brier_hand_computed() -> None:
    per_example = [0.02, 0.98, 0.32, 0.0, 0.605, 0.08]
    assert brier_score(PROBS, LABELS) == pytest.approx(sum(per_example) / 6)


def test_classification_metrics_matches_individual_functions() -> None:
    m = classification_metrics(PROBS, LABELS, n_bins=5)
    assert set(m) == {"acc", "ece", "nll", "brier", "n"}
    assert m["acc"] == pytest.approx(4 / 6)
    assert m["ece"] == pytest.approx(0.125)
    assert m["nll"] == pytest.approx(negative_log_likelihood(PROBS, LABELS))
    assert m["brier"] == pytest.approx(brier_score(PROBS, LABELS))
    assert m["n"] == 6 and isinstance(m["n"], int)


def test_perfect_predictions() -> None:
    probs = np.eye(4)[[0, 3, 1, 2, 2]]
    labels = np.array([0, 3, 1, 2, 2])
    m = classification_metrics(probs, labels)
    assert m["acc"] == 1.0
    assert m["ece"] == 0.0
    assert m["nll"] == pytest.approx(0.0, abs=1e-12)
    assert m["brier"] == 0.0


def test_confidently_wrong_is_clamped_and_brier_max() -> None:
    probs = np.array([[0.0, 1.0], [1.0, 0.0]])
    labels = np.array([0, 1])
    assert negative_log_likelihood(probs, labels) == pytest.approx(-math.log(NLL_EPS))
    assert math.isfinite(negative_log_likelihood(probs, labels))
    assert brier_score(probs, labels) == pytest.approx(2.0)
    assert expected_calibration_error(probs, labels) == pytest.approx(1.0)


def test_uniform_predictions() -> None:
    c = 4
    probs = np.full((8, c), 1 / c)
    labels = np.array([0, 1, 2, 3, 0, 1, 2, 3])
    # argmax picks class 0 on ties: correct for 2 of 8.
    assert accuracy(probs, labels) == pytest.approx(0.25)
    # all confidences are .25 in one bin with accuracy .25: perfectly calibrated.
    assert expected_calibration_error(probs, labels) == pytest.approx(0.0, abs=1e-12)
    assert negative_log_likelihood(probs, labels) == pytest.approx(math.log(c))
    # (1 - 1/c)^2 + (c - 1) / c^2 = 1 - 1/c
    assert brier_score(probs, labels) == pytest.approx(1 - 1 / c)
    np.testing.assert_allclose(predictive_entropy(probs), np.full(8, math.log(c)))


@pytest.mark.parametrize("n_bins", [5, 10, 15])
def test_confidence_on_an_edge_goes_to_the_lower_bin(n_bins: int) -> None:
    # A row whose top probability is exactly i / n_bins lands in bin i - 1.
    rows = []
    for i in range(1, n_bins + 1):
        c = i / n_bins
        rest = (1 - c) / n_bins  # n_bins other classes, each below c
        rows.append([c] + [rest] * n_bins)
    probs = np.array(rows)
    labels = np.zeros(n_bins, dtype=int)
    bins = reliability_bins(probs, labels, n_bins=n_bins)
    np.testing.assert_array_equal(bins.counts, np.ones(n_bins))


def test_entropy_ignores_padded_classes() -> None:
    # Padded classes (p = 0) do not disturb entropy: H([.5, .5, 0]) = log 2.
    np.testing.assert_allclose(predictive_entropy([[0.5, 0.5, 0.0]]), [math.log(2)])
    np.testing.assert_allclose(predictive_entropy([[1.0, 0.0, 0.0]]), [0.0])


def test_mutual_information_zero_when_samples_agree() -> None:
    one = np.array([[0.7, 0.2, 0.1], [0.5, 0.5, 0.0]])
    samples = np.stack([one, one, one])
    np.testing.assert_allclose(mutual_information(samples), [0.0, 0.0], atol=1e-15)


def test_mutual_information_two_sample_closed_form() -> None:
    # Sample 1 says [1, 0], sample 2 says [0, 1]: H(mean) = log 2, mean H = 0.
    # Second example: [.8, .2] vs [.2, .8]: H(mean) = log 2, mean H = H(.8, .2).
    samples = np.array(
        [
            [[1.0, 0.0], [0.8, 0.2]],
            [[0.0, 1.0], [0.2, 0.8]],
        ]
    )
    h82 = -(0.8 * math.log(0.8) + 0.2 * math.log(0.2))
    np.testing.assert_allclose(mutual_information(samples), [math.log(2), math.log(2) - h82])


def test_mutual_information_single_sample_is_zero() -> None:
    np.testing.assert_allclose(mutual_information(PROBS[None]), np.zeros(6), atol=1e-15)


def test_torch_and_numpy_inputs_agree() -> None:
    t_probs = torch.tensor(PROBS, dtype=torch.float64)
    t_labels = torch.tensor(LABELS)
    assert classification_metrics(t_probs, t_labels) == classification_metrics(PROBS, LABELS)
    bins_t = reliability_bins(t_probs, t_labels, n_bins=5)
    bins_n = reliability_bins(PROBS, LABELS, n_bins=5)
    np.testing.assert_array_equal(bins_t.counts, bins_n.counts)
    np.testing.assert_array_equal(predictive_entropy(t_probs), predictive_entropy(PROBS))
    samples = np.stack([PROBS, PROBS[::-1]])
    np.testing.assert_array_equal(
        mutual_information(torch.tensor(samples)), mutual_information(samples)
    )


def test_low_precision_tensors_are_accepted() -> None:
    for dtype in (torch.float32, torch.bfloat16):
        probs = torch.tensor([[0.75, 0.25], [0.25, 0.75]], dtype=dtype)
        labels = torch.tensor([0, 0])
        assert accuracy(probs, labels) == 0.5
        assert brier_score(probs, labels) == pytest.approx((0.125 + 1.125) / 2)


def test_lists_and_integral_float_labels_accepted() -> None:
    assert accuracy(PROBS.tolist(), LABELS.astype(float)) == pytest.approx(4 / 6)


@pytest.mark.parametrize(
    ("probs", "labels", "match"),
    [
        (np.array([0.5, 0.5]), np.array([0]), "shape"),  # probs not 2-D
        (PROBS, LABELS[:5], "6 rows"),  # N mismatch
        (PROBS, LABELS[:, None], "1-D"),  # labels not 1-D
        (PROBS, np.array([0, 1, 0, 0, 1, 3]), "3 classes"),  # label >= C
        (PROBS, np.array([0, 1, 0, 0, 1, -1]), "3 classes"),  # negative label
        (PROBS, LABELS + 0.5, "integer"),  # non-integral labels
        (np.zeros((0, 3)), np.zeros(0, dtype=int), "empty"),  # no examples
        (np.zeros((2, 0)), np.zeros(2, dtype=int), "empty"),  # no classes
        (np.array([[2.0, -1.0]]), np.array([0]), r"\[0, 1\]"),  # logits, not probs
        (np.array([[0.5, 0.2]]), np.array([0]), "sums to"),  # unnormalized
        (np.array([[np.nan, 1.0]]), np.array([0]), "NaN"),
    ],
)
def test_invalid_inputs_raise(probs: np.ndarray, labels: np.ndarray, match: str) -> None:
    for fn in (
        accuracy,
        expected_calibration_error,
        negative_log_likelihood,
        brier_score,
        reliability_bins,
        classification_metrics,
    ):
        with pytest.raises(ScalaBLError, match=match):
            fn(probs, labels)


def test_errors_are_value_errors_with_one_line_messages() -> None:
    with pytest.raises(ValueError) as info:
        accuracy(PROBS, LABELS[:3])
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("n_bins", [0, -3, 2.5, True])
def test_bad_n_bins(n_bins: object) -> None:
    with pytest.raises(ScalaBLError, match="n_bins"):
        expected_calibration_error(PROBS, LABELS, n_bins=n_bins)  # type: ignore[arg-type]


def test_entropy_and_mi_validate_shapes() -> None:
    with pytest.raises(ScalaBLError, match="shape"):
        predictive_entropy(np.array([0.5, 0.5]))
    with pytest.raises(ScalaBLError, match="empty"):
        predictive_entropy(np.zeros((0, 2)))
    with pytest.raises(ScalaBLError, match=r"\(S, N, C\)"):
        mutual_information(PROBS)
    with pytest.raises(ScalaBLError, match="no samples"):
        mutual_information(np.zeros((0, 2, 2)))
    with pytest.raises(ScalaBLError, match="empty"):
        mutual_information(np.zeros((2, 0, 2)))
    with pytest.raises(ScalaBLError, match="sums to"):
        mutual_information(np.full((2, 2, 2), 0.2))
