"""Metrics against hand-computed answers, edge cases and input validation."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from scalabl_pyro.errors import ScalaBLError
from scalabl_pyro.evaluation.metrics import (
    NLL_EPS,
    OODMetrics,
    ReliabilityBins,
    RiskCoverage,
    UncertaintyDecomposition,
    accuracy,
    accuracy_at_coverage,
    aurc,
    brier_score,
    classification_metrics,
    classwise_calibration_error,
    expected_calibration_error,
    max_probability_score,
    mutual_information,
    negative_log_likelihood,
    ood_aupr,
    ood_auroc,
    ood_detection,
    ood_fpr_at_tpr,
    ood_scores,
    predictive_entropy,
    reliability_bins,
    risk_coverage_curve,
    uncertainty_decomposition,
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


# --------------------------------------------------------------------------- #
# shared random data


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def _random_predictions(seed: int, n: int = 500, c: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Overconfident-ish predictions whose labels follow a flatter softmax (bins disagree)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=2.5, size=(n, c))
    labels = np.array([rng.choice(c, p=row) for row in _softmax(logits / 2.0)])
    return _softmax(logits), labels


# --------------------------------------------------------------------------- #
# equal-mass ECE


def test_equal_mass_ece_hand_computed() -> None:
    # Sorted confidences (correct?): .55 (no), .6 (yes), .7 (no), .8 (yes), .9 (yes), 1.0 (yes).
    # Two bins of three: {.55, .6, .7}: conf .61667, acc 1/3; {.8, .9, 1.0}: conf .9, acc 1.
    bins = reliability_bins(PROBS, LABELS, n_bins=2, binning="equal_mass")
    np.testing.assert_allclose(bins.edges, [0.0, 0.7, 1.0])
    np.testing.assert_array_equal(bins.counts, [3, 3])
    np.testing.assert_allclose(bins.confidence, [1.85 / 3, 0.9])
    np.testing.assert_allclose(bins.accuracy, [1 / 3, 1.0])
    expected = 0.5 * (1.85 / 3 - 1 / 3) + 0.5 * 0.1
    assert expected_calibration_error(PROBS, LABELS, 2, binning="equal_mass") == pytest.approx(
        expected
    )
    # Three bins of two: {.55, .6}, {.7, .8}, {.9, 1.0}: gaps .075, .25, .05.
    assert expected_calibration_error(PROBS, LABELS, 3, binning="equal_mass") == pytest.approx(
        (0.075 + 0.25 + 0.05) / 3
    )


def test_equal_mass_bin_sizes() -> None:
    # Distinct confidences: bin b holds ranks floor(bN/B) .. floor((b+1)N/B) - 1.
    probs, labels = _random_predictions(0, n=10)
    bins = reliability_bins(probs, labels, n_bins=3, binning="equal_mass")
    np.testing.assert_array_equal(bins.counts, [3, 3, 4])
    bins = reliability_bins(probs, labels, n_bins=10, binning="equal_mass")
    np.testing.assert_array_equal(bins.counts, np.ones(10))


def test_equal_mass_fewer_examples_than_bins() -> None:
    # N = 2, B = 5: ranks floor(2b/5) = 0, 0, 1, 1 -> two non-empty bins of one example each,
    # so ECE is the mean per-example |conf - correct|.
    probs = np.array([[0.9, 0.1], [0.3, 0.7]])
    labels = np.array([1, 1])
    bins = reliability_bins(probs, labels, n_bins=5, binning="equal_mass")
    assert bins.counts.sum() == 2 and (bins.counts <= 1).all()
    ece = expected_calibration_error(probs, labels, n_bins=5, binning="equal_mass")
    assert ece == pytest.approx((0.9 + 0.3) / 2)


def test_equal_mass_ties_share_a_bin_and_order_does_not_matter() -> None:
    # Four examples at confidence .8 would be split 2 + 2 by rank; they stay together.
    probs = np.array([[0.8, 0.2]] * 4 + [[0.6, 0.4]] * 2)
    labels = np.array([0, 1, 0, 1, 0, 0])
    bins = reliability_bins(probs, labels, n_bins=3, binning="equal_mass")
    assert sorted(bins.counts.tolist()) == [0, 2, 4]
    rng = np.random.default_rng(1)
    ece = expected_calibration_error(probs, labels, 3, binning="equal_mass")
    # {.6, .6} both right: gap .4; {.8 x 4} half right: gap .3.
    assert ece == pytest.approx((2 * 0.4 + 4 * 0.3) / 6)
    for _ in range(5):
        perm = rng.permutation(6)
        again = expected_calibration_error(probs[perm], labels[perm], 3, binning="equal_mass")
        assert again == pytest.approx(ece, abs=1e-15)


@pytest.mark.parametrize("binning", ["equal_width", "equal_mass"])
def test_one_bin_is_the_global_gap(binning: str) -> None:
    probs, labels = _random_predictions(2)
    gap = abs(probs.max(axis=1).mean() - accuracy(probs, labels))
    assert expected_calibration_error(probs, labels, 1, binning=binning) == pytest.approx(gap)


def test_equal_mass_differs_from_equal_width_on_mixed_gaps() -> None:
    probs, labels = _random_predictions(3)
    width = expected_calibration_error(probs, labels)
    mass = expected_calibration_error(probs, labels, binning="equal_mass")
    assert width != pytest.approx(mass)  # the test data has gaps of both signs


def test_bad_binning() -> None:
    with pytest.raises(ScalaBLError, match="binning.*equal_mass"):
        expected_calibration_error(PROBS, LABELS, binning="quantile")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- #
# torchmetrics' top-label calibration error


@pytest.mark.parametrize("n_bins", [5, 10, 15])
def test_ece_equals_torchmetrics(n_bins: int) -> None:
    tm = pytest.importorskip("torchmetrics.functional.classification")
    for seed in range(3):
        probs, labels = _random_predictions(seed, n=400, c=5)
        ours = expected_calibration_error(probs, labels, n_bins=n_bins)
        theirs = tm.multiclass_calibration_error(
            torch.tensor(probs), torch.tensor(labels), num_classes=5, n_bins=n_bins, norm="l1"
        ).item()
        # torchmetrics casts confidences to float32; no confidence lies on an edge here.
        assert ours == pytest.approx(theirs, abs=1e-6)


def test_default_ece_equals_torchmetrics_module() -> None:
    tmc = pytest.importorskip("torchmetrics.classification")
    probs, labels = _random_predictions(11, n=600, c=3)
    metric = tmc.MulticlassCalibrationError(num_classes=3, n_bins=15, norm="l1")
    metric.update(torch.tensor(probs[:300]), torch.tensor(labels[:300]))
    metric.update(torch.tensor(probs[300:]), torch.tensor(labels[300:]))
    assert expected_calibration_error(probs, labels) == pytest.approx(
        metric.compute().item(), abs=1e-6
    )


def test_torchmetrics_binning_differs_only_on_edges() -> None:
    """Documented difference: torchmetrics bins are [lo, hi) plus a bin for exactly 1.0.

    Ours are (lo, hi] with 1.0 in the last bin. Only confidences exactly on an
    edge can land differently; these two cases show it.
    """
    tm = pytest.importorskip("torchmetrics.functional.classification")

    def theirs(probs: np.ndarray, labels: np.ndarray, n_bins: int) -> float:
        return tm.multiclass_calibration_error(
            torch.tensor(probs), torch.tensor(labels), num_classes=2, n_bins=n_bins, norm="l1"
        ).item()

    # Confidence .6 on the edge between (.4, .6] and (.6, .8] (5 bins).
    probs = np.array([[0.6, 0.4], [0.7, 0.3]])
    labels = np.array([0, 1])  # .6 right, .7 wrong
    assert expected_calibration_error(probs, labels, 5) == pytest.approx((0.4 + 0.7) / 2)
    assert theirs(probs, labels, 5) == pytest.approx(abs(0.65 - 0.5), abs=1e-6)  # one bin
    # Confidence 1.0: our last bin (14/15, 1] also holds .95; torchmetrics gives 1.0 its own.
    probs = np.array([[1.0, 0.0], [0.95, 0.05]])
    labels = np.array([1, 0])  # 1.0 wrong, .95 right
    assert expected_calibration_error(probs, labels) == pytest.approx(abs(0.975 - 0.5))
    assert theirs(probs, labels, 15) == pytest.approx((1.0 + 0.05) / 2, abs=1e-6)


# --------------------------------------------------------------------------- #
# classwise ECE


CW_PROBS = np.array(
    [
        [0.7, 0.2, 0.1],  # y=0
        [0.2, 0.5, 0.3],  # y=2
        [0.1, 0.1, 0.8],  # y=2
        [0.4, 0.4, 0.2],  # y=1
    ]
)
CW_LABELS = np.array([0, 2, 2, 1])


def test_classwise_ece_hand_computed() -> None:
    # Two bins, (0, .5] and (.5, 1]; per class sum_b |sum p - hits| / N:
    #   class 0: (0, .5] {.2, .1, .4} vs 0 hits -> .7; (.5, 1] {.7} vs 1 -> .3  => 1.0 / 4 = .25
    #   class 1: (0, .5] {.2, .5, .1, .4} vs 1 hit -> .2                        =>  .2 / 4 = .05
    #   class 2: (0, .5] {.1, .3, .2} vs 1 -> .4; (.5, 1] {.8} vs 1 -> .2      =>  .6 / 4 = .15
    assert classwise_calibration_error(CW_PROBS, CW_LABELS, n_bins=2) == pytest.approx(0.15)


def test_classwise_ece_extremes() -> None:
    labels = np.array([0, 2, 1, 1])
    assert classwise_calibration_error(np.eye(3)[labels], labels) == 0.0
    # Uniform predictions with balanced labels: each class p = 1/3, frequency 1/3.
    labels = np.array([0, 1, 2, 0, 1, 2])
    assert classwise_calibration_error(np.full((6, 3), 1 / 3), labels) == pytest.approx(0.0)
    # Confidently wrong, two classes: every class is off by 1 on every example.
    assert classwise_calibration_error(np.array([[1.0, 0.0]]), np.array([1])) == 1.0


def test_classwise_ece_matches_sklearn_calibration_curve() -> None:
    calibration = pytest.importorskip("sklearn.calibration")
    probs, labels = _random_predictions(4, n=300, c=4)
    n_bins = 10
    per_class = []
    for k in range(4):
        p_k, hit = probs[:, k], (labels == k).astype(float)
        prob_true, prob_pred = calibration.calibration_curve(hit, p_k, n_bins=n_bins)
        # Same (lo, hi] rule as scikit-learn's uniform strategy, for the counts it does not return.
        counts = np.bincount(
            np.searchsorted(np.linspace(0, 1, n_bins + 1)[1:-1], p_k), minlength=n_bins
        )
        weights = counts[counts > 0] / len(p_k)
        per_class.append(np.sum(weights * np.abs(prob_pred - prob_true)))
    expected = float(np.mean(per_class))
    assert classwise_calibration_error(probs, labels, n_bins=n_bins) == pytest.approx(expected)


# --------------------------------------------------------------------------- #
# uncertainty decomposition


def test_uncertainty_decomposition_closed_form() -> None:
    samples = np.array(
        [
            [[1.0, 0.0], [0.8, 0.2]],
            [[0.0, 1.0], [0.2, 0.8]],
        ]
    )
    h82 = -(0.8 * math.log(0.8) + 0.2 * math.log(0.2))
    parts = uncertainty_decomposition(samples)
    assert isinstance(parts, UncertaintyDecomposition)
    np.testing.assert_allclose(parts.total, [math.log(2), math.log(2)])
    np.testing.assert_allclose(parts.aleatoric, [0.0, h82])
    np.testing.assert_allclose(parts.epistemic, [math.log(2), math.log(2) - h82])
    means = parts.mean()
    assert means == pytest.approx(
        {"total": math.log(2), "aleatoric": h82 / 2, "epistemic": math.log(2) - h82 / 2}
    )


def test_uncertainty_decomposition_identity_on_random_samples() -> None:
    rng = np.random.default_rng(5)
    samples = rng.dirichlet(np.full(5, 0.7), size=(8, 50))  # (S, N, C)
    parts = uncertainty_decomposition(samples)
    np.testing.assert_allclose(parts.total, parts.aleatoric + parts.epistemic, atol=1e-12)
    np.testing.assert_allclose(parts.total, predictive_entropy(samples.mean(axis=0)))
    np.testing.assert_array_equal(parts.epistemic, mutual_information(samples))
    assert (parts.epistemic > 0).all() and (parts.aleatoric > 0).all()
    assert (parts.epistemic <= parts.total).all()


def test_uncertainty_decomposition_single_sample_is_all_aleatoric() -> None:
    parts = uncertainty_decomposition(torch.tensor(PROBS[None]))
    np.testing.assert_allclose(parts.aleatoric, predictive_entropy(PROBS))
    np.testing.assert_allclose(parts.epistemic, np.zeros(6), atol=1e-15)


# --------------------------------------------------------------------------- #
# OOD detection

S_IN = np.array([1.0, 2.0, 3.0, 4.0])
S_OUT = np.array([2.0, 5.0, 6.0])


def test_ood_hand_computed() -> None:
    # AUROC: pairs (out > in) + ties / 2: out 2 -> 1 + .5, out 5 -> 4, out 6 -> 4: 9.5 / 12.
    assert ood_auroc(S_IN, S_OUT) == pytest.approx(9.5 / 12)
    # Thresholds 6, 5, 4, 3, 2, 1 -> (tp, fp) (1,0) (2,0) (2,1) (2,2) (3,3) (3,4);
    # AP = 1/3 * 1 + 1/3 * 1 + 1/3 * (3 / 6).
    assert ood_aupr(S_IN, S_OUT) == pytest.approx(1 / 3 + 1 / 3 + 1 / 6)
    # 95 % TPR needs all three OOD flagged: threshold 2 flags in 2, 3, 4 -> FPR 3/4.
    assert ood_fpr_at_tpr(S_IN, S_OUT) == pytest.approx(0.75)
    # 60 % TPR: threshold 5 flags two OOD and no in-distribution example.
    assert ood_fpr_at_tpr(S_IN, S_OUT, tpr_level=0.6) == 0.0
    m = ood_detection(S_IN, S_OUT)
    assert isinstance(m, OODMetrics)
    assert m.to_dict() == pytest.approx(
        {
            "auroc": 9.5 / 12,
            "aupr": 5 / 6,
            "fpr_at_tpr": 0.75,
            "tpr_level": 0.95,
            "n_in": 4,
            "n_out": 3,
        }
    )


def test_ood_extremes_and_sign() -> None:
    m = ood_detection([0.1, 0.2], [0.5, 0.9, 0.7])
    assert (m.auroc, m.aupr, m.fpr_at_tpr) == (1.0, 1.0, 0.0)
    flipped = ood_detection([0.5, 0.9, 0.7], [0.1, 0.2])  # the wrong sign
    assert flipped.auroc == 0.0 and flipped.fpr_at_tpr == 1.0
    constant = ood_detection(np.zeros(4), np.zeros(6))
    assert constant.auroc == 0.5
    assert constant.aupr == pytest.approx(6 / 10)  # chance level
    assert constant.fpr_at_tpr == 1.0
    rng = np.random.default_rng(6)
    a, b = rng.normal(size=50), rng.normal(1.0, size=40)
    assert ood_auroc(a, b) == pytest.approx(1 - ood_auroc(-a, -b))


@pytest.mark.parametrize("ties", [False, True])
def test_ood_matches_sklearn(ties: bool) -> None:
    skm = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(7)
    for _ in range(5):
        s_in, s_out = rng.normal(size=300), rng.normal(0.8, size=120)
        if ties:
            s_in, s_out = np.round(s_in, 1), np.round(s_out, 1)
        y = np.r_[np.zeros(300), np.ones(120)]
        s = np.r_[s_in, s_out]
        m = ood_detection(s_in, s_out)
        assert m.auroc == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
        assert m.aupr == pytest.approx(skm.average_precision_score(y, s), abs=1e-12)
        fpr, tpr, _ = skm.roc_curve(y, s, drop_intermediate=False)
        assert m.fpr_at_tpr == pytest.approx(fpr[np.searchsorted(tpr, 0.95)], abs=1e-12)


def test_ood_scores_from_samples() -> None:
    samples = np.array(
        [
            [[0.9, 0.1], [1.0, 0.0], [0.5, 0.5]],
            [[0.9, 0.1], [0.0, 1.0], [0.5, 0.5]],
        ]
    )
    scores = ood_scores(samples)
    assert set(scores) == {"max_prob", "entropy", "mutual_information"}
    np.testing.assert_allclose(scores["max_prob"], [0.1, 0.5, 0.5])
    h91 = -(0.9 * math.log(0.9) + 0.1 * math.log(0.1))
    np.testing.assert_allclose(scores["entropy"], [h91, math.log(2), math.log(2)])
    np.testing.assert_allclose(scores["mutual_information"], [0.0, math.log(2), 0.0], atol=1e-15)
    np.testing.assert_allclose(max_probability_score(samples.mean(axis=0)), scores["max_prob"])


def test_ood_scores_rank_flat_predictions_as_ood() -> None:
    rng = np.random.default_rng(8)
    peaked = _softmax(rng.normal(scale=4.0, size=(6, 40, 4)))  # (S, N, C), confident
    flat = _softmax(rng.normal(scale=0.3, size=(6, 40, 4)))
    s_in, s_out = ood_scores(peaked), ood_scores(flat)
    for name in ("max_prob", "entropy"):
        assert ood_auroc(s_in[name], s_out[name]) > 0.95


@pytest.mark.parametrize(
    ("scores_in", "scores_out", "match"),
    [
        (np.zeros(0), np.ones(3), "scores_in is empty"),
        (np.zeros(3), np.ones((3, 1)), "scores_out has shape"),
        (np.zeros(3), np.array([1.0, np.nan]), "scores_out contains NaN"),
        (np.zeros(3), "abc", "scores_out could not be read"),
    ],
)
def test_ood_invalid_inputs(scores_in: object, scores_out: object, match: str) -> None:
    for fn in (ood_auroc, ood_aupr, ood_fpr_at_tpr, ood_detection):
        with pytest.raises(ScalaBLError, match=match):
            fn(scores_in, scores_out)


@pytest.mark.parametrize("level", [0.0, 1.5, -0.1, True, "0.95"])
def test_ood_bad_tpr_level(level: object) -> None:
    with pytest.raises(ScalaBLError, match="tpr_level"):
        ood_fpr_at_tpr(S_IN, S_OUT, tpr_level=level)  # type: ignore[arg-type]


def test_tpr_level_one_requires_every_ood_example() -> None:
    assert ood_fpr_at_tpr(S_IN, S_OUT, tpr_level=1.0) == pytest.approx(0.75)


# --------------------------------------------------------------------------- #
# selective prediction


def test_risk_coverage_hand_computed() -> None:
    # By confidence: 1.0 right, .9 right, .8 right, .7 wrong, .6 right, .55 wrong.
    curve = risk_coverage_curve(PROBS, LABELS)
    assert isinstance(curve, RiskCoverage)
    np.testing.assert_allclose(curve.coverage, np.arange(1, 7) / 6)
    np.testing.assert_allclose(curve.risk, [0, 0, 0, 1 / 4, 1 / 5, 2 / 6])
    np.testing.assert_allclose(curve.threshold, [1.0, 0.9, 0.8, 0.7, 0.6, 0.55])
    np.testing.assert_allclose(curve.accuracy, 1 - curve.risk)
    assert aurc(PROBS, LABELS) == pytest.approx((1 / 4 + 1 / 5 + 2 / 6) / 6)
    assert accuracy_at_coverage(PROBS, LABELS, 0.5) == 1.0  # 3 kept
    assert accuracy_at_coverage(PROBS, LABELS, 4 / 6) == pytest.approx(0.75)
    assert accuracy_at_coverage(PROBS, LABELS, 0.51) == pytest.approx(0.75)  # ceil(3.06) = 4
    assert accuracy_at_coverage(PROBS, LABELS, 1.0) == pytest.approx(accuracy(PROBS, LABELS))
    assert accuracy_at_coverage(PROBS, LABELS, 0.01) == 1.0  # at least one kept


def test_coverage_rounding() -> None:
    # 0.07 * 100 = 7.000000000000001 in floating point; it must keep 7, not 8.
    probs = np.tile([[0.9, 0.1]], (100, 1)) * 1.0
    probs[:, 0] -= np.arange(100) * 1e-3
    probs[:, 1] = 1 - probs[:, 0]
    labels = np.zeros(100, dtype=int)
    labels[7] = 1  # the 8th most confident is wrong
    assert accuracy_at_coverage(probs, labels, 0.07) == 1.0
    assert accuracy_at_coverage(probs, labels, 0.08) == pytest.approx(7 / 8)


# Confidences .8 .8 | .6 .6 .6 | .55; errors 0 1 | 0 0 1 | 1.
TIE_PROBS = np.array([[0.8, 0.2], [0.8, 0.2], [0.6, 0.4], [0.6, 0.4], [0.6, 0.4], [0.55, 0.45]])
TIE_LABELS = np.array([0, 1, 0, 0, 1, 1])


def test_ties_are_one_point_and_averaged() -> None:
    curve = risk_coverage_curve(TIE_PROBS, TIE_LABELS)
    np.testing.assert_allclose(curve.coverage, [2 / 6, 5 / 6, 1.0])
    np.testing.assert_allclose(curve.risk, [1 / 2, 2 / 5, 3 / 6])
    # Expected errors among the k most confident, ties interpolated: .5 1 | 4/3 5/3 2 | 3.
    expected_errors = np.array([0.5, 1.0, 4 / 3, 5 / 3, 2.0, 3.0])
    assert aurc(TIE_PROBS, TIE_LABELS) == pytest.approx(np.mean(expected_errors / np.arange(1, 7)))
    assert accuracy_at_coverage(TIE_PROBS, TIE_LABELS, 1 / 6) == pytest.approx(0.5)
    assert accuracy_at_coverage(TIE_PROBS, TIE_LABELS, 3 / 6) == pytest.approx(1 - 4 / 9)


def test_tied_aurc_is_the_mean_over_tie_orders() -> None:
    conf = TIE_PROBS.max(axis=1)
    error = (TIE_PROBS.argmax(axis=1) != TIE_LABELS).astype(float)
    groups = [np.flatnonzero(conf == c) for c in sorted(set(conf), reverse=True)]
    values = []
    for orders in itertools.product(*(itertools.permutations(g) for g in groups)):
        order = np.concatenate(orders)
        values.append(np.mean(np.cumsum(error[order]) / np.arange(1, 7)))
    assert aurc(TIE_PROBS, TIE_LABELS) == pytest.approx(np.mean(values))
    rng = np.random.default_rng(9)
    perm = rng.permutation(6)
    assert aurc(TIE_PROBS[perm], TIE_LABELS[perm]) == pytest.approx(aurc(TIE_PROBS, TIE_LABELS))


def test_aurc_extremes() -> None:
    labels = np.array([0, 1, 1, 0])
    assert aurc(np.eye(2)[labels], labels) == 0.0
    # Errors ranked last (oracle order) vs first: the first is lower.
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4]])
    best, worst = np.array([0, 0, 0, 1]), np.array([1, 0, 0, 0])
    assert aurc(probs, best) == pytest.approx((1 / 4) / 4)
    assert aurc(probs, worst) == pytest.approx((1 + 1 / 2 + 1 / 3 + 1 / 4) / 4)


def test_custom_confidence() -> None:
    # Keeping the least confident first reverses the order.
    rev = risk_coverage_curve(PROBS, LABELS, confidence=-PROBS.max(axis=1))
    # .55 wrong, .6 right, .7 wrong, .8 right, .9 right, 1.0 right.
    np.testing.assert_allclose(rev.risk, [1, 1 / 2, 2 / 3, 2 / 4, 2 / 5, 2 / 6])
    assert aurc(PROBS, LABELS, confidence=torch.tensor(PROBS.max(axis=1))) == pytest.approx(
        aurc(PROBS, LABELS)
    )
    with pytest.raises(ScalaBLError, match="confidence has 2 entries"):
        aurc(PROBS, LABELS, confidence=[0.1, 0.2])
    with pytest.raises(ScalaBLError, match="confidence contains NaN"):
        risk_coverage_curve(PROBS, LABELS, confidence=np.full(6, np.nan))


@pytest.mark.parametrize("coverage", [0, 0.0, -0.5, 1.01, True, None])
def test_bad_coverage(coverage: object) -> None:
    with pytest.raises(ScalaBLError, match="coverage"):
        accuracy_at_coverage(PROBS, LABELS, coverage)  # type: ignore[arg-type]


def test_new_metrics_validate_probs_and_labels() -> None:
    for fn in (classwise_calibration_error, aurc, risk_coverage_curve):
        with pytest.raises(ScalaBLError, match="6 rows"):
            fn(PROBS, LABELS[:5])
        with pytest.raises(ScalaBLError, match="sums to"):
            fn(PROBS * 0.5, LABELS)
    with pytest.raises(ScalaBLError, match=r"\(S, N, C\)"):
        uncertainty_decomposition(PROBS)
    with pytest.raises(ScalaBLError, match=r"\(S, N, C\)"):
        ood_scores(PROBS)
    with pytest.raises(ScalaBLError, match="shape"):
        max_probability_score(np.array([0.5, 0.5]))
