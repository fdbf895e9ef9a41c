"""The comparison's markdown and CSV tables (formatting only: rows in, text out)."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from typing import Any

#: (column, header, format) of the markdown table.
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("family", "guide", "{}"),
    ("seeds", "seeds", "{}"),
    ("acc", "ACC", "{:.3f}"),
    ("ece", "ECE", "{:.3f}"),
    ("nll", "NLL", "{:.3f}"),
    ("brier", "Brier", "{:.3f}"),
    ("heldout_elpd", "held-out elpd", "{:.1f}"),
    ("heldout_se", "SE", "{:.1f}"),
    ("khat_q", "k-hat q", "{:.2f}"),
    ("loo_elpd", "train LOO elpd", "{:.1f}"),
    ("loo_se", "SE", "{:.1f}"),
    ("loo_k", "LOO k good/ok/bad/very bad", "{}"),
    ("mean_std_s", "mean sd(s)", "{:.3f}"),
    ("max_abs_corr", "max abs corr", "{:.3f}"),
    ("variational_params", "var. params", "{:,}"),
    ("train_seconds", "train s", "{:.0f}"),
    ("diag_seconds", "diag s", "{:.0f}"),
)


def _cell(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    try:
        return fmt.format(value)
    except (ValueError, TypeError):
        return str(value)


def _fmt(row: dict[str, Any], key: str, fmt: str) -> str:
    text = _cell(row.get(key), fmt)
    sd = row.get(f"{key}_std")
    if sd is not None and text != "n/a" and isinstance(sd, float) and math.isfinite(sd):
        text += " ± " + _cell(sd, fmt)
    return text


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """The comparison as a markdown table (one row per family; mean ± std over seeds)."""
    head = "| " + " | ".join(h for _, h, _ in COLUMNS) + " |"
    sep = "|" + "|".join("---" if k == "family" else "---:" for k, _, _ in COLUMNS) + "|"
    lines = [head, sep]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r, k, f) for k, _, f in COLUMNS) + " |")
    return "\n".join(lines)


def csv_table(rows: Sequence[dict[str, Any]]) -> str:
    """The comparison as CSV (every scalar column of the rows)."""
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys and not isinstance(r[k], (dict, list))]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: r.get(k) for k in keys})
    return buf.getvalue()
