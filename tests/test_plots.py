"""Figures: structure (axes, lines, titles), atomic saving, headless use."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from scalabl_pyro.errors import ScalaBLError
from scalabl_pyro.evaluation.metrics import (
    aurc,
    expected_calibration_error,
    ood_auroc,
    risk_coverage_curve,
)
from scalabl_pyro.evaluation.plots import (
    ood_auroc_plot,
    ood_histogram,
    reliability_diagram,
    risk_coverage_plot,
    training_curves,
)
from scalabl_pyro.inference.train import StepRecord, TrainHistory

matplotlib.use("Agg")  # headless, as in CI (the figures never touch pyplot)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _fake_predictions(seed: int, n: int = 200, c: int = 4) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=2.0, size=(n, c))
    probs = np.exp(logits)
    probs /= probs.sum(axis=1, keepdims=True)
    labels = rng.integers(0, c, size=n)
    return probs, labels


def _top_axes(fig: Figure) -> list:
    """The reliability panels (the ones with a title), left to right."""
    return [ax for ax in fig.axes if ax.get_title()]


@pytest.mark.parametrize("k", [1, 3])
def test_panels_per_method_and_saved_png(tmp_path: Path, k: int) -> None:
    results = {f"method{i}": _fake_predictions(i) for i in range(k)}
    out = tmp_path / "reliability.png"
    fig = reliability_diagram(results, out, title="demo")
    assert isinstance(fig, Figure)
    top = _top_axes(fig)
    assert len(top) == k
    assert len(fig.axes) == 2 * k  # one reliability panel and one count histogram each
    for ax, name in zip(top, results, strict=True):
        assert name in ax.get_title()
        assert "ECE" in ax.get_title() and "ACC" in ax.get_title()
    data = out.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reliability.png"]  # no temp left


def test_title_shows_ece_percent() -> None:
    probs = np.array([[0.9, 0.1], [0.9, 0.1]])
    labels = np.array([0, 1])  # conf .9, acc .5 -> ECE 40%
    fig = reliability_diagram({"map": (probs, labels)})
    assert "ECE 40.00%" in _top_axes(fig)[0].get_title()
    assert "ACC 50.0%" in _top_axes(fig)[0].get_title()


def test_shared_y_between_panels() -> None:
    fig = reliability_diagram({"a": _fake_predictions(0), "b": _fake_predictions(1)})
    a, b = _top_axes(fig)
    assert a.get_shared_y_axes().joined(a, b)


def test_no_path_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    reliability_diagram({"a": _fake_predictions(0)})
    assert list(tmp_path.iterdir()) == []


def test_torch_inputs_and_new_folder(tmp_path: Path) -> None:
    probs, labels = _fake_predictions(0)
    out = tmp_path / "sub" / "dir" / "fig.png"
    reliability_diagram({"a": (torch.tensor(probs), torch.tensor(labels))}, str(out))
    assert out.read_bytes().startswith(PNG_MAGIC)


def test_failed_save_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "fig.png"
    out.write_bytes(b"previous")

    def boom(self: Figure, *args: object, **kwargs: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(Figure, "savefig", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        reliability_diagram({"a": _fake_predictions(0)}, out)
    assert out.read_bytes() == b"previous"  # old file untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fig.png"]  # temp removed


def test_overwrite_existing(tmp_path: Path) -> None:
    out = tmp_path / "fig.png"
    out.write_bytes(b"previous")
    reliability_diagram({"a": _fake_predictions(0)}, out)
    assert out.read_bytes().startswith(PNG_MAGIC)


def test_invalid_results() -> None:
    with pytest.raises(ScalaBLError, match="empty"):
        reliability_diagram({})
    with pytest.raises(ScalaBLError, match="pair"):
        reliability_diagram({"a": np.eye(2)})  # type: ignore[dict-item]
    probs, labels = _fake_predictions(0)
    with pytest.raises(ScalaBLError, match=r"results\['bad'\].*labels"):
        reliability_diagram({"good": (probs, labels), "bad": (probs, labels[:-1])})
    with pytest.raises(ScalaBLError, match="n_bins"):
        reliability_diagram({"a": (probs, labels)}, n_bins=0)


def _is_png(path: Path) -> bool:
    data = path.read_bytes()
    return data.startswith(PNG_MAGIC) and len(data) > 1000


def _legend_texts(ax: Axes) -> list[str]:
    legend = ax.get_legend()
    return [t.get_text() for t in legend.get_texts()] if legend else []


# --------------------------------------------------------------------------- #
# reliability: histogram, equal-mass bins, overlay layout


def test_histogram_counts_every_example() -> None:
    probs, labels = _fake_predictions(3, n=150)
    fig = reliability_diagram({"a": (probs, labels)}, n_bins=10)
    hist_ax = [ax for ax in fig.axes if not ax.get_title()][0]
    heights = [patch.get_height() for patch in hist_ax.patches]
    assert len(heights) == 10 and sum(heights) == 150


def test_equal_mass_columns_title() -> None:
    probs, labels = _fake_predictions(4)
    fig = reliability_diagram({"a": (probs, labels)}, binning="equal_mass")
    ece = expected_calibration_error(probs, labels, binning="equal_mass")
    assert f"ECE (eq. mass) {ece * 100:.2f}%" in _top_axes(fig)[0].get_title()


@pytest.mark.parametrize("binning", ["equal_width", "equal_mass"])
def test_overlay_layout(tmp_path: Path, binning: str) -> None:
    results = {f"m{i}": _fake_predictions(i) for i in range(3)}
    out = tmp_path / "overlay.png"
    fig = reliability_diagram(results, out, layout="overlay", binning=binning, title="t")
    assert len(fig.axes) == 2
    top, bottom = fig.axes
    assert len(top.get_lines()) == 1 + 3  # the diagonal and one line per method
    assert len(bottom.get_lines()) == 3
    texts = _legend_texts(top)
    for name, (probs, labels) in results.items():
        ece = expected_calibration_error(probs, labels, binning=binning)
        assert any(name in t and f"{ece * 100:.2f}%" in t for t in texts)
    # The histogram lines are fractions of each method's examples.
    for line in bottom.get_lines():
        assert line.get_ydata().sum() == pytest.approx(1.0)
    assert _is_png(out)


def test_bad_layout() -> None:
    with pytest.raises(ScalaBLError, match="layout"):
        reliability_diagram({"a": _fake_predictions(0)}, layout="grid")
    with pytest.raises(ScalaBLError, match="binning"):
        reliability_diagram({"a": _fake_predictions(0)}, binning="quantile")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- #
# risk-coverage


def test_risk_coverage_plot(tmp_path: Path) -> None:
    results = {f"m{i}": _fake_predictions(i) for i in range(2)}
    probs, labels = results["m0"]
    minus_entropy = np.sum(probs * np.log(probs), axis=1)  # a confidence: higher = keep
    results["m0 by entropy"] = (probs, labels, minus_entropy)
    out = tmp_path / "rc.png"
    fig = risk_coverage_plot(results, out, title="risk")
    assert len(fig.axes) == 1
    ax = fig.axes[0]
    lines = ax.get_lines()
    assert len(lines) == 3
    curve = risk_coverage_curve(probs, labels)
    np.testing.assert_allclose(lines[0].get_xdata(), curve.coverage)
    np.testing.assert_allclose(lines[0].get_ydata(), curve.risk)
    assert lines[0].get_ydata()[-1] == pytest.approx(1 - np.mean(probs.argmax(1) == labels))
    texts = _legend_texts(ax)
    assert texts[0] == f"m0 (AURC {aurc(probs, labels) * 100:.2f}%)"
    assert fig.get_suptitle() == "risk"
    assert _is_png(out)


def test_risk_coverage_plot_invalid() -> None:
    probs, labels = _fake_predictions(0)
    with pytest.raises(ScalaBLError, match="empty"):
        risk_coverage_plot({})
    with pytest.raises(ScalaBLError, match="pair"):
        risk_coverage_plot({"a": (probs,)})
    with pytest.raises(ScalaBLError, match=r"results\['a'\].*confidence"):
        risk_coverage_plot({"a": (probs, labels, np.zeros(3))})


# --------------------------------------------------------------------------- #
# OOD histograms


def test_ood_histogram(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    scores = {
        "mle": (rng.normal(size=200), rng.normal(1.0, size=80)),
        "scalabl": (torch.tensor(rng.gamma(2.0, size=200)), rng.gamma(4.0, size=50)),
    }
    out = tmp_path / "ood.png"
    fig = ood_histogram(scores, out, bins=20, score_name="entropy (nats)")
    assert len(fig.axes) == 2
    for ax, (name, (s_in, s_out)) in zip(fig.axes, scores.items(), strict=True):
        auroc = ood_auroc(s_in, s_out)
        assert name in ax.get_title() and f"AUROC {auroc * 100:.1f}%" in ax.get_title()
        assert ax.get_xlabel() == "entropy (nats)"
        assert len(ax.patches) == 2  # two step-filled histograms
        assert any("OOD" in t for t in _legend_texts(ax))
    assert _is_png(out)


def test_ood_histogram_constant_scores_and_invalid() -> None:
    fig = ood_histogram({"flat": (np.zeros(5), np.zeros(3))})
    assert "AUROC 50.0%" in fig.axes[0].get_title()
    with pytest.raises(ScalaBLError, match="empty"):
        ood_histogram({})
    with pytest.raises(ScalaBLError, match="pair"):
        ood_histogram({"a": np.zeros(3)})  # type: ignore[dict-item]
    with pytest.raises(ScalaBLError, match=r"scores\['a'\].*NaN"):
        ood_histogram({"a": (np.zeros(3), np.array([np.nan]))})
    with pytest.raises(ScalaBLError, match="bins is 0"):
        ood_histogram({"a": (np.zeros(3), np.ones(3))}, bins=0)


def test_ood_auroc_plot_bars_and_intervals(tmp_path: Path) -> None:
    aurocs = {
        "chemistry": {
            "MLE + TS": {"max p": (0.6, 0.5, 0.7), "entropy": (0.62, 0.52, 0.71)},
            "recipe": {
                "max p": (0.58, 0.5, 0.66),
                "entropy": (0.6, 0.5, 0.7),
                "MI": (0.7, 0.6, 0.8),
            },
        },
        "physics": {"MLE + TS": {"max p": (0.55, 0.45, 0.65)}, "recipe": {"MI": (0.65, 0.6, 0.7)}},
    }
    out = tmp_path / "auroc.png"
    fig = ood_auroc_plot(aurocs, out)
    assert _is_png(out)
    ax0, ax1 = fig.axes
    assert ax0.get_title() == "chemistry" and ax1.get_title() == "physics"
    assert [t.get_text() for t in ax0.get_xticklabels()] == ["MLE + TS", "recipe"]
    heights = sorted(round(b.get_height(), 3) for b in ax0.patches)
    assert heights == [0.58, 0.6, 0.6, 0.62, 0.7]  # one bar per (method, score) given
    assert len(ax1.patches) == 2
    # each error bar spans exactly [low, high]
    spans = sorted(
        tuple(round(v, 3) for v in sorted(seg[:, 1]))
        for coll in ax1.collections
        for seg in coll.get_segments()
    )
    assert spans == [(0.45, 0.65), (0.6, 0.7)]
    # one colour per score, in first-seen order, in one legend for the whole figure
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["max p", "entropy", "MI"]
    assert ax0.get_ylim() == (0.0, 1.0)


def test_ood_auroc_plot_rejects_bad_input() -> None:
    with pytest.raises(ScalaBLError, match="empty"):
        ood_auroc_plot({})
    with pytest.raises(ScalaBLError, match=r"aurocs\['a'\] is empty"):
        ood_auroc_plot({"a": {}})
    with pytest.raises(ScalaBLError, match=r"aurocs\['a'\]\['m'\] is empty"):
        ood_auroc_plot({"a": {"m": {}}})
    with pytest.raises(ScalaBLError, match="three finite numbers"):
        ood_auroc_plot({"a": {"m": {"MI": (0.5, 0.4)}}})
    with pytest.raises(ScalaBLError, match="three finite numbers"):
        ood_auroc_plot({"a": {"m": {"MI": (0.5, float("nan"), 0.6)}}})
    with pytest.raises(ScalaBLError, match="low <= auroc <= high"):
        ood_auroc_plot({"a": {"m": {"MI": (0.5, 0.6, 0.7)}}})


# --------------------------------------------------------------------------- #
# training curves


def _history(seed: int, steps: int = 40, every: int = 10) -> dict:
    rng = np.random.default_rng(seed)
    recs = [
        {
            "step": t,
            "loss": 100.0,
            "nll": 1.5 * np.exp(-t / 15) + 0.1 * rng.random(),
            "kl": 3.0,
            "kl_weight": 1.0,
            "lr": 1e-4,
        }
        for t in range(1, steps + 1)
    ]
    val = [
        {"step": t, "acc": 0.5 + t / 400, "nll": 1.0 + t / 100, "ece": 0.1, "brier": 0.6, "n": 50}
        for t in range(every, steps + 1, every)
    ]
    return {"steps": recs, "validation": val}


def test_training_curves_panels_and_lines(tmp_path: Path) -> None:
    hist = _history(0)
    obj = TrainHistory([StepRecord(**r) for r in _history(1)["steps"]], [])  # no validation
    out = tmp_path / "train.png"
    fig = training_curves({"mle": hist, "scalabl": obj}, out, title="curves")
    assert len(fig.axes) == 3  # NLL, validation acc, validation ece
    nll_ax, acc_ax, ece_ax = fig.axes
    labels = [line.get_label() for line in nll_ax.get_lines()]
    assert labels == ["mle train", "mle validation", "scalabl train"]
    train_line = nll_ax.get_lines()[0]
    np.testing.assert_array_equal(train_line.get_xdata(), np.arange(1, 41))
    np.testing.assert_allclose(train_line.get_ydata(), [r["nll"] for r in hist["steps"]])
    np.testing.assert_array_equal(nll_ax.get_lines()[1].get_xdata(), [10, 20, 30, 40])
    assert "acc" in acc_ax.get_title() and "ece" in ece_ax.get_title()
    assert len(acc_ax.get_lines()) == 1  # only the run that validated
    np.testing.assert_allclose(acc_ax.get_lines()[0].get_ydata(), [0.525, 0.55, 0.575, 0.6])
    assert _is_png(out)


def test_training_curves_smoothing_and_metric_choice() -> None:
    hist = _history(2)
    fig = training_curves({"a": hist}, smooth=5, val_metrics=("brier", "missing", "nll"))
    assert len(fig.axes) == 2  # NLL + brier; "missing" skipped, "nll" is in the first panel
    raw, smooth = nll_lines = fig.axes[0].get_lines()[:2]
    assert len(nll_lines) == 2
    y = np.array([r["nll"] for r in hist["steps"]])
    np.testing.assert_allclose(raw.get_ydata(), y)
    np.testing.assert_allclose(smooth.get_ydata()[4], y[:5].mean())
    np.testing.assert_allclose(smooth.get_ydata()[0], y[0])
    np.testing.assert_allclose(smooth.get_ydata()[-1], y[-5:].mean())


def test_training_curves_invalid() -> None:
    with pytest.raises(ScalaBLError, match="empty"):
        training_curves({})
    with pytest.raises(ScalaBLError, match="not a training history"):
        training_curves({"a": [1, 2]})
    with pytest.raises(ScalaBLError, match=r"\['steps'\]\[0\] lacks"):
        training_curves({"a": {"steps": [{"step": 1}]}})
    with pytest.raises(ScalaBLError, match="validation"):
        training_curves({"a": {"steps": [], "validation": [{"acc": 0.5}]}})
    with pytest.raises(ScalaBLError, match="smooth"):
        training_curves({"a": _history(0)}, smooth=0)
