"""`scalabl compare` and `scalabl diagnose` end to end on a tiny local model."""

from __future__ import annotations

import json

import pytest
from test_cli import run_cli, tiny_dir  # noqa: F401  (fixture)

from scalabl_pyro.cli import main


def test_compare_then_diagnose_on_a_local_model(tiny_dir, tmp_path):  # noqa: F811
    model_dir, data = tiny_dir
    out = tmp_path / "cmp"
    common = ["--model", str(model_dir), "--dtype", "float32", "--data", str(data)]
    res = run_cli(
        "compare",
        *common,
        "--output",
        str(out),
        "--families",
        "mean_field,block",
        "--steps",
        "2",
        "--rank",
        "2",
        "--eval-limit",
        "6",
        "--samples",
        "3",
        "--diag-samples",
        "25",
        "--train-limit",
        "8",
        "--select-limit",
        "4",
        "--no-progress",
    )
    assert res.returncode == 0, res.stderr
    assert "| mean_field |" in res.stdout and "| block |" in res.stdout
    table = json.loads((out / "guide_comparison.json").read_text())
    assert [r["family"] for r in table["rows"]] == ["mean_field", "block"]
    assert table["command"].startswith("scalabl compare")
    assert (out / "guide_comparison_correlation.png").is_file()
    assert (out / "guide_comparison_loo_khat.png").is_file()
    row = {r["family"]: r for r in table["cells"]}["block"]
    assert row["khat_estimator"] == "exact" and row["num_train"] == 8
    assert sum(row["loo_k_counts"].values()) == 8  # every training question has a LOO k
    ckpt = out / "families" / "block" / "seed0" / "checkpoint"
    diag = tmp_path / "diag"
    res = run_cli(
        "diagnose",
        "--checkpoint",
        str(ckpt),
        "--output",
        str(diag),
        "--data",
        str(data),
        "--limit",
        "6",
        "--heldout",
        "train",
        "--heldout-limit",
        "5",
        "--samples",
        "30",
        "--no-progress",
    )
    assert res.returncode == 0, res.stderr
    for name in (
        "posterior_vs_prior",
        "posterior_scales",
        "posterior_correlation",
        "posterior_density",
        "posterior_pair",
        "elbo_traces",
        "loo_khat",
    ):
        assert (diag / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    report = json.loads((diag / "diagnostics.json").read_text())
    assert report["num_train"] == 6 and report["khat_q"]["estimator"] == "exact"
    assert report["loo"]["elpd"] < 0 and sum(report["loo"]["k_counts"].values()) == 6
    assert report["heldout"]["num_data"] == 5 and report["heldout"]["num_draws"] == 10
    assert "k-hat of q:" in res.stdout and "training PSIS-LOO elpd" in res.stdout
    assert "mean" in (diag / "summary.csv").read_text().splitlines()[0]


def test_compare_and_diagnose_refuse_bad_input(tmp_path, capsys):
    assert main(["compare", "--output", str(tmp_path / "x"), "--families", "mean_field,nope"]) == 2
    assert "unknown guide family 'nope'" in capsys.readouterr().err
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    assert main(["compare", "--output", str(busy)]) == 2
    assert "was not written by this command" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["compare", "--output", str(tmp_path / "y"), "--diag-samples", "5"])
    assert exc.value.code == 2
    assert "--diag-samples: must be a whole number >= 25" in capsys.readouterr().err
    assert main(["diagnose", "--checkpoint", str(tmp_path / "none"), "--output", "d"]) == 2
    assert "does not exist" in capsys.readouterr().err
