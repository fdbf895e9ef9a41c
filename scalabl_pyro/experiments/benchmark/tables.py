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


def cell_rows(
    spec: MethodSpec, meta: dict, arrays: dict[str, np.ndarray], n_bins: int
) -> list[dict]:
    """One row per report split of one cell (temperature-scaled when the spec says +ts)."""
    from scalabl_pyro.evaluation.metrics import ood_detection, ood_scores

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
        if temp is not None:
            row["temperature"] = temp
        if name != in_task and f"report/{in_task}/slp" in arrays:
            s_in = ood_scores(np.exp(arrays[f"report/{in_task}/slp"].astype(np.float64)))
            s_out = ood_scores(np.exp(slp))
            for score in ("max_prob", "entropy", "mutual_information"):
                if score in s_in:
                    row[f"auroc_{score}"] = ood_detection(s_in[score], s_out[score]).auroc
        rows.append(row)
    return rows


#: Metrics summarised in the table (mean +- std over seeds), in this order.
TABLE_METRICS = ("acc", "ece", "nll", "brier", "aurc", "mutual_information")


OOD_METRICS = ("auroc_max_prob", "auroc_entropy", "auroc_mutual_information")


def summarise(rows: list[dict]) -> list[dict]:
    """Group rows by (method, task, eval) and take mean and std over seeds."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["method"], r["task"], r["eval"]), []).append(r)
    out = []
    for (method, task, ev), rs in groups.items():
        s = {"method": method, "task": task, "eval": ev, "seeds": len(rs)}
        for k in TABLE_METRICS + OOD_METRICS + ("train_seconds",):
            vals = [r[k] for r in rs if k in r and r[k] is not None]
            if vals:
                s[k] = float(np.mean(vals))
                s[f"{k}_std"] = float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
        s["extra_parameters"] = rs[0]["extra_parameters"]
        out.append(s)
    return out


def _pm(row: dict, key: str, scale: float = 1.0, digits: int = 3) -> str:
    if key not in row:
        return "–"
    m, sd = row[key] * scale, row.get(f"{key}_std", 0.0) * scale
    return f"{m:.{digits}f} ± {sd:.{digits}f}" if row["seeds"] > 1 else f"{m:.{digits}f}"


def markdown_table(summary: list[dict]) -> str:
    """The summary as a markdown table (ECE in %, mean ± std over seeds)."""
    ood = any(k in r for r in summary for k in OOD_METRICS)
    head = ["method", "train", "eval", "seeds", "ACC", "ECE %", "NLL", "Brier", "AURC", "MI"]
    head += ["AUROC (MI)", "AUROC (max p)"] if ood else []
    head += ["extra params"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in summary:
        cells = [r["method"], r["task"], r["eval"], str(r["seeds"]), _pm(r, "acc")]
        cells += [_pm(r, "ece", 100, 1), _pm(r, "nll"), _pm(r, "brier"), _pm(r, "aurc")]
        cells += [_pm(r, "mutual_information", 1, 4)]
        if ood:
            cells += [_pm(r, "auroc_mutual_information"), _pm(r, "auroc_max_prob")]
        cells += [f"{r['extra_parameters']:,}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_table(root: Path, cfg: BenchmarkConfig, rows: list[dict], summary: list[dict]) -> None:
    """``table.md``, ``table.csv`` (per seed) and ``table.json`` (both), each atomically."""
    write_text_atomic(root / "table.md", markdown_table(summary))
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
