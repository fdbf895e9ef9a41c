"""The OOD protocol's bar, read off a benchmark summary.

Issue 20's bar on the far-OOD sets: the recommended recipe's best OOD score
(the one with the highest mean AUROC) must have AUROC above the max-probability
AUROC of temperature-scaled MLE LoRA. :func:`far_ood_verdict` compares the two
summary rows of each far-OOD set. "Best" is read on the far-OOD numbers themselves;
:func:`near_ood_choice` is the stricter, a-priori pick: the score that separates
best on the near-OOD sets, fixed before the far-OOD sets are looked at.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from scalabl_pyro.errors import ScalaBLError
from scalabl_pyro.experiments.benchmark.spec import FAR_OOD, NEAR_OOD
from scalabl_pyro.experiments.benchmark.tables import OOD_SCORE_NAMES, best_ood_score


def _summary_row(summary: list[dict], method: str, ood_set: str) -> dict:
    """The one summary row of ``method`` on ``ood_set`` (a one-line error if none or several)."""
    found = [r for r in summary if r["method"] == method and r["eval"] == ood_set]
    if len(found) != 1:
        have = sorted({r["method"] for r in summary if r["eval"] == ood_set})
        what = "no" if not found else f"{len(found)}"
        raise ScalaBLError(
            f"the summary has {what} rows of {method!r} on {ood_set!r}; it has "
            f"{', '.join(have) or 'no method'} there (pass a method spec as the table writes it)"
        )
    return found[0]


def far_ood_verdict(
    summary: list[dict], recipe: str, baseline: str, sets: Sequence[str] = FAR_OOD
) -> dict[str, dict[str, Any]]:
    """Per far-OOD set: the recipe's best AUROC against the baseline's max-probability AUROC.

    ``summary`` is :func:`~scalabl_pyro.experiments.benchmark.tables.summarise`'s
    output; ``recipe`` and ``baseline`` are method specs as its rows name them
    (e.g. ``"scalabl[normalization=mean,init_scale=0.4]+ts"`` and ``"mle+ts"``).
    Each set maps to ``recipe_score`` (the recipe's score with the highest mean
    AUROC), ``recipe_auroc``, ``baseline_auroc``, ``margin`` (their
    difference), ``passed`` (``margin > 0``) and the seeds behind each side.
    """
    out: dict[str, dict[str, Any]] = {}
    for name in sets:
        rec, base = _summary_row(summary, recipe, name), _summary_row(summary, baseline, name)
        score = best_ood_score(rec)
        if score is None or "auroc_max_prob" not in base:
            raise ScalaBLError(
                f"the summary rows on {name!r} carry no OOD AUROC; build the table of an "
                "--protocol ood benchmark"
            )
        margin = rec[f"auroc_{score}"] - base["auroc_max_prob"]
        out[name] = {
            "recipe_score": score,
            "recipe_auroc": rec[f"auroc_{score}"],
            "baseline_auroc": base["auroc_max_prob"],
            "margin": margin,
            "passed": bool(margin > 0),
            "recipe_seeds": rec["seeds"],
            "baseline_seeds": base["seeds"],
        }
    return out


def near_ood_choice(summary: list[dict], method: str, sets: Sequence[str] = NEAR_OOD) -> str:
    """The OOD score of ``method`` with the highest AUROC averaged over the near-OOD ``sets``.

    A choice made without the far-OOD numbers, so judging it on the far-OOD sets
    is not a choice on the test numbers (the first score wins ties).
    """
    rows = [_summary_row(summary, method, name) for name in sets]
    have = [s for s in OOD_SCORE_NAMES if all(r.get(f"auroc_{s}") is not None for r in rows)]
    if not have:
        raise ScalaBLError(
            f"{method!r} has no OOD score with an AUROC on every near-OOD set ({', '.join(sets)}); "
            "build the table of an --protocol ood benchmark"
        )
    return max(have, key=lambda s: sum(r[f"auroc_{s}"] for r in rows) / len(rows))
