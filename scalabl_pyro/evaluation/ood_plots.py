"""Figures of OOD detection: a score's histograms in- against out-of-distribution, and the
detection AUROC of several scores and methods with their intervals."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from scalabl_pyro.errors import ScalaBLError
from scalabl_pyro.evaluation.figure import check_results, finish, palette
from scalabl_pyro.evaluation.metrics import ood_auroc
from scalabl_pyro.evaluation.validation import check_scores

_IN_COLOR = "#3b75af"
_OUT_COLOR = "#e07b39"


def ood_histogram(
    scores: Mapping[str, tuple[Any, Any]],
    path: str | Path | None = None,
    *,
    bins: int = 30,
    score_name: str = "OOD score",
    title: str | None = None,
) -> Figure:
    """Histograms of an OOD score, in-distribution against OOD, one panel per method.

    ``scores`` maps a method name to ``(scores_in (N_in,), scores_out (N_out,))``,
    higher meaning more likely OOD (see :func:`~scalabl_pyro.evaluation.metrics.ood_scores`).
    Both histograms of a panel share ``bins`` equal-width bins over the pooled
    range and are normalised to densities, so sets of different sizes compare;
    the AUROC (percent) is in the panel title.
    """
    check_results(scores, "scores")
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 1:
        raise ScalaBLError(f"bins is {bins!r}; pass a positive integer such as 30")
    n_bins = int(bins)
    items = []
    for name, pair in scores.items():
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise ScalaBLError(
                f"scores[{name!r}] is not a (scores_in, scores_out) pair; pass "
                "{method_name: (scores_in, scores_out)}"
            )
        try:
            s_in = check_scores(pair[0], name="scores_in")
            s_out = check_scores(pair[1], name="scores_out")
        except ScalaBLError as exc:
            raise ScalaBLError(f"scores[{name!r}]: {exc}") from exc
        items.append((str(name), s_in, s_out))

    k = len(items)
    fig = Figure(figsize=(3.8 * k + 0.4, 3.4), layout="constrained")
    axes = fig.subplots(1, k, squeeze=False)[0]
    for ax, (name, s_in, s_out) in zip(axes, items):
        lo = min(s_in.min(), s_out.min())
        hi = max(s_in.max(), s_out.max())
        edges = np.linspace(lo, hi if hi > lo else lo + 1.0, n_bins + 1)
        kw = {"bins": edges, "density": True, "histtype": "stepfilled", "alpha": 0.45}
        ax.hist(s_in, color=_IN_COLOR, label=f"in-distribution (n={len(s_in)})", **kw)
        ax.hist(s_out, color=_OUT_COLOR, label=f"OOD (n={len(s_out)})", **kw)
        ax.set_title(f"{name}\nAUROC {ood_auroc(s_in, s_out) * 100:.1f}%", fontsize=10)
        ax.set_xlabel(score_name)
        ax.legend(fontsize=7, frameon=False)
    axes[0].set_ylabel("density")
    return finish(fig, title, path)


def ood_auroc_plot(
    aurocs: Mapping[str, Mapping[str, Mapping[str, Sequence[float]]]],
    path: str | Path | None = None,
    *,
    title: str | None = None,
) -> Figure:
    """OOD-detection AUROC with its interval, one panel per OOD set, grouped by method.

    ``aurocs`` maps an OOD set to ``{method: {score: (auroc, low, high)}}``, e.g.
    ``{"mmlu_college_physics": {"MLE + TS": {"max p": (0.61, 0.55, 0.67)}, ...}}``;
    ``low``/``high`` bound the error bar (a bootstrap interval for one seed, mean ∓ std
    for several). Within a method's group each score (max p, entropy, MI, ...) has its
    own colour, the same in every panel, so a reader compares one method's scores and
    one score across methods at a glance; the dashed line is chance (0.5).
    """
    check_results(aurocs, "aurocs")
    scores: list[str] = []
    for ood_set, methods in aurocs.items():
        if not isinstance(methods, Mapping) or not methods:
            raise ScalaBLError(
                f"aurocs[{ood_set!r}] is empty or not a mapping; pass "
                "{ood_set: {method: {score: (auroc, low, high)}}}"
            )
        for method, by_score in methods.items():
            if not isinstance(by_score, Mapping) or not by_score:
                raise ScalaBLError(
                    f"aurocs[{ood_set!r}][{method!r}] is empty or not a mapping; pass "
                    "{score: (auroc, low, high)}"
                )
            for score, vals in by_score.items():
                v = np.asarray(vals, dtype=float)
                if v.shape != (3,) or not np.all(np.isfinite(v)):
                    raise ScalaBLError(
                        f"aurocs[{ood_set!r}][{method!r}][{score!r}] is {vals!r}; pass three "
                        "finite numbers (auroc, low, high)"
                    )
                if not (v[1] <= v[0] <= v[2]) or v[1] < 0 or v[2] > 1:
                    raise ScalaBLError(
                        f"aurocs[{ood_set!r}][{method!r}][{score!r}] is {vals!r}; need "
                        "0 <= low <= auroc <= high <= 1"
                    )
                if score not in scores:
                    scores.append(str(score))
    colors = dict(zip(scores, palette(len(scores))))
    k = len(aurocs)
    n_methods = max(len(m) for m in aurocs.values())
    fig = Figure(figsize=(max(3.2, 0.9 * n_methods + 1.2) * k, 3.8), layout="constrained")
    axes = fig.subplots(1, k, squeeze=False, sharey=True)[0]
    width = 0.8 / len(scores)
    for ax, (ood_set, methods) in zip(axes, aurocs.items()):
        for i, by_score in enumerate(methods.values()):
            for j, score in enumerate(scores):
                if score not in by_score:
                    continue
                auc, lo, hi = (float(x) for x in by_score[score])
                x = i - 0.4 + width * (j + 0.5)
                ax.bar(x, auc, width=width * 0.9, color=colors[score], alpha=0.8)
                ax.errorbar(x, auc, yerr=[[auc - lo], [hi - auc]], color="black", lw=1, capsize=2)
        ax.axhline(0.5, color="gray", ls="--", lw=1)
        ax.set_xticks(range(len(methods)), list(methods), rotation=20, ha="right", fontsize=8)
        ax.set_title(str(ood_set), fontsize=10)
        ax.set_ylim(0, 1)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("AUROC (OOD vs in-distribution)")
    fig.legend(
        [Patch(color=colors[s], alpha=0.8) for s in scores],
        scores,
        loc="outside right upper",
        fontsize=8,
        frameon=False,
    )
    return finish(fig, title, path)
