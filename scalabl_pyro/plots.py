"""Reliability diagrams for comparing the calibration of several methods.

Figures are built with the object-oriented API on a bare
:class:`matplotlib.figure.Figure`, so nothing touches pyplot's global state or
needs a display: it works headless (CI, servers) and a returned figure renders
inline in Jupyter.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from scalabl_pyro.errors import ScalaBLError
from scalabl_pyro.metrics import _check_n_bins, _check_pair, _reliability_bins

_BAR_COLOR = "#3b75af"
_GAP_COLOR = "#d9534f"


def reliability_diagram(
    results: Mapping[str, tuple[Any, Any]],
    path: str | Path | None = None,
    *,
    n_bins: int = 15,
    title: str | None = None,
) -> Figure:
    """Draw one reliability panel per method, side by side, and optionally save it.

    ``results`` maps a method name to ``(probs, labels)`` (see
    :mod:`scalabl_pyro.metrics`). Each column has an upper panel with per-bin
    accuracy bars against the diagonal, the gap to mean confidence shaded
    (confidence - accuracy; above the bar = overconfident), ECE and accuracy
    in the title (in percent), and a lower panel with the number of examples
    per bin. Upper panels share the y axis. If ``path`` is given the figure is
    written atomically (temp file in the same folder, then ``os.replace``) as
    PNG, or as PDF/SVG when the suffix says so. Returns the figure.
    """
    if not isinstance(results, Mapping) or len(results) == 0:
        raise ScalaBLError("results is empty or not a mapping; pass {method_name: (probs, labels)}")
    n_bins = _check_n_bins(n_bins)

    stats = []
    for name, pair in results.items():
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise ScalaBLError(
                f"results[{name!r}] is not a (probs, labels) pair; pass "
                "{method_name: (probs, labels)}"
            )
        try:
            p, y = _check_pair(*pair)
        except ScalaBLError as exc:
            raise ScalaBLError(f"results[{name!r}]: {exc}") from exc
        bins = _reliability_bins(p, y, n_bins)
        acc = float(np.mean(np.argmax(p, axis=1) == y))
        stats.append((str(name), bins, acc))

    k = len(stats)
    fig = Figure(figsize=(3.6 * k + 0.4, 4.8), layout="constrained")
    grid = fig.add_gridspec(2, k, height_ratios=(3, 1))
    width = 1.0 / n_bins
    first_top = None
    for col, (name, bins, acc) in enumerate(stats):
        top = fig.add_subplot(grid[0, col], sharey=first_top)
        bottom = fig.add_subplot(grid[1, col], sharex=top)
        first_top = first_top or top

        centers = (bins.edges[:-1] + bins.edges[1:]) / 2
        filled = bins.counts > 0
        top.plot([0, 1], [0, 1], ls="--", color="0.4", lw=1, label="perfect calibration")
        top.bar(
            centers[filled],
            bins.accuracy[filled],
            width=width,
            color=_BAR_COLOR,
            edgecolor="white",
            lw=0.5,
            label="accuracy",
        )
        top.bar(
            centers[filled],
            bins.gap[filled],
            bottom=bins.accuracy[filled],
            width=width,
            color=_GAP_COLOR,
            alpha=0.35,
            edgecolor=_GAP_COLOR,
            hatch="//",
            lw=0.5,
            label="gap (conf - acc)",
        )
        top.set_xlim(0, 1)
        top.set_ylim(0, 1)
        top.set_title(f"{name}\nECE {bins.ece * 100:.2f}%  ACC {acc * 100:.1f}%", fontsize=10)
        top.tick_params(labelbottom=False)
        if col == 0:
            top.set_ylabel("accuracy")
            top.legend(loc="upper left", fontsize=7, frameon=False)
        else:
            top.tick_params(labelleft=False)

        bottom.bar(centers, bins.counts, width=width, color="0.55", edgecolor="white", lw=0.5)
        bottom.set_xlabel("confidence")
        if col == 0:
            bottom.set_ylabel("count")

    if title:
        fig.suptitle(title)
    if path is not None:
        _save_atomic(fig, Path(path))
    return fig


def _save_atomic(fig: Figure, path: Path) -> None:
    """Write ``fig`` to ``path`` via a temp file in the same folder and ``os.replace``.

    Readers never see a half-written image, and the temp file is removed if
    rendering fails.
    """
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in ("png", "pdf", "svg"):
        fmt = "png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fig.savefig(fh, format=fmt, dpi=150)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; give the image normal permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
