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
        "--khat-samples",
        "25",
        "--khat-subset",
        "3",
        "--no-progress",
    )
    assert res.returncode == 0, res.stderr
    assert "| mean_field |" in res.stdout and "| block |" in res.stdout
    table = json.loads((out / "guide_comparison.json").read_text())
    assert [r["family"] for r in table["rows"]] == ["mean_field", "block"]
    assert table["command"].startswith("scalabl compare")
    assert (out / "guide_comparison_correlation.png").is_file()
    ckpt = out / "families" / "block" / "checkpoint"
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
    ):
        assert (diag / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    loo = json.loads((diag / "loo.json").read_text())
    assert loo["elpd_loo"] < 0
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
        main(["compare", "--output", str(tmp_path / "y"), "--khat-samples", "5"])
    assert exc.value.code == 2
    assert "--khat-samples: must be a whole number >= 25" in capsys.readouterr().err
    assert main(["diagnose", "--checkpoint", str(tmp_path / "none"), "--output", "d"]) == 2
    assert "does not exist" in capsys.readouterr().err
