"""Guide-family comparison end to end on a tiny model: table, files, figures, resume."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from scalabl_testutils import toy_dataset

from scalabl_pyro import comparison
from scalabl_pyro.comparison import CompareConfig, compare_guides
from scalabl_pyro.errors import ScalaBLError
from scalabl_pyro.guides import expected_num_parameters
from scalabl_pyro.testing import tiny_model_and_tokenizer


def _cfg(out, **kw):
    base = dict(
        families=("mean_field", "full_rank", "block", "mle"),
        base_model="tiny",
        dtype="float32",
        rank=4,
        steps=2,
        num_samples=4,
        khat_samples=25,
        khat_subset=4,
        diag_samples=50,
        output_dir=str(out),
    )
    base.update(kw)
    return CompareConfig(**base)


def test_compare_writes_tables_and_figures_and_resumes(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path / "cmp")
    kw = dict(train=toy_dataset(8), validation=toy_dataset(6), load_base=tiny_model_and_tokenizer)
    result = compare_guides(cfg, command="pytest", **kw)
    rows = {r["family"]: r for r in result.rows}
    assert list(rows) == list(cfg.families)
    for fam, r in rows.items():
        assert r["variational_params"] == expected_num_parameters(fam, 4, 4)
        assert 0 <= r["acc"] <= 1 and r["nll"] > 0 and r["train_seconds"] > 0
        assert r["peak_rss_mib"] > 0
    assert rows["mle"]["khat_q"] is None and rows["mle"]["elpd_loo"] is None
    assert rows["mean_field"]["max_abs_corr"] == 0.0  # mean-field cannot correlate
    assert rows["block"]["corr_exact"] and rows["full_rank"]["corr_exact"]
    # full-rank and block start uncorrelated: every correlation they have, training made
    for fam in ("full_rank", "block"):
        assert rows[fam]["max_abs_corr_init"] == 0.0
        assert rows[fam]["corr_change"] == pytest.approx(rows[fam]["max_abs_corr"])
    assert len(result.loo_compare) == 3  # the point mass has one draw: no LOO
    out = tmp_path / "cmp"
    md = (out / "guide_comparison.md").read_text()
    assert "| mean_field |" in md and "Command: `pytest`" in md
    with open(out / "guide_comparison.csv") as fh:
        assert [r["family"] for r in csv.DictReader(fh)] == list(cfg.families)
    data = json.loads((out / "guide_comparison.json").read_text(), parse_constant=_no_nan)
    assert data["config"]["steps"] == 2 and len(data["rows"]) == 4
    for key in ("metrics", "khat", "traces", "scales", "correlation"):
        assert Path(result.files[key]).read_bytes()[:4] == b"\x89PNG"

    # a re-run loads every finished family instead of fitting it again
    def refit(*a, **k):
        raise AssertionError("a finished family was fitted again")

    monkeypatch.setattr(comparison, "_fit_family", refit)
    again = compare_guides(cfg, **kw)
    assert [r["acc"] for r in again.rows] == [r["acc"] for r in result.rows]


def _no_nan(token):
    raise AssertionError(f"non-strict JSON constant {token}")


def test_compare_config_rejects_bad_families():
    with pytest.raises(ScalaBLError, match="unknown guide family"):
        CompareConfig(families=("mean_field", "nope"))
    with pytest.raises(ScalaBLError, match="repeat"):
        CompareConfig(families=("block", "block"))
