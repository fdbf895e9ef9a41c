"""benchmarks/khat_decomposition.py: the split of sd(log w) into its two parts, by hand."""

from __future__ import annotations

import numpy as np
import pytest
from scalabl_testutils import load_benchmark_script

kd = load_benchmark_script("khat_decomposition")


def test_decompose_splits_log_w_into_prior_over_q_and_likelihood(tmp_path):
    rng = np.random.default_rng(0)
    s = 200
    arrays = {
        "log_prior": rng.normal(0, 3, s),
        "log_q": rng.normal(0, 1, s),
        "train_log_lik": rng.normal(-1, 0.5, (s, 8)),
        "draws": rng.normal(0, 0.5, (s, 4, 2)),
    }
    out = kd.decompose(arrays)
    prior_q = arrays["log_prior"] - arrays["log_q"]
    lik = arrays["train_log_lik"].sum(1)
    assert out["sd_log_w"] == pytest.approx(np.std(prior_q + lik))
    assert out["sd_log_prior_minus_log_q"] == pytest.approx(np.std(prior_q))
    assert out["sd_log_lik_sum"] == pytest.approx(np.std(lik))
    assert 0.4 < out["sd_s_median"] < 0.6
    cell = tmp_path / "arc_easy" / "families" / "mean_field" / "seed0"
    cell.mkdir(parents=True)
    np.savez(cell / "arrays.npz", **arrays)
    point = tmp_path / "arc_easy" / "families" / "mle" / "seed0"
    point.mkdir(parents=True)
    np.savez(point / "arrays.npz", draws=arrays["draws"])  # no density: skipped
    result = kd.main(["--root", str(tmp_path)])
    assert [(r["task"], r["family"], r["seed"]) for r in result["rows"]] == [
        ("arc_easy", "mean_field", 0)
    ]
    assert (tmp_path / "khat_decomposition.md").read_text().count("| arc_easy |") == 1
