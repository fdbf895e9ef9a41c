"""Guide-family comparison end to end on a tiny model: table, files, figures, resume."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from scalabl_testutils import toy_dataset

from scalabl_pyro.errors import ScalaBLError
from scalabl_pyro.experiments import comparison
from scalabl_pyro.experiments.comparison import CompareConfig, compare_guides
from scalabl_pyro.program.guides import expected_num_parameters
from scalabl_pyro.testing import tiny_model_and_tokenizer


def _cfg(out, **kw):
    base = dict(
        families=("mean_field", "full_rank", "block", "mle"),
        base_model="tiny",
        dtype="float32",
        rank=4,
        steps=2,
        num_samples=4,
        diag_samples=25,
        output_dir=str(out),
    )
    base.update(kw)
    return CompareConfig(**base)


def test_compare_writes_tables_and_figures_and_resumes(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path / "cmp", seeds=(0, 1))
    kw = dict(train=toy_dataset(8), report=toy_dataset(6), load_base=tiny_model_and_tokenizer)
    result = compare_guides(cfg, command="pytest", **kw)
    rows = {r["family"]: r for r in result.rows}
    assert list(rows) == list(cfg.families)
    cells = {(f, s): c.row for (f, s), c in result.cells.items()}
    assert set(cells) == {(f, s) for f in cfg.families for s in (0, 1)}
    for fam, r in rows.items():
        assert r["variational_params"] == expected_num_parameters(fam, 4, 4)
        assert 0 <= r["acc"] <= 1 and r["nll"] > 0 and r["train_seconds"] > 0
        assert r["seeds"] == 2 and "acc_std" in r
    # a point mass has no density: no k-hat, no LOO; the others score all 8 training questions
    assert rows["mle"]["khat_q"] is None and rows["mle"]["loo_k"] is None
    for fam in ("mean_field", "full_rank", "block"):
        assert sum(rows[fam]["loo_k_counts"].values()) == 2 * 8  # 8 questions, 2 seeds
        assert cells[(fam, 0)]["khat_estimator"] == "exact"
    # held-out elpd: the BMA's log density, from the stored per-draw log-likelihoods
    held = result.cells[("block", 1)]
    ll = held.arrays["heldout_log_lik"]
    bma = np.log(np.exp(ll).mean(0)).sum()
    assert held.row["heldout_elpd"] == pytest.approx(bma)
    assert held.row["nll"] == pytest.approx(-bma / 6, rel=1e-6)
    paired = {p["family"]: p for p in result.paired()}
    assert set(paired) == {"full_rank", "block", "mle"}
    one = paired["block"]["seeds"][1]
    d = held.arrays["heldout_log_lik"]
    ref = result.cells[("mean_field", 1)].arrays["heldout_log_lik"]
    diff_i = np.log(np.exp(d).mean(0)) - np.log(np.exp(ref).mean(0))
    assert one["elpd_diff"] == pytest.approx(diff_i.sum())
    assert one["dse"] == pytest.approx(np.sqrt(6 * np.var(diff_i)))
    assert cells[("mean_field", 0)]["max_abs_corr"] == 0.0  # mean-field cannot correlate
    assert cells[("block", 0)]["corr_exact"] and cells[("full_rank", 0)]["corr_exact"]
    # full-rank and block start uncorrelated: every correlation they have, training made
    for fam in ("full_rank", "block"):
        assert cells[(fam, 0)]["max_abs_corr_init"] == 0.0
        assert cells[(fam, 0)]["corr_change"] == pytest.approx(cells[(fam, 0)]["max_abs_corr"])
    out = tmp_path / "cmp"
    md = (out / "guide_comparison.md").read_text()
    assert "| mean_field |" in md and "Command: `pytest`" in md and "paired by question" in md
    with open(out / "guide_comparison.csv") as fh:
        assert [r["family"] for r in csv.DictReader(fh)] == list(cfg.families)
    data = json.loads((out / "guide_comparison.json").read_text(), parse_constant=_no_nan)
    assert data["config"]["steps"] == 2 and len(data["rows"]) == 4 and len(data["cells"]) == 8
    for key in ("metrics", "khat", "traces", "scales", "correlation", "loo_khat"):
        assert Path(result.files[key]).read_bytes()[:4] == b"\x89PNG"

    # a re-run loads every finished cell instead of fitting it again
    def refit(*a, **k):
        raise AssertionError("a finished family was fitted again")

    monkeypatch.setattr(comparison.run, "_fit_family", refit)
    again = compare_guides(cfg, **kw)
    assert [r["acc"] for r in again.rows] == [r["acc"] for r in result.rows]
    # ... but never one made with other settings: a quick run's cells are refused
    other = _cfg(tmp_path / "cmp", seeds=(0, 1), init_scale=0.05)
    with pytest.raises(ScalaBLError, match="init_scale=None, not 0.05"):
        compare_guides(other, **kw)


def test_a_damaged_cell_is_fitted_again(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path / "cmp", families=("mean_field",))
    kw = dict(train=toy_dataset(8), report=toy_dataset(6), load_base=tiny_model_and_tokenizer)
    compare_guides(cfg, figures=False, **kw)
    cell = comparison.cell_dir(tmp_path / "cmp", "mean_field", 0)
    (cell / comparison.ARRAYS_FILE).write_bytes(b"PK\x03")  # truncated
    calls = []
    real = comparison.run._fit_family
    monkeypatch.setattr(comparison.run, "_fit_family", lambda *a: calls.append(a) or real(*a))
    compare_guides(cfg, figures=False, **kw)
    assert len(calls) == 1


def _no_nan(token):
    raise AssertionError(f"non-strict JSON constant {token}")


def test_compare_config_rejects_bad_families():
    with pytest.raises(ScalaBLError, match="unknown guide family"):
        CompareConfig(families=("mean_field", "nope"))
    with pytest.raises(ScalaBLError, match="repeat"):
        CompareConfig(families=("block", "block"))
