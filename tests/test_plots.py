"""Reliability diagram: figure structure, atomic saving, headless use."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from scalabl_pyro.errors import ScalaBLError
from scalabl_pyro.plots import reliability_diagram

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
