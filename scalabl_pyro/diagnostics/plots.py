"""Posterior diagnostics figures: prior vs posterior, scales, correlations, traces, k-hat.

Each function returns a :class:`matplotlib.figure.Figure` built on a bare
Figure (no pyplot state, headless), and writes it atomically when ``path``
is given, like ``plots.py``. Inputs are the ``InferenceData`` of
:func:`scalabl_pyro.diagnostics.posterior.to_inference_data` (variable ``s`` with dims
``layer`` x ``rank``), or plain arrays where a figure compares families.
The ArviZ figures (forest, posterior, pair) draw into axes of that Figure.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import arviz as az
import numpy as np
from matplotlib.figure import Figure

from scalabl_pyro.diagnostics.posterior import KHAT_OK, LATENT_VAR, history_arrays
from scalabl_pyro.errors import ScalaBLError
from scalabl_pyro.evaluation.figure import check_results, finish, palette

_LAYER = re.compile(r"layers\.(\d+)\..*?([A-Za-z_]+)$")


def short_layer(path: str) -> str:
    """``model.layers.3.self_attn.q_proj`` -> ``3.q_proj`` (other paths unchanged)."""
    m = _LAYER.search(path)
    return f"{m.group(1)}.{m.group(2)}" if m else path


def _check_idata(idata: Any, group: str = "posterior") -> None:
    if not isinstance(idata, az.InferenceData) or not hasattr(idata, group):
        raise ScalaBLError(
            f"expected an InferenceData with a {group!r} group; build it with "
            "scalabl_pyro.diagnostics.posterior.to_inference_data"
        )
    if LATENT_VAR not in getattr(idata, group):
        raise ScalaBLError(f"the {group} group has no variable {LATENT_VAR!r}")


def _layers(idata: az.InferenceData, layers: Sequence[str] | int | None) -> list[str]:
    all_layers = [str(x) for x in idata.posterior[LATENT_VAR].coords["layer"].values]
    if layers is None:
        layers = 4
    if isinstance(layers, int):
        return all_layers[: max(1, layers)]
    unknown = [x for x in layers if x not in all_layers]
    if unknown:
        raise ScalaBLError(
            f"layer {unknown[0]!r} is not in the posterior; choose from e.g. {all_layers[:3]}"
        )
    return list(layers)


def posterior_vs_prior(
    idata: az.InferenceData,
    path: str | Path | None = None,
    *,
    layers: Sequence[str] | int | None = None,
    hdi_prob: float = 0.94,
    title: str | None = None,
) -> Figure:
    """Forest plot (``az.plot_forest``) of s per layer and rank: posterior beside prior.

    ``layers``: module paths, or the number of leading layers (default 4;
    every latent dimension of a large model would be hundreds of rows).
    """
    _check_idata(idata)
    _check_idata(idata, "prior")
    chosen = _layers(idata, layers)
    rows = len(chosen) * idata.posterior.sizes["rank"]
    fig = Figure(figsize=(7.5, 1.2 + 0.22 * rows), layout="constrained")
    ax = fig.add_subplot()
    post = az.InferenceData(posterior=idata.posterior.sel(layer=chosen))
    prior = az.InferenceData(posterior=idata.prior.sel(layer=chosen))
    az.plot_forest(
        [post, prior],
        model_names=["posterior", "prior"],
        var_names=[LATENT_VAR],
        combined=True,
        hdi_prob=hdi_prob,
        textsize=8,
        ax=ax,
        show=False,
    )
    ax.set_title(f"s: posterior vs prior ({int(hdi_prob * 100)} % HDI)", fontsize=10)
    return finish(fig, title, path)


def _stds(idata: az.InferenceData) -> np.ndarray:
    return idata.posterior[LATENT_VAR].std(dim=("chain", "draw")).values  # (L, r)


def scale_heatmap(
    results: Mapping[str, Any] | az.InferenceData,
    path: str | Path | None = None,
    *,
    title: str | None = None,
) -> Figure:
    """Posterior standard deviation of s as a (layer x rank) heatmap, one panel per fit.

    ``results``: an InferenceData, or ``{name: InferenceData or (L, r) array of sds}``;
    panels share one colour scale.
    """
    items = {"posterior": results} if isinstance(results, az.InferenceData) else results
    check_results(items, "results")
    mats, labels = {}, None
    for name, v in items.items():
        if isinstance(v, az.InferenceData):
            _check_idata(v)
            mats[name] = _stds(v)
            labels = labels or [short_layer(str(x)) for x in v.posterior.coords["layer"].values]
        else:
            mats[name] = np.asarray(v, dtype=float)
            if mats[name].ndim != 2:
                raise ScalaBLError(f"results[{name!r}] must be an (L, r) array of sds")
    vmax = max(float(np.nanmax(m)) for m in mats.values()) or 1.0
    n_layers = max(m.shape[0] for m in mats.values())
    height = min(1.5 + 0.16 * n_layers, 6.0)
    fig = Figure(figsize=(1.0 + 2.6 * len(mats), height), layout="constrained")
    axes = fig.subplots(1, len(mats), squeeze=False)[0]
    im = None
    for ax, (name, m) in zip(axes, mats.items()):
        im = ax.imshow(m, aspect="auto", cmap="viridis", vmin=0.0, vmax=vmax)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("rank")
        if labels is not None and len(labels) == m.shape[0]:
            step = max(1, len(labels) // 20)
            ax.set_yticks(range(0, len(labels), step), labels[::step], fontsize=6)
        else:
            ax.set_ylabel("layer")
    axes[0].set_ylabel("layer")
    fig.colorbar(im, ax=list(axes), label="posterior sd of s")
    return finish(fig, title, path)


def correlation_matrices(
    results: Mapping[str, Any] | az.InferenceData,
    path: str | Path | None = None,
    *,
    title: str | None = None,
) -> Figure:
    """Posterior correlation matrices of the flattened latent (D = L r), one panel per fit.

    ``results``: an InferenceData (empirical correlation of its draws), or
    ``{name: (D, D) correlation array or InferenceData}``. Blocks of r x r on
    the diagonal are the layers: a block guide fills only those, a full-rank
    guide may fill everything, mean-field is the identity.
    """
    items = {"posterior": results} if isinstance(results, az.InferenceData) else results
    check_results(items, "results")
    mats = {}
    for name, v in items.items():
        if isinstance(v, az.InferenceData):
            _check_idata(v)
            s = v.posterior[LATENT_VAR].values
            flat = s.reshape(s.shape[0] * s.shape[1], -1)
            mats[name] = np.corrcoef(flat, rowvar=False)
        else:
            m = np.asarray(v, dtype=float)
            if m.ndim != 2 or m.shape[0] != m.shape[1]:
                raise ScalaBLError(f"results[{name!r}] must be a square correlation matrix")
            mats[name] = m
    fig = Figure(figsize=(0.8 + 3.2 * len(mats), 3.4), layout="constrained")
    axes = fig.subplots(1, len(mats), squeeze=False)[0]
    im = None
    for ax, (name, m) in zip(axes, mats.items()):
        off = np.abs(m - np.diag(np.diag(m)))
        im = ax.imshow(m, cmap="RdBu_r", vmin=-1.0, vmax=1.0, interpolation="nearest")
        ax.set_title(f"{name}\nmax |off-diag| {np.nanmax(off):.2f}", fontsize=9)
        ax.set_xlabel("latent dim")
    axes[0].set_ylabel("latent dim")
    fig.colorbar(im, ax=list(axes), label="correlation", shrink=0.8)
    return finish(fig, title, path)


def elbo_traces(
    results: Mapping[str, Any] | az.InferenceData,
    path: str | Path | None = None,
    *,
    smooth: int = 10,
    title: str | None = None,
) -> Figure:
    """Training traces of -ELBO, NLL and KL per step (three panels), one line per fit.

    ``results``: an InferenceData with ``sample_stats`` (chains drawn
    separately), or ``{name: InferenceData, TrainHistory or its to_dict()}``.
    Lines are trailing means over ``smooth`` steps, the raw curve faint behind.
    """
    from scalabl_pyro.evaluation.plots import _moving_average

    items = {"fit": results} if isinstance(results, az.InferenceData) else results
    check_results(items, "results")
    curves: dict[str, dict[str, np.ndarray]] = {}
    for name, v in items.items():
        if isinstance(v, az.InferenceData):
            if not hasattr(v, "sample_stats") or "elbo" not in v.sample_stats:
                raise ScalaBLError(
                    f"results[{name!r}] has no training history in sample_stats; build it from "
                    "a fitted ScalaBL (or pass history=...)"
                )
            ss = v.sample_stats
            for c in range(ss.sizes["chain"]):
                key = name if ss.sizes["chain"] == 1 else f"{name} chain {c}"
                curves[key] = {k: ss[k].values[c] for k in ("elbo", "nll", "kl")}
                curves[key]["step"] = ss["step"].values
        else:
            h = history_arrays(v)
            if not h:
                raise ScalaBLError(f"results[{name!r}] is an empty training history")
            curves[name] = h
    fig = Figure(figsize=(12.0, 3.4), layout="constrained")
    axes = fig.subplots(1, 3)
    labels = {"elbo": "-ELBO (data-set scale)", "nll": "NLL per example", "kl": "KL"}
    for color, (name, h) in zip(palette(len(curves)), curves.items()):
        for ax, key in zip(axes, ("elbo", "nll", "kl")):
            y = np.asarray(h[key], dtype=float)
            if smooth > 1 and len(y) > 1:
                ax.plot(h["step"], y, color=color, alpha=0.2, lw=0.7)
                y = _moving_average(y, smooth)
            ax.plot(h["step"], y, color=color, lw=1.4, label=name)
    for ax, key in zip(axes, ("elbo", "nll", "kl")):
        ax.set_title(labels[key], fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, frameon=False)
    return finish(fig, title, path)


def _coords(idata: az.InferenceData, layer: str | None, ranks: Sequence[int]) -> dict:
    layer = layer or str(idata.posterior.coords["layer"].values[0])
    _layers(idata, [layer])
    return {"layer": [layer], "rank": list(ranks)}


def posterior_density(
    idata: az.InferenceData,
    path: str | Path | None = None,
    *,
    layer: str | None = None,
    ranks: Sequence[int] = (0, 1, 2, 3),
    title: str | None = None,
) -> Figure:
    """``az.plot_posterior`` of s for one layer (first by default) and chosen ranks."""
    _check_idata(idata)
    coords = _coords(idata, layer, ranks)
    fig = Figure(figsize=(3.0 * len(ranks), 2.6), layout="constrained")
    axes = fig.subplots(1, len(ranks), squeeze=False)
    az.plot_posterior(idata, var_names=[LATENT_VAR], coords=coords, ax=axes, show=False)
    for ax in axes.ravel():
        ax.title.set_fontsize(8)
    return finish(fig, title or f"s of {short_layer(coords['layer'][0])}", path)


def pair_plot(
    idata: az.InferenceData,
    path: str | Path | None = None,
    *,
    layer: str | None = None,
    ranks: Sequence[int] = (0, 1, 2),
    title: str | None = None,
) -> Figure:
    """``az.plot_pair`` (scatter) of chosen ranks of one layer's s: structure within a layer."""
    _check_idata(idata)
    if len(ranks) < 2:
        raise ScalaBLError("a pair plot needs at least 2 ranks; pass ranks=(0, 1, ...)")
    coords = _coords(idata, layer, ranks)
    n = len(ranks) - 1
    fig = Figure(figsize=(2.4 * n + 0.6, 2.4 * n + 0.4), layout="constrained")
    axes = fig.subplots(n, n, squeeze=False)
    az.plot_pair(
        idata,
        var_names=[LATENT_VAR],
        coords=coords,
        kind="scatter",
        ax=axes if n > 1 else axes[0, 0],
        scatter_kwargs={"alpha": 0.4, "s": 6},
        show=False,
    )
    for ax in axes.ravel():
        ax.xaxis.label.set_fontsize(7)
        ax.yaxis.label.set_fontsize(7)
    return finish(fig, title or f"s of {short_layer(coords['layer'][0])}", path)


