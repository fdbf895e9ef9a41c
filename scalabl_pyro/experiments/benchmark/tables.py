"""The table: rows per report split of each cell, mean ± std over seeds, markdown/CSV/JSON.

Rows are always recomputed from the saved arrays, so a table never holds a
number its cells do not; ``+ts`` specs fit the temperature here, on the
selection split of the trained cell.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

from scalabl_pyro.experiments.benchmark.cells import _json_default, split_metrics
from scalabl_pyro.experiments.benchmark.spec import BenchmarkConfig, MethodSpec
from scalabl_pyro.utils.atomic import write_text_atomic


def _temperature_scaled(arrays: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], float]:
    """Fit T on the selection split's draws; temper every split's draws with it.

    Each draw's log-probabilities are divided by T before the average
    (:func:`~scalabl_pyro.inference.temperature.fit_bma_temperature`), so a Bayesian
    method keeps its draws and its MI after scaling.
    """
    from scalabl_pyro.inference.temperature import fit_bma_temperature, tempered_draws

    temp = fit_bma_temperature(
        arrays["selection/slp"].astype(np.float64), arrays["selection/labels"]
    )
    out = dict(arrays)
    for key in {k.rsplit("/", 1)[0] for k in arrays}:
        out[f"{key}/slp"] = tempered_draws(arrays[f"{key}/slp"].astype(np.float64), temp)
    return out, temp


#: OOD scores of the shifted-set rows (MI only for a method with more than one draw).
OOD_SCORE_NAMES = ("max_prob", "entropy", "mutual_information")

#: Bootstrap resamples (of the in-distribution and the shifted set, independently)
#: behind each OOD interval, and the interval's coverage and seed.
OOD_BOOT, OOD_LEVEL, OOD_BOOT_SEED = 1000, 0.95, 0


def row_arrays(root: Path, spec: str, task: str, seed: int) -> tuple[dict, dict] | None:
    """The saved cell behind one table row: ``(meta, arrays)``, or None when not run.

    ``spec`` is the row's method as the table names it; a ``+ts`` row's arrays are
    the cell's draws tempered by the T fitted on its selection split, as in the table.
    """
    from scalabl_pyro.experiments.benchmark.cells import cell_path, load_cell

    path = cell_path(root, spec.removesuffix("+ts"), task, seed)
    if not path.is_file():
        return None
    meta, arrays = load_cell(path)
    if spec.endswith("+ts"):
        arrays, _ = _temperature_scaled(arrays)
    return meta, arrays


def ood_columns(slp_in: np.ndarray, slp_out: np.ndarray) -> dict[str, float | str]:
    """AUROC and FPR95 of each OOD score, with bootstrap bounds, and the best score's name.

    ``slp_in`` and ``slp_out`` are the (S, N, C) log-probabilities of the
    in-distribution test set and one shifted set. Keys: ``auroc_<score>``,
    ``fpr95_<score>``, each with ``_low`` and ``_high`` (the percentile
    bootstrap interval of :func:`~scalabl_pyro.evaluation.metrics.ood_detection_ci`),
    and ``best_ood_score``, the score with the highest AUROC.
    """
    from scalabl_pyro.evaluation.metrics import ood_detection_ci, ood_scores

    s_in, s_out = ood_scores(np.exp(slp_in)), ood_scores(np.exp(slp_out))
    names = OOD_SCORE_NAMES if min(slp_in.shape[0], slp_out.shape[0]) > 1 else OOD_SCORE_NAMES[:2]
    out: dict[str, float | str] = {}
    for score in names:
        ci = ood_detection_ci(
            s_in[score], s_out[score], n_boot=OOD_BOOT, level=OOD_LEVEL, seed=OOD_BOOT_SEED
        )
        out[f"auroc_{score}"] = ci.auroc
        out[f"auroc_{score}_low"], out[f"auroc_{score}_high"] = ci.auroc_low, ci.auroc_high
        out[f"fpr95_{score}"] = ci.fpr_at_tpr
        out[f"fpr95_{score}_low"], out[f"fpr95_{score}_high"] = ci.fpr_low, ci.fpr_high
    out["best_ood_score"] = best_ood_score(out)
    return out


def best_ood_score(row: dict) -> str | None:
    """The OOD score with the highest ``auroc_<score>`` in ``row`` (the first on ties), or None."""
    have = [s for s in OOD_SCORE_NAMES if row.get(f"auroc_{s}") is not None]
    return max(have, key=lambda s: row[f"auroc_{s}"]) if have else None


def cell_rows(
    spec: MethodSpec, meta: dict, arrays: dict[str, np.ndarray], n_bins: int
) -> list[dict]:
    """One row per report split of one cell (temperature-scaled when the spec says +ts).

    A shifted set's row (the *ood* protocol) adds :func:`ood_columns` against
    the in-distribution report split.
    """
    temp = None
    if spec.temperature:
        arrays, temp = _temperature_scaled(arrays)
    reports = sorted(
        k.split("/")[1] for k in arrays if k.startswith("report/") and k.endswith("/slp")
    )
    rows = []
    in_task = meta["task"]
    for name in reports:
        slp = arrays[f"report/{name}/slp"].astype(np.float64)
        row = {
            "method": spec.spec,
            "task": in_task,
            "eval": name,
            "seed": meta["seed"],
            **split_metrics(slp, arrays[f"report/{name}/labels"], n_bins),
            "extra_parameters": meta["extra_parameters"],
            "train_seconds": meta["train_seconds"],
        }
        predict = meta.get("predict_seconds", {}).get(f"report/{name}")
        if predict is not None:  # seconds for this split's BMA (all its draws)
            row["predict_seconds"] = predict
        if temp is not None:
            row["temperature"] = temp
        if name != in_task and f"report/{in_task}/slp" in arrays:
            row.update(ood_columns(arrays[f"report/{in_task}/slp"].astype(np.float64), slp))
        rows.append(row)
    return rows


#: Metrics summarised in the table (mean +- std over seeds), in this order.
TABLE_METRICS = ("acc", "ece", "nll", "brier", "aurc", "mutual_information")


#: OOD-detection columns of a shifted set's row, averaged over seeds by :func:`summarise`.
OOD_METRICS = tuple(
    f"{metric}_{score}{bound}"
    for metric in ("auroc", "fpr95")
    for score in OOD_SCORE_NAMES
    for bound in ("", "_low", "_high")
)


def summarise(rows: list[dict]) -> list[dict]:
    """Group rows by (method, task, eval) and take mean and std over seeds.

    Bootstrap bounds (``*_low``, ``*_high``) are averaged without a std;
    ``best_ood_score`` is the score with the highest mean AUROC.
    """
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["method"], r["task"], r["eval"]), []).append(r)
    out = []
    for (method, task, ev), rs in groups.items():
        s = {"method": method, "task": task, "eval": ev, "seeds": len(rs)}
        for k in TABLE_METRICS + OOD_METRICS + ("train_seconds", "predict_seconds"):
            vals = [r[k] for r in rs if k in r and r[k] is not None]
            if vals:
                s[k] = float(np.mean(vals))
                if not k.endswith(("_low", "_high")):
                    s[f"{k}_std"] = float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
        if (best := best_ood_score(s)) is not None:
            s["best_ood_score"] = best
        s["extra_parameters"] = rs[0]["extra_parameters"]
        out.append(s)
    return out


def _pm(row: dict, key: str, scale: float = 1.0, digits: int = 3) -> str:
    if key not in row:
        return "–"
    m, sd = row[key] * scale, row.get(f"{key}_std", 0.0) * scale
    return f"{m:.{digits}f} ± {sd:.{digits}f}" if row["seeds"] > 1 else f"{m:.{digits}f}"


def markdown_table(summary: list[dict]) -> str:
    """The summary as a markdown table (ECE in %, mean ± std over seeds).

    ``train s`` is the cell's wall time to train, ``predict s`` its BMA over the
    report split (every draw); both on the machine ``benchmark.json`` records.
    """
    ood = any(k in r for r in summary for k in OOD_METRICS)
    head = ["method", "train", "eval", "seeds", "ACC", "ECE %", "NLL", "Brier", "AURC", "MI"]
    head += ["AUROC (MI)", "AUROC (max p)"] if ood else []
    head += ["extra params", "train s", "predict s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in summary:
        cells = [r["method"], r["task"], r["eval"], str(r["seeds"]), _pm(r, "acc")]
        cells += [_pm(r, "ece", 100, 1), _pm(r, "nll"), _pm(r, "brier"), _pm(r, "aurc")]
        cells += [_pm(r, "mutual_information", 1, 4)]
        if ood:
            cells += [_pm(r, "auroc_mutual_information"), _pm(r, "auroc_max_prob")]
        cells += [f"{r['extra_parameters']:,}"]
        cells += [_pm(r, "train_seconds", 1, 0), _pm(r, "predict_seconds", 1, 0)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


#: Header words of the OOD table's score columns.
_SCORE_LABELS = {"max_prob": "max p", "entropy": "entropy", "mutual_information": "MI"}


def _with_ci(row: dict, key: str) -> str:
    """``mean ± std`` over seeds, or for one seed ``value [low, high]`` (the bootstrap CI)."""
    if key not in row:
        return "–"
    if row["seeds"] > 1:
        return f"{row[key]:.3f} ± {row.get(f'{key}_std', 0.0):.3f}"
    lo, hi = row.get(f"{key}_low"), row.get(f"{key}_high")
    return f"{row[key]:.3f}" if lo is None else f"{row[key]:.3f} [{lo:.3f}, {hi:.3f}]"


def ood_caption() -> str:
    """The OOD table's caption: what is detected, and what ``±`` and ``[..]`` mean."""
    return (
        "OOD detection of each shifted set against the in-distribution test set (OOD is "
        "the positive class): AUROC (higher is better) and FPR95, the in-distribution "
        "fraction flagged at 95 % TPR (lower is better). ACC, ECE and NLL are on the "
        "shifted set. One seed: value [95 % percentile-bootstrap CI, "
        f"{OOD_BOOT} resamples of both sets]; several seeds: mean ± sample std over "
        "seeds. MI is – for a method with one draw; best: the score with the highest AUROC."
    )


