"""What every figure of the package shares: colours, the input check, the title and the
atomic save (a temp file in the same folder, then ``os.replace``, marked as this library's
image in its metadata so that the CLI replaces only images it wrote)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from scalabl_pyro.errors import ScalaBLError
from scalabl_pyro.io.image_mark import image_metadata
from scalabl_pyro.utils.atomic import atomic_open


def palette(k: int) -> list[str]:
    """``k`` distinct colours from matplotlib's default cycle (repeating past 10)."""
    cycle = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd"]
    cycle += ["#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
    return [cycle[i % len(cycle)] for i in range(k)]


def check_results(results: Any, what: str) -> None:
    if not isinstance(results, Mapping) or len(results) == 0:
        raise ScalaBLError(f"{what} is empty or not a mapping; pass {{method_name: ...}}")


def finish(fig: Figure, title: str | None, path: str | Path | None) -> Figure:
    if title:
        fig.suptitle(title)
    if path is not None:
        save_atomic(fig, Path(path))
    return fig


def save_atomic(fig: Figure, path: Path) -> None:
    """Write ``fig`` to ``path`` via a temp file in the same folder and ``os.replace``.

    Readers never see a half-written image, and the temp file is removed if
    rendering fails.
    """
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in ("png", "pdf", "svg"):
        fmt = "png"
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format=fmt, dpi=150, metadata=image_metadata(fmt))
