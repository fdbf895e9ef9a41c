"""Figures for comparing methods: reliability, risk-coverage and training curves (the OOD
figures live in :mod:`~scalabl_pyro.evaluation.ood_plots` and are re-exported here).

Figures are built with the object-oriented API on a bare
:class:`matplotlib.figure.Figure`, so nothing touches pyplot's global state or
needs a display: it works headless (CI, servers) and a returned figure renders
inline in Jupyter. Every function takes a mapping ``{method name: data}``,
draws the methods in its order with one colour each, returns the figure, and
if ``path`` is given writes it atomically (temp file in the same folder, then
``os.replace``) as PNG, or as PDF/SVG when the suffix says so, marked as this
library's in its metadata (:mod:`scalabl_pyro.io.image_mark`), so that the CLI
replaces only images it wrote.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from scalabl_pyro.errors import ScalaBLError
from scalabl_pyro.evaluation.figure import check_results, finish, palette
from scalabl_pyro.evaluation.metrics import _equal_width_edges, _reliability_bins
from scalabl_pyro.evaluation.ood_plots import ood_auroc_plot, ood_histogram
from scalabl_pyro.evaluation.selective import aurc, risk_coverage_curve
from scalabl_pyro.evaluation.validation import (
    Binning,
    check_binning,
    check_n_bins,
    check_pair,
)

_BAR_COLOR = "#3b75af"
_GAP_COLOR = "#d9534f"
LAYOUTS: tuple[str, ...] = ("columns", "overlay")

__all__ = [
    "LAYOUTS",
    "ood_auroc_plot",
    "ood_histogram",
    "reliability_diagram",
    "risk_coverage_plot",
    "training_curves",
]


def _pairs(
    results: Mapping[str, tuple[Any, Any]], n: int = 2
) -> list[tuple[str, np.ndarray, np.ndarray, Any]]:
    """Validate ``{name: (probs, labels)}`` (or ``(probs, labels, confidence)`` when n=3)."""
    check_results(results, "results")
    out = []
    shape = "(probs, labels)" if n == 2 else "(probs, labels) or (probs, labels, confidence)"
    for name, pair in results.items():
        if not isinstance(pair, (tuple, list)) or len(pair) not in range(2, n + 1):
            raise ScalaBLError(
                f"results[{name!r}] is not a {shape} pair; pass {{method_name: {shape}}}"
            )
        try:
            p, y = check_pair(pair[0], pair[1])
        except ScalaBLError as exc:
            raise ScalaBLError(f"results[{name!r}]: {exc}") from exc
        out.append((str(name), p, y, pair[2] if len(pair) == 3 else None))
    return out


# --------------------------------------------------------------------------- #
# reliability


def reliability_diagram(
    results: Mapping[str, tuple[Any, Any]],
    path: str | Path | None = None,
    *,
    n_bins: int = 15,
    title: str | None = None,
    binning: Binning = "equal_width",
    layout: str = "columns",
) -> Figure:
    """Reliability diagrams with the confidence histogram under them, for several methods.

    ``results`` maps a method name to ``(probs, labels)`` (see
    :mod:`scalabl_pyro.evaluation.metrics`). Reliability bins follow ``binning`` (see
    :func:`~scalabl_pyro.evaluation.metrics.reliability_bins`); the histogram below always
    counts top-label confidences in ``n_bins`` equal-width bins.

    - ``layout="columns"``: one column per method. The upper panel has the
      per-bin accuracy bars against the diagonal, the gap to mean confidence
      shaded (confidence - accuracy; above the bar = overconfident), ECE and
      accuracy in the title (in percent); the lower panel has the number of
      examples per bin. Upper panels share the y axis.
    - ``layout="overlay"``: one reliability panel with a line per method
      (mean confidence, accuracy per non-empty bin; ECE in the legend), and one
      histogram panel with the fraction of each method's examples per bin.
    """
    stats = _reliability_stats(results, n_bins, binning)
    if layout == "columns":
        fig = _reliability_columns(stats, n_bins, binning)
    elif layout == "overlay":
        fig = _reliability_overlay(stats, n_bins, binning)
    else:
        raise ScalaBLError(f"layout is {layout!r}; use one of {', '.join(LAYOUTS)}")
    return finish(fig, title, path)


def _reliability_stats(
    results: Mapping[str, tuple[Any, Any]], n_bins: int, binning: str
) -> list[tuple[str, Any, float, np.ndarray]]:
    check_results(results, "results")
    n_bins = check_n_bins(n_bins)
    binning = check_binning(binning)
    stats = []
    for name, p, y, _ in _pairs(results):
        bins = _reliability_bins(p, y, n_bins, binning)
        acc = float(np.mean(np.argmax(p, axis=1) == y))
        hist = np.histogram(p.max(axis=1), bins=_equal_width_edges(n_bins))[0]
        stats.append((name, bins, acc, hist))
    return stats


def _ece_label(binning: str) -> str:
    return "ECE" if binning == "equal_width" else "ECE (eq. mass)"


def _reliability_columns(stats: list, n_bins: int, binning: str) -> Figure:
    k = len(stats)
    fig = Figure(figsize=(3.6 * k + 0.4, 4.8), layout="constrained")
    grid = fig.add_gridspec(2, k, height_ratios=(3, 1))
    hist_edges = _equal_width_edges(n_bins)
    first_top = None
    for col, (name, bins, acc, hist) in enumerate(stats):
        top = fig.add_subplot(grid[0, col], sharey=first_top)
        bottom = fig.add_subplot(grid[1, col], sharex=top)
        first_top = first_top or top

        left, width = bins.edges[:-1], np.diff(bins.edges)
        filled = bins.counts > 0
        top.plot([0, 1], [0, 1], ls="--", color="0.4", lw=1, label="perfect calibration")
        top.bar(
            left[filled],
            bins.accuracy[filled],
            width=width[filled],
            align="edge",
            color=_BAR_COLOR,
            edgecolor="white",
            lw=0.5,
            label="accuracy",
        )
        top.bar(
            left[filled],
            bins.gap[filled],
            bottom=bins.accuracy[filled],
            width=width[filled],
            align="edge",
            color=_GAP_COLOR,
            alpha=0.35,
            edgecolor=_GAP_COLOR,
            hatch="//",
            lw=0.5,
            label="gap (conf - acc)",
        )
        top.set_xlim(0, 1)
        top.set_ylim(0, 1)
        top.set_title(
            f"{name}\n{_ece_label(binning)} {bins.ece * 100:.2f}%  ACC {acc * 100:.1f}%",
            fontsize=10,
        )
        top.tick_params(labelbottom=False)
        if col == 0:
            top.set_ylabel("accuracy")
            top.legend(loc="upper left", fontsize=7, frameon=False)
        else:
            top.tick_params(labelleft=False)

        bottom.bar(
            hist_edges[:-1],
            hist,
            width=np.diff(hist_edges),
            align="edge",
            color="0.55",
            edgecolor="white",
            lw=0.5,
        )
        bottom.set_xlabel("confidence")
        if col == 0:
            bottom.set_ylabel("count")
    return fig


def _reliability_overlay(stats: list, n_bins: int, binning: str) -> Figure:
    fig = Figure(figsize=(5.2, 6.0), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    top.plot([0, 1], [0, 1], ls="--", color="0.4", lw=1, label="perfect calibration")
    hist_edges = _equal_width_edges(n_bins)
    centers = (hist_edges[:-1] + hist_edges[1:]) / 2
    for color, (name, bins, acc, hist) in zip(palette(len(stats)), stats):
        filled = bins.counts > 0
        top.plot(
            bins.confidence[filled],
            bins.accuracy[filled],
            marker="o",
            ms=4,
            color=color,
            label=f"{name} ({_ece_label(binning)} {bins.ece * 100:.2f}%, ACC {acc * 100:.1f}%)",
        )
        bottom.plot(centers, hist / hist.sum(), drawstyle="steps-mid", color=color, label=name)
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy")
    top.legend(loc="upper left", fontsize=7, frameon=False)
    bottom.set_xlabel("confidence")
    bottom.set_ylabel("fraction")
    return fig


# --------------------------------------------------------------------------- #
# selective prediction


def risk_coverage_plot(
    results: Mapping[str, tuple[Any, ...]],
    path: str | Path | None = None,
    *,
    title: str | None = None,
) -> Figure:
    """Risk-coverage curves of several methods on one panel (AURC in the legend, percent).

    ``results`` maps a method name to ``(probs, labels)``, or to
    ``(probs, labels, confidence)`` to rank by another confidence (higher =
    kept first); see :func:`~scalabl_pyro.evaluation.metrics.risk_coverage_curve`. One
    line per method, from the highest-confidence point to full coverage, where
    the risk is the plain error rate.
    """
    items = _pairs(results, n=3)
    fig = Figure(figsize=(5.2, 4.0), layout="constrained")
    ax = fig.add_subplot()
    for color, (name, p, y, conf) in zip(palette(len(items)), items):
        try:
            curve = risk_coverage_curve(p, y, confidence=conf)
            area = aurc(p, y, confidence=conf)
        except ScalaBLError as exc:
            raise ScalaBLError(f"results[{name!r}]: {exc}") from exc
        ax.plot(
            curve.coverage,
            curve.risk,
            color=color,
            lw=1.5,
            label=f"{name} (AURC {area * 100:.2f}%)",
        )
    ax.set_xlim(0, 1)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("coverage (fraction kept)")
    ax.set_ylabel("risk (error rate of kept)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, frameon=False)
    return finish(fig, title, path)


# --------------------------------------------------------------------------- #
# training curves


def _history_dict(name: str, history: Any) -> dict:
    h = history.to_dict() if hasattr(history, "to_dict") else history
    if not isinstance(h, Mapping) or not isinstance(h.get("steps"), Sequence):
        raise ScalaBLError(
            f"histories[{name!r}] is not a training history; pass TrainHistory or its "
            "to_dict(): {'steps': [{'step', 'nll', ...}], 'validation': [...]}"
        )
    for i, rec in enumerate(h["steps"]):
        if not isinstance(rec, Mapping) or "step" not in rec or "nll" not in rec:
            raise ScalaBLError(
                f"histories[{name!r}]['steps'][{i}] lacks 'step' or 'nll'; each step "
                "record needs both"
            )
    val = h.get("validation") or []
    if not isinstance(val, Sequence) or any(
        not isinstance(r, Mapping) or "step" not in r for r in val
    ):
        raise ScalaBLError(
            f"histories[{name!r}]['validation'] must be a list of dicts with a 'step' key"
        )
    return {"steps": list(h["steps"]), "validation": list(val)}


def _moving_average(x: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over up to ``window`` points (shorter at the start), same length."""
    c = np.cumsum(np.r_[0.0, x])
    idx = np.arange(1, len(x) + 1)
    start = np.maximum(idx - window, 0)
    return (c[idx] - c[start]) / (idx - start)