def ood_markdown_table(summary: list[dict]) -> str:
    """The shifted-set rows of the summary as a markdown table, one per (method, set).

    A caption line, then ACC, ECE %, NLL and, per score (max p, entropy, MI),
    AUROC and FPR95: with the bootstrap CI for one seed, mean ± std for several.
    """
    head = ["method", "train", "OOD set", "seeds", "ACC", "ECE %", "NLL"]
    for score in OOD_SCORE_NAMES:
        head += [f"AUROC ({_SCORE_LABELS[score]})", f"FPR95 ({_SCORE_LABELS[score]})"]
    head += ["best"]
    lines = [ood_caption(), "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in summary:
        if not any(k in r for k in OOD_METRICS):
            continue
        cells = [r["method"], r["task"], r["eval"], str(r["seeds"]), _pm(r, "acc")]
        cells += [_pm(r, "ece", 100, 1), _pm(r, "nll")]
        for score in OOD_SCORE_NAMES:
            cells += [_with_ci(r, f"auroc_{score}"), _with_ci(r, f"fpr95_{score}")]
        cells += [_SCORE_LABELS.get(r.get("best_ood_score"), "–")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_table(root: Path, cfg: BenchmarkConfig, rows: list[dict], summary: list[dict]) -> None:
    """``table.md``, ``table.csv`` (per seed) and ``table.json`` (both), each atomically.

    With OOD rows (the *ood* protocol) also ``ood_table.md`` (:func:`ood_markdown_table`).
    """
    write_text_atomic(root / "table.md", markdown_table(summary))
    if any(k in r for r in summary for k in OOD_METRICS):
        write_text_atomic(root / "ood_table.md", ood_markdown_table(summary))
    buf = io.StringIO()
    keys = sorted(
        {k for r in rows for k in r}, key=lambda k: (k not in ("method", "task", "eval", "seed"), k)
    )
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    w.writerows(rows)
    write_text_atomic(root / "table.csv", buf.getvalue())
    doc = {
        "settings": cfg.fingerprint(),
        "methods": list(cfg.methods),
        "summary": summary,
        "rows": rows,
    }
    write_text_atomic(root / "table.json", json.dumps(doc, indent=1, default=_json_default))