def khat_bars(
    khats: Mapping[str, float | None],
    path: str | Path | None = None,
    *,
    seeds: Mapping[str, Sequence[float | None]] | None = None,
    title: str | None = None,
) -> Figure:
    """Pareto k-hat of q per family, with the 0.7 usability line (Yao et al. 2018).

    ``None``/NaN (point-mass guides: no density) are shown as "n/a". ``seeds``
    (family -> one k-hat per seed) draws each seed's value as a dot on its bar.
    """
    check_results(khats, "khats")
    names = list(khats)
    vals = np.array([np.nan if v is None else float(v) for v in khats.values()])
    fig = Figure(figsize=(1.2 + 1.1 * len(names), 3.2), layout="constrained")
    ax = fig.add_subplot()
    shown = np.where(np.isfinite(vals), vals, 0.0)
    colors = ["#2ca02c" if v < KHAT_OK else "#d62728" for v in shown]
    ax.bar(range(len(names)), shown, color=colors)
    top = shown.copy()
    for i, name in enumerate(names):
        pts = [float(v) for v in (seeds or {}).get(name, []) if v is not None]
        if len(pts) > 1:
            ax.plot([i] * len(pts), pts, "o", color="k", ms=3, zorder=3)
            top[i] = max(top[i], *pts)
    for i, v in enumerate(vals):
        ax.text(
            i,
            max(top[i], 0) + 0.02,
            "n/a" if not np.isfinite(v) else f"{v:.2f}",
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax.axhline(KHAT_OK, color="k", ls="--", lw=1, label=f"k = {KHAT_OK}")
    ax.set_ylim(0, max(1.0, float(np.max(top))) * 1.15)  # room for the labels
    ax.set_xticks(range(len(names)), names, rotation=20, fontsize=8)
    ax.set_ylabel("Pareto k-hat of q")
    ax.legend(fontsize=7, frameon=False)
    ax.grid(alpha=0.3, axis="y")
    return finish(fig, title, path)


def metric_bars(
    rows: Sequence[Mapping[str, Any]],
    path: str | Path | None = None,
    *,
    metrics: Sequence[str] = ("acc", "ece", "nll", "brier"),
    seeds: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
    title: str | None = None,
) -> Figure:
    """Held-out metrics per family (one panel per metric) from comparison rows.

    A bar is the row's value (the mean over seeds for summary rows). ``seeds``
    (family -> one row per seed) draws each seed's value as a dot on its bar.
    """
    if not rows:
        raise ScalaBLError("no comparison rows to plot")
    names = [str(r["family"]) for r in rows]
    fig = Figure(figsize=(2.8 * len(metrics), 3.0), layout="constrained")
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    colors = palette(len(names))
    for ax, m in zip(axes, metrics):
        vals = [float(r.get(m) if r.get(m) is not None else np.nan) for r in rows]
        ax.bar(range(len(names)), vals, color=colors)
        every = list(vals)
        for i, name in enumerate(names):
            pts = [float(c[m]) for c in (seeds or {}).get(name, []) if c.get(m) is not None]
            if len(pts) > 1:
                ax.plot([i] * len(pts), pts, "o", color="k", ms=3, zorder=3)
                every += pts
        lo, hi = np.nanmin(every), np.nanmax(every)
        pad = 0.5 * (hi - lo) + 1e-3 + 0.02 * abs(hi)
        ax.set_ylim(max(0.0, lo - pad) if lo >= 0 else lo - pad, hi + pad)
        ax.set_xticks(range(len(names)), names, rotation=25, fontsize=7)
        ax.set_title(m.upper(), fontsize=10)
        ax.grid(alpha=0.3, axis="y")
    return finish(fig, title, path)


def write_comparison_figures(result: Any, out: str | Path) -> dict[str, str]:
    """All figures of a :class:`~scalabl_pyro.experiments.comparison.ComparisonResult` (PNG)."""
    out = Path(out)
    cfg = result.config
    fams = list(result.families.values())
    files: dict[str, str] = {}
    per_seed = {
        f: [result.cells[(f, s)].row for s in cfg.seeds if (f, s) in result.cells]
        for f in cfg.families
    }
    several = len(cfg.seeds) > 1
    rows = result.rows if several else [f.row for f in fams]
    what = f"mean of {len(cfg.seeds)} seeds, dots: each seed" if several else f"seed {cfg.seeds[0]}"
    p = out / "guide_comparison_metrics.png"
    metric_bars(rows, p, seeds=per_seed, title=f"held-out {cfg.task} ({what})")
    files["metrics"] = str(p)
    p = out / "guide_comparison_khat.png"
    khats = {r["family"]: r.get("khat_q") for r in rows}
    seeds_k = {f: [c.get("khat_q") for c in cs] for f, cs in per_seed.items()}
    khat_bars(khats, p, seeds=seeds_k, title=f"k-hat of q ({what})")
    files["khat"] = str(p)
    first = f"seed {cfg.seeds[0]}"
    p = out / "guide_comparison_traces.png"
    elbo_traces({f.family: f.history for f in fams}, p, title=f"training traces ({first})")
    files["traces"] = str(p)
    p = out / "guide_comparison_scales.png"
    scale_heatmap(
        {f.family: f.draws.std(axis=0) for f in fams if f.draws.std() > 0},
        p,
        title=f"posterior sd of s ({first})",
    )
    files["scales"] = str(p)
    corrs = {
        f.family: f.arrays["correlation"].astype(np.float64)
        for f in fams
        if "correlation" in f.arrays
    }
    if corrs:
        p = out / "guide_comparison_correlation.png"
        correlation_matrices(corrs, p, title=f"posterior correlations of s ({first})")
        files["correlation"] = str(p)
    loo_k = {f.family: f.arrays["loo_pareto_k"] for f in fams if "loo_pareto_k" in f.arrays}
    if loo_k:
        p = out / "guide_comparison_loo_khat.png"
        loo_khat_panels(loo_k, p, title=f"PSIS-LOO k of the training questions ({first})")
        files["loo_khat"] = str(p)
    return files


def loo_khat_panels(
    pareto_k: Mapping[str, np.ndarray],
    path: str | Path | None = None,
    *,
    title: str | None = None,
) -> Figure:
    """``az.plot_khat`` of each family's training-LOO Pareto k's, one panel per family."""
    check_results(pareto_k, "pareto_k")
    names = list(pareto_k)
    fig = Figure(figsize=(3.0 * len(names), 2.8), layout="constrained")
    axes = fig.subplots(1, len(names), squeeze=False)[0]
    for ax, name in zip(axes, names):
        k = np.asarray(pareto_k[name], dtype=np.float64)
        az.plot_khat(np.clip(k, -1.0, 2.0), ax=ax, show_hlines=True, hlines_kwargs={"lw": 0.8})
        above = int(np.sum(k > 2.0))
        ax.set_title(name + (f" ({above} k > 2 drawn at 2)" if above else ""), fontsize=9)
        ax.set_xlabel("training question", fontsize=8)
    return finish(fig, title, path)


def write_diagnostics(
    idata: az.InferenceData, out: str | Path, *, layer: str | None = None
) -> dict[str, str]:
    """Every single-fit diagnostic figure of an InferenceData as PNGs in ``out``."""
    out = Path(out)
    files: dict[str, str] = {}
    r = idata.posterior.sizes["rank"]
    if hasattr(idata, "prior"):
        files["forest"] = str(out / "posterior_vs_prior.png")
        posterior_vs_prior(idata, files["forest"])
    files["scales"] = str(out / "posterior_scales.png")
    scale_heatmap(idata, files["scales"])
    files["correlation"] = str(out / "posterior_correlation.png")
    correlation_matrices(idata, files["correlation"])
    files["density"] = str(out / "posterior_density.png")
    posterior_density(idata, files["density"], layer=layer, ranks=range(min(4, r)))
    if r >= 2:
        files["pair"] = str(out / "posterior_pair.png")
        pair_plot(idata, files["pair"], layer=layer, ranks=range(min(3, r)))
    if hasattr(idata, "sample_stats") and "elbo" in idata.sample_stats:
        files["traces"] = str(out / "elbo_traces.png")
        elbo_traces(idata, files["traces"])
    return files


__all__ = [
    "correlation_matrices",
    "elbo_traces",
    "khat_bars",
    "loo_khat_panels",
    "metric_bars",
    "pair_plot",
    "posterior_density",
    "posterior_vs_prior",
    "scale_heatmap",
    "short_layer",
    "write_comparison_figures",
    "write_diagnostics",
]