def training_curves(
    histories: Mapping[str, Any],
    path: str | Path | None = None,
    *,
    val_metrics: Sequence[str] = ("acc", "ece"),
    smooth: int = 1,
    title: str | None = None,
) -> Figure:
    """Training NLL per step with validation NLL, and validation metrics, for several runs.

    ``histories`` maps a run name to a :class:`~scalabl_pyro.inference.train.TrainHistory`
    or its ``to_dict()``: ``{"steps": [{"step", "nll", ...}], "validation":
    [{"step", "nll", "acc", ...}]}``. The first panel has the per-example
    training NLL per step (a trailing mean over ``smooth`` steps, the raw
    curve faint behind it when ``smooth > 1``) and the validation NLL as
    markers in the same colour: validation NLL rising while training NLL falls
    is overfitting. One more panel per name in ``val_metrics`` that some run
    recorded (missing names are skipped), sharing the step axis.
    """
    check_results(histories, "histories")
    if isinstance(smooth, bool) or not isinstance(smooth, (int, np.integer)) or smooth < 1:
        raise ScalaBLError(f"smooth is {smooth!r}; pass a window of at least 1 step")
    runs = [(str(name), _history_dict(str(name), h)) for name, h in histories.items()]
    extra = [
        m
        for m in dict.fromkeys(val_metrics)
        if m != "nll" and any(m in r for _, h in runs for r in h["validation"])
    ]
    fig = Figure(figsize=(4.6 * (1 + len(extra)) + 0.4, 3.8), layout="constrained")
    axes = fig.subplots(1, 1 + len(extra), squeeze=False, sharex=True)[0]
    for color, (name, h) in zip(palette(len(runs)), runs):
        steps = np.array([r["step"] for r in h["steps"]], dtype=float)
        nll = np.array([r["nll"] for r in h["steps"]], dtype=float)
        if smooth > 1 and len(nll):
            axes[0].plot(steps, nll, color=color, alpha=0.25, lw=0.8)
            nll = _moving_average(nll, int(smooth))
        axes[0].plot(steps, nll, color=color, lw=1.5, label=f"{name} train")
        val = [r for r in h["validation"] if "nll" in r]
        if val:
            axes[0].plot(
                [r["step"] for r in val],
                [r["nll"] for r in val],
                color=color,
                ls="--",
                marker="o",
                ms=4,
                label=f"{name} validation",
            )
        for ax, metric in zip(axes[1:], extra):
            pts = [r for r in h["validation"] if metric in r]
            if pts:
                ax.plot(
                    [r["step"] for r in pts],
                    [r[metric] for r in pts],
                    color=color,
                    marker="o",
                    ms=4,
                    label=name,
                )
    axes[0].set_ylabel("NLL (nats per example)")
    axes[0].set_title("NLL: training (per step) and validation", fontsize=10)
    axes[0].legend(fontsize=7, frameon=False)
    for ax, metric in zip(axes[1:], extra):
        ax.set_title(f"validation {metric}", fontsize=10)
        ax.set_ylabel(metric)
        ax.legend(fontsize=7, frameon=False)
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    return finish(fig, title, path)
