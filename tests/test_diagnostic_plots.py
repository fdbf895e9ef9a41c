"""Diagnostics figures: each returns a Figure with the expected panels, on a tiny model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure
from scalabl_testutils import make_scalabl, randomize_lora, toy_dataset

from scalabl_pyro.diagnostics import plots as dp
from scalabl_pyro.diagnostics.posterior import to_inference_data
from scalabl_pyro.errors import ScalaBLError
from scalabl_pyro.inference.train import TrainConfig


@pytest.fixture(scope="module")
def idata():
    sbl = make_scalabl(guide="full_rank")
    randomize_lora(sbl.subspace)
    data = toy_dataset(6)
    sbl.fit(data, TrainConfig(steps=3, batch_size=3, lr=1e-2, progress=False))
    return to_inference_data(sbl, data, num_samples=40, seed=0)


def test_posterior_vs_prior_is_a_forest_of_both(idata):
    fig = dp.posterior_vs_prior(idata, layers=2)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert sorted(labels) == ["posterior", "prior"]
    ticks = [t.get_text() for t in ax.get_yticklabels()]
    assert len(ticks) == 2 * 4  # 2 layers x rank 4, each row holding both models
    assert sum("layers.0.self_attn.q_proj" in t for t in ticks) == 4


def test_scale_heatmap_shows_posterior_sds(idata):
    fig = dp.scale_heatmap({"a": idata, "b": np.ones((4, 4))})
    assert len(fig.axes) == 3  # two panels and a colour bar
    img = fig.axes[0].images[0].get_array()
    np.testing.assert_allclose(img, idata.posterior["s"].std(("chain", "draw")).values)
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()][0] == "0.q_proj"


def test_correlation_matrices_are_square_and_titled(idata):
    eye = np.eye(16)
    fig = dp.correlation_matrices({"mean_field": eye, "fit": idata})
    assert fig.axes[0].images[0].get_array().shape == (16, 16)
    assert "max |off-diag| 0.00" in fig.axes[0].get_title()
    with pytest.raises(ScalaBLError, match="square"):
        dp.correlation_matrices({"bad": np.ones((2, 3))})


def test_elbo_traces_have_three_panels(idata):
    fig = dp.elbo_traces({"fit": idata}, smooth=2)
    assert [a.get_title() for a in fig.axes] == [
        "-ELBO (data-set scale)",
        "NLL per example",
        "KL",
    ]
    x = fig.axes[0].lines[-1].get_xdata()
    np.testing.assert_array_equal(x, [1, 2, 3])


def test_arviz_posterior_and_pair_plots(idata):
    fig = dp.posterior_density(idata, ranks=(0, 1))
    assert len(fig.axes) == 2 and "q_proj, 0" in fig.axes[0].get_title()
    fig = dp.pair_plot(idata, ranks=(0, 1, 2))
    assert len(fig.axes) == 3  # the lower triangle of a 2 x 2 grid
    assert len(fig.axes[0].collections) == 1  # one scatter of 40 draws
    assert fig.axes[0].collections[0].get_offsets().shape == (40, 2)
    with pytest.raises(ScalaBLError, match="not in the posterior"):
        dp.pair_plot(idata, layer="nope")


def test_khat_bars_and_metric_bars(tmp_path):
    fig = dp.khat_bars({"mean_field": 0.4, "full_rank": 1.2, "mle": None}, tmp_path / "k.png")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.texts] == ["0.40", "1.20", "n/a"]
    assert (tmp_path / "k.png").read_bytes()[:4] == b"\x89PNG"
    rows = [{"family": "a", "acc": 0.5, "ece": 0.1, "nll": 1.0, "brier": 0.6}]
    assert [a.get_title() for a in dp.metric_bars(rows).axes] == ["ACC", "ECE", "NLL", "BRIER"]


def test_bars_show_the_mean_with_every_seed_as_a_dot():
    """Several seeds: the bar is the summary's mean, each seed a dot (none hidden)."""
    rows = [{"family": "a", "acc": 0.55}, {"family": "b", "acc": 0.6}]
    seeds = {"a": [{"acc": 0.5}, {"acc": 0.6}], "b": [{"acc": 0.58}, {"acc": 0.62}]}
    ax = dp.metric_bars(rows, metrics=("acc",), seeds=seeds).axes[0]
    assert [b.get_height() for b in ax.patches] == [0.55, 0.6]
    dots = sorted(float(y) for line in ax.lines for y in line.get_ydata())
    assert dots == [0.5, 0.58, 0.6, 0.62]
    assert ax.get_ylim()[0] < 0.5 < 0.62 < ax.get_ylim()[1]  # every seed inside the axes
    fig = dp.khat_bars({"a": 2.0, "b": None}, seeds={"a": [1.5, 2.5], "b": [None, None]})
    assert sorted(float(y) for y in fig.axes[0].lines[0].get_ydata()) == [1.5, 2.5]
    assert [t.get_text() for t in fig.axes[0].texts] == ["2.00", "n/a"]


def test_write_diagnostics_writes_every_png(idata, tmp_path):
    files = dp.write_diagnostics(idata, tmp_path)
    assert set(files) == {"forest", "scales", "correlation", "density", "pair", "traces"}
    for f in files.values():
        assert Path(f).read_bytes()[:4] == b"\x89PNG"
