"""What a comparison measured: one :class:`FamilyResult` per (family, seed), their
summary over seeds and the held-out elpd differences paired by question.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from scalabl_pyro.diagnostics.importance import ElpdResult, heldout_elpd, paired_difference
from scalabl_pyro.experiments.comparison.config import CompareConfig
from scalabl_pyro.experiments.comparison.tables import markdown_table


@dataclass
class FamilyResult:
    """Everything measured for one (family, seed): scalars in ``row``, arrays beside them."""

    family: str
    seed: int
    row: dict[str, Any]
    history: dict
    layers: list[str]
    arrays: dict[str, np.ndarray]

    @property
    def heldout(self) -> ElpdResult:
        """The BMA's elpd on the report questions."""
        return heldout_elpd(self.arrays["heldout_log_lik"])

    @property
    def draws(self) -> np.ndarray:
        """(S, L, r) draws of q (the diagnostics' draws)."""
        return self.arrays["draws"]

    def inference_data(self) -> Any:
        """An InferenceData of this fit: draws of q, training log-likelihoods and log weights."""
        from scalabl_pyro.diagnostics.posterior import history_arrays, inference_data_from_arrays

        a = self.arrays
        return inference_data_from_arrays(
            a["draws"][None],
            self.layers,
            prior=a["prior"][None] if "prior" in a else None,
            log_likelihood=a["train_log_lik"][None] if "train_log_lik" in a else None,
            histories=[history_arrays(self.history)],
            log_weights=a["log_weights"][None] if "log_weights" in a else None,
            attrs={"family": self.family, "seed": self.seed},
        )


@dataclass
class ComparisonResult:
    """All (family, seed) results, the summary rows, paired differences and files."""

    config: CompareConfig
    cells: dict[tuple[str, int], FamilyResult]
    files: dict[str, str] = field(default_factory=dict)

    @property
    def families(self) -> dict[str, FamilyResult]:
        """The first seed's result of every family (figures, notebooks)."""
        s0 = self.config.seeds[0]
        return {f: self.cells[(f, s0)] for f in self.config.families}

    @property
    def rows(self) -> list[dict[str, Any]]:
        """One summary row per family (mean over seeds; std where there are several)."""
        return summary_rows(self)

    def paired(self) -> list[dict[str, Any]]:
        """Held-out elpd of every family minus the first family's, per seed, paired by question."""
        return paired_rows(self)

    def table(self) -> str:
        """The markdown table."""
        return markdown_table(self.rows)


#: Scalars averaged over seeds in the summary (std reported beside the mean).
_MEAN_KEYS = (
    "acc",
    "ece",
    "nll",
    "brier",
    "heldout_elpd",
    "khat_q",
    "loo_elpd",
    "mean_std_s",
    "mean_abs_s",
    "max_abs_corr",
    "corr_change",
    "train_seconds",
    "eval_seconds",
    "diag_seconds",
    "final_neg_elbo",
    "final_kl",
)


def summary_rows(result: ComparisonResult) -> list[dict[str, Any]]:
    """One row per family: means over seeds (``<key>_std`` beside them with several seeds)."""
    out = []
    for fam in result.config.families:
        cells = [result.cells[(fam, s)] for s in result.config.seeds if (fam, s) in result.cells]
        if not cells:
            continue
        row: dict[str, Any] = {"family": fam, "seeds": len(cells)}
        for key in _MEAN_KEYS:
            vals = [c.row.get(key) for c in cells]
            vals = [float(v) for v in vals if v is not None and math.isfinite(float(v))]
            row[key] = float(np.mean(vals)) if vals else None
            if len(vals) > 1:
                row[f"{key}_std"] = float(np.std(vals, ddof=1))
        row["heldout_se"] = _pooled_se([c.row.get("heldout_se") for c in cells])
        row["loo_se"] = _pooled_se([c.row.get("loo_se") for c in cells])
        bands = ("good", "ok", "bad", "very_bad")
        if all(c.row.get("loo_k_counts") for c in cells):
            counts = {b: sum(int(c.row["loo_k_counts"][b]) for c in cells) for b in bands}
            row["loo_k_counts"] = counts
            row["loo_k"] = "/".join(str(counts[b]) for b in bands)
        else:
            row["loo_k"] = None
        for key in ("variational_params", "lora_params", "latent_dim", "khat_estimator"):
            row[key] = cells[0].row.get(key)
        row["khat_q_max"] = max(
            (float(c.row["khat_q"]) for c in cells if c.row.get("khat_q") is not None),
            default=None,
        )
        out.append(row)
    return out


def _pooled_se(ses: Sequence[Any]) -> float | None:
    """SE of the mean over seeds of independent estimates: sqrt(sum se^2) / k."""
    vals = [float(v) for v in ses if v is not None]
    if not vals or len(vals) != len(ses):
        return None
    return float(math.sqrt(sum(v * v for v in vals)) / len(vals))


def paired_rows(result: ComparisonResult) -> list[dict[str, Any]]:
    """Held-out elpd differences to the first family, paired by question, per seed and pooled."""
    fams = result.config.families
    ref = fams[0]
    rows = []
    for fam in fams[1:]:
        per_seed, diffs, ses = [], [], []
        for s in result.config.seeds:
            a, b = result.cells.get((fam, s)), result.cells.get((ref, s))
            if a is None or b is None:
                continue
            d = paired_difference(a.heldout, b.heldout)
            per_seed.append({"seed": s, **d})
            diffs.append(d["elpd_diff"])
            ses.append(d["dse"])
        if not per_seed:
            continue
        k = len(diffs)
        rows.append(
            {
                "family": fam,
                "versus": ref,
                "elpd_diff": float(np.mean(diffs)),
                "dse": float(math.sqrt(sum(x * x for x in ses)) / k),
                "seeds": per_seed,
            }
        )
    return rows
