"""The benchmark grid: spec parsing, resumable cells, tables, temperature rows, protocols."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from scalabl_pyro.cli.benchmark import split_specs
from scalabl_pyro.errors import ScalaBLError
from scalabl_pyro.evaluation.metrics import classification_metrics
from scalabl_pyro.experiments.benchmark import (
    BenchmarkConfig,
    _bma_log_probs,
    build_table,
    cell_path,
    load_cell,
    markdown_table,
    parse_method,
    rebuild_table,
    run_benchmark,
    split_metrics,
    summarise,
)
from scalabl_pyro.inference.temperature import apply_temperature, fit_temperature
from scalabl_pyro.testing import tiny_model_and_tokenizer


def test_parse_method_overrides_and_temperature():
    spec = parse_method("scalabl[kl_weight=10,init_scale=0.2,samples=4,normalization=mean]+ts")
    assert spec.name == "scalabl" and spec.temperature
    assert spec.model == {"guide": "mean_field", "init_scale": 0.2, "normalization": "mean"}
    assert spec.train == {"kl_weight": 10}
    assert spec.samples == 4
    assert spec.trained == "scalabl[kl_weight=10,init_scale=0.2,samples=4,normalization=mean]"
    assert parse_method("mle").model == {"method": "mle"}
    assert parse_method("mle").samples == 1 and not parse_method("mle").temperature
    assert parse_method("scalabl[prior_scale=none]").model["prior_scale"] is None


@pytest.mark.parametrize(
    "bad, words",
    [
        ("nope", "unknown method"),
        ("mle[lr]", "not key=value"),
        ("mle[zzz=1]", "neither a ScalaBLConfig"),
        ("mle[samples=0]", "samples must be"),
        ("mle+tss", "malformed"),
    ],
)
def test_parse_method_errors_name_the_problem(bad, words):
    with pytest.raises(ScalaBLError, match=words):
        parse_method(bad)


def test_split_specs_respects_brackets():
    assert split_specs("mle,scalabl[a=1,b=2]+ts, full_rank") == [
        "mle",
        "scalabl[a=1,b=2]+ts",
        "full_rank",
    ]
    with pytest.raises(ScalaBLError, match="malformed"):
        split_specs("mle,scalabl[a=1")


def test_split_metrics_match_the_metrics_module():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(5, 30, 4))
    slp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    labels = rng.integers(0, 4, 30)
    out = split_metrics(slp, labels)
    probs = np.exp(slp).mean(0)
    ref = classification_metrics(probs, labels)
    for k in ("acc", "ece", "nll", "brier"):
        assert out[k] == pytest.approx(ref[k], abs=1e-12)
    # the BMA average of probabilities, in log space
    np.testing.assert_allclose(np.exp(_bma_log_probs(slp)), probs, rtol=1e-12)
    # mutual information: H[mean] - mean H
    ent = lambda p: -(p * np.log(p)).sum(-1)  # noqa: E731
    mi = (ent(probs) - ent(np.exp(slp)).mean(0)).mean()
    assert out["mutual_information"] == pytest.approx(mi, abs=1e-12)


def test_summarise_takes_mean_and_sample_std_over_seeds():
    rows = [
        {"method": "m", "task": "t", "eval": "t", "seed": s, "acc": a, "extra_parameters": 0}
        for s, a in enumerate([0.5, 0.7, 0.6])
    ]
    (row,) = summarise(rows)
    assert row["seeds"] == 3
    assert row["acc"] == pytest.approx(0.6)
    assert row["acc_std"] == pytest.approx(0.1)
    assert "0.600 ± 0.100" in markdown_table([row])


@pytest.fixture()
def tiny_base(tmp_path):
    model, tok = tiny_model_and_tokenizer()
    d = tmp_path / "tiny-llama"
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return str(d)


def _config(tiny_base, out, **kw):
    base = dict(
        methods=["mle", "mle+ts", "scalabl[samples=3]"],
        tasks=["boolq"],
        seeds=[0],
        output=str(out),
        model=tiny_base,
        dtype="float32",
        train_limit=6,
        steps=2,
        batch_size=2,
        select_limit=6,
        eval_limit=5,
    )
    base.update(kw)
    return BenchmarkConfig(**base)


def test_grid_runs_resumes_and_rebuilds_the_table(tiny_base, tmp_path):
    out = tmp_path / "bench"
    cfg = _config(tiny_base, out)
    seen: list[str] = []
    result = run_benchmark(cfg, on_cell=seen.append)
    assert seen == ["run mle / boolq / seed 0", "run scalabl[samples=3] / boolq / seed 0"]
    # +ts reuses the mle cell: two trained cells, three table rows
    assert sorted(p.name for p in (out / "cells").glob("*.json")) == [
        "mle__boolq__seed0.json",
        "scalabl_samples=3__boolq__seed0.json",
    ]
    methods = [r["method"] for r in result["summary"]]
    assert methods == ["mle", "mle+ts", "scalabl[samples=3]"]
    for name in ("table.md", "table.csv", "table.json"):
        assert (out / name).is_file()

    meta, arrays = load_cell(cell_path(out, "scalabl[samples=3]", "boolq", 0))
    # BoolQ has no test split: the validation split is cut into disjoint halves
    assert meta["splits"]["selection"].endswith("[selection half]")
    assert meta["splits"]["report/boolq"].endswith("[report half]")
    assert arrays["report/boolq/slp"].shape == (3, 5, 2)
    assert arrays["selection/slp"].shape == (3, 6, 2)
    assert meta["extra_parameters"] > 0
    assert meta["posterior"]["mean_std_s"] > 0

    # the +ts row is the mle cell's predictions at the temperature fitted on selection
    mle_meta, mle_arrays = load_cell(cell_path(out, "mle", "boolq", 0))
    sel = mle_arrays["selection/slp"][0].astype(np.float64)
    temp = fit_temperature(sel, mle_arrays["selection/labels"])
    rep = apply_temperature(mle_arrays["report/boolq/slp"][0].astype(np.float64), temp)
    expected = classification_metrics(rep, mle_arrays["report/boolq/labels"])
    ts_row = next(r for r in result["rows"] if r["method"] == "mle+ts")
    assert ts_row["temperature"] == pytest.approx(temp)
    assert ts_row["nll"] == pytest.approx(expected["nll"], rel=1e-9)

    # a re-run skips every finished cell and leaves them untouched
    before = {p.name: p.read_bytes() for p in (out / "cells").iterdir()}
    seen.clear()
    run_benchmark(cfg, on_cell=seen.append)
    assert all(s.startswith("skip") for s in seen)
    assert {p.name: p.read_bytes() for p in (out / "cells").iterdir()} == before

    # a lost table is rebuilt from the cells alone
    (out / "table.json").unlink()
    assert build_table(cfg)["summary"] == result["summary"]
    # --table-only: the finished cells of a larger grid, training none
    bigger = _config(tiny_base, out, methods=[*cfg.methods, "map"], seeds=[0, 1])
    partial = rebuild_table(bigger)
    assert [r["method"] for r in partial["summary"]] == methods
    assert not cell_path(out, "map", "boolq", 0).exists()
    with pytest.raises(ScalaBLError, match="not a benchmark folder"):
        rebuild_table(_config(tiny_base, tmp_path / "empty"))


def test_other_settings_into_the_same_folder_are_refused(tiny_base, tmp_path):
    out = tmp_path / "bench"
    run_benchmark(_config(tiny_base, out, methods=["mle"]))
    with pytest.raises(ScalaBLError, match="other settings.*steps"):
        run_benchmark(_config(tiny_base, out, methods=["mle"], steps=3))
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(ScalaBLError, match="not a benchmark folder"):
        run_benchmark(_config(tiny_base, foreign, methods=["mle"]))
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_a_cell_whose_spec_now_means_another_model_is_refused(tiny_base, tmp_path):
    """A library default that changes (normalization did) must not relabel old cells."""
    out = tmp_path / "bench"
    cfg = _config(tiny_base, out, methods=["mle"])
    run_benchmark(cfg)
    path = cell_path(out, "mle", "boolq", 0)
    meta = json.loads(path.read_text())
    assert meta["model_config"]["normalization"] == "mean"  # today's default
    meta["model_config"]["normalization"] = "sum"  # as a cell from before the change
    path.write_text(json.dumps(meta))
    with pytest.raises(
        ScalaBLError, match=r"normalization='sum' \(now 'mean'\).*mle\[normalization=sum\]"
    ):
        run_benchmark(cfg)


def test_an_init_scale_default_change_relabels_only_the_cells_that_use_it(tmp_path):
    """Cells from before the 0.4 default: scalabl's are refused, mle's (no Gaussian) are kept."""
    from scalabl_pyro.config import ScalaBLConfig
    from scalabl_pyro.experiments.benchmark import _check_cell_config

    cfg = BenchmarkConfig(methods=["mle"], output=str(tmp_path), dtype="float32")
    for method, refused in (("scalabl", True), ("blob", False), ("mle", False)):
        spec = parse_method(method)
        old = ScalaBLConfig(base_model=cfg.model, dtype=cfg.dtype, seed=0, **spec.model)
        saved = old.to_dict() | {"init_scale": 0.05}  # as written before the change
        path = tmp_path / f"{method}.json"
        path.write_text(json.dumps({"model_config": saved}))
        if refused:
            with pytest.raises(ScalaBLError, match=r"init_scale=0.05 \(now 0.4\)"):
                _check_cell_config(path, spec, 0, cfg)
        else:
            _check_cell_config(path, spec, 0, cfg)  # blob keeps 0.05; mle has no initial std


def test_ood_protocol_reports_shifted_sets_with_auroc(tiny_base, tmp_path):
    cfg = _config(
        tiny_base, tmp_path / "ood", methods=["scalabl[samples=2]"], protocol="ood", eval_limit=4
    )
    assert list(cfg.tasks) == ["openbookqa"]
    result = run_benchmark(cfg)
    evals = {r["eval"]: r for r in result["summary"]}
    assert set(evals) == {
        "openbookqa",
        "arc_challenge",
        "arc_easy",
        "mmlu_college_chemistry",
        "mmlu_college_physics",
    }
    assert "auroc_mutual_information" not in evals["openbookqa"]
    for name in ("arc_challenge", "mmlu_college_physics"):
        assert 0.0 <= evals[name]["auroc_mutual_information"] <= 1.0
    table = json.loads((tmp_path / "ood" / "table.json").read_text())
    assert table["settings"]["protocol"] == "ood"


@pytest.mark.parametrize(
    "extra, line",
    [
        (["--methods", "mle,bogus"], "unknown method 'bogus'"),
        (["--table-only"], "is not a benchmark folder"),
    ],
    ids=["unknown method", "table-only without a grid"],
)
def test_cli_benchmark_bad_input_is_one_line(tmp_path, extra, line):
    out = subprocess.run(
        [sys.executable, "-m", "scalabl_pyro.cli", "benchmark", "--output", str(tmp_path / "b")]
        + extra,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert lines[-1].startswith("error: ") and line in lines[-1], lines[-1]
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "b").exists()  # nothing created by a refused command


@pytest.mark.slow
def test_cli_benchmark_quick_on_the_embedded_model(tmp_path):
    """`scalabl benchmark --quick`: the real SmolLM2 and real data, smoke-sized."""
    out = tmp_path / "quick"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "scalabl_pyro.cli",
            "benchmark",
            "--quick",
            "--output",
            str(out),
            "--methods",
            "mle,mle+ts,scalabl[samples=2]",
            "--tasks",
            "arc_easy",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| mle+ts | arc_easy | arc_easy |" in proc.stdout
    table = json.loads((out / "table.json").read_text())
    assert {r["method"] for r in table["summary"]} == {"mle", "mle+ts", "scalabl[samples=2]"}


def test_zero_shot_reference_scores_the_folders_own_questions(tiny_base, tmp_path):
    """benchmarks/zero_shot_reference.py: the base model on the cells' selection/report sets."""
    from scalabl_testutils import load_benchmark_script

    tool = load_benchmark_script("zero_shot_reference")
    out = tmp_path / "bench"
    run_benchmark(_config(tiny_base, out, methods=["mle"]))
    dest = tmp_path / "zero.json"
    assert tool.main(["--root", str(out), "--task", "boolq", "--out", str(dest)]) == 0
    result = json.loads(dest.read_text())["results"]
    _, mle = load_cell(cell_path(out, "mle", "boolq", 0))
    assert list(result) == ["mean", "sum", "byte"]
    for norm in ("mean", "sum", "byte"):
        row = result[norm]
        assert row["report"]["n"] == len(mle["report/boolq/labels"])  # the cells' questions
        assert row["selection"]["n"] == len(mle["selection/labels"])
        assert row["temperature"] > 0 and row["report+ts"]["acc"] == row["report"]["acc"]


def test_a_damaged_cell_counts_as_not_finished(tiny_base, tmp_path):
    """Issue 21: a truncated cell .json or .npz is trained again (said in one line) by a
    resumed run, and refused with the fix by --table-only; a damaged benchmark.json too."""
    out = tmp_path / "bench"
    cfg = _config(tiny_base, out, methods=["mle"])
    run_benchmark(cfg)
    path = cell_path(out, "mle", "boolq", 0)
    good = path.read_bytes(), path.with_suffix(".npz").read_bytes()
    for damaged in (path, path.with_suffix(".npz")):
        data = damaged.read_bytes()
        damaged.write_bytes(data[: len(data) // 2])
        with pytest.raises(ScalaBLError) as err:
            rebuild_table(cfg)
        msg = str(err.value)
        assert msg.startswith("cell cells/mle__boolq__seed0.json is damaged (") and "\n" not in msg
        assert "run scalabl benchmark without --table-only to train it again" in msg
        seen: list[str] = []
        run_benchmark(cfg, on_cell=seen.append)
        assert len(seen) == 1
        assert seen[0].startswith("run mle / boolq / seed 0 (its saved cell is damaged: ")
        assert seen[0].endswith("; training it again)")
        load_cell(path)  # whole again
        assert path.with_suffix(".npz").read_bytes() == good[1]  # the same cell, retrained
    settings = out / "benchmark.json"
    settings.write_text(settings.read_text()[:40])
    for run in (run_benchmark, rebuild_table):
        with pytest.raises(ScalaBLError, match=r"benchmark.json is damaged \(JSONDecodeError"):
            run(cfg)


def test_cli_benchmark_damaged_settings_is_one_line(tmp_path):
    folder = tmp_path / "b"
    (folder / "cells").mkdir(parents=True)
    (folder / "benchmark.json").write_text('{"settings": {"steps": 1')
    for extra in ([], ["--table-only"]):
        out = subprocess.run(
            [sys.executable, "-m", "scalabl_pyro.cli", "benchmark", "--output", str(folder)]
            + extra,
            capture_output=True,
            text=True,
        )
        assert out.returncode == 2 and "Traceback" not in out.stderr
        lines = out.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and "is damaged" in lines[0]
        assert "restore it, or use a new --output" in lines[0]


def test_ts_rows_of_a_bayesian_method_keep_their_draws():
    rng = np.random.default_rng(0)
    s, n, c = 6, 40, 4

    def draws():
        shared = rng.normal(0, 2, size=(n, c))
        z = shared[None] + rng.normal(0, 1.5, size=(s, n, c))
        p = np.exp(shared / 2) / np.exp(shared / 2).sum(-1, keepdims=True)
        labels = np.array([rng.choice(c, p=row) for row in p])
        return (z - np.log(np.exp(z).sum(-1, keepdims=True))).astype(np.float32), labels

    (sel, sel_y), (rep, rep_y) = draws(), draws()
    arrays = {
        "selection/slp": sel,
        "selection/labels": sel_y,
        "report/arc_easy/slp": rep,
        "report/arc_easy/labels": rep_y,
    }
    meta = {"task": "arc_easy", "seed": 0, "extra_parameters": 1, "train_seconds": 1.0}
    from scalabl_pyro.experiments.benchmark import cell_rows

    plain = cell_rows(parse_method("scalabl"), meta, arrays, 15)[0]
    scaled = cell_rows(parse_method("scalabl+ts"), meta, arrays, 15)[0]
    assert scaled["temperature"] != 1.0
    assert scaled["mutual_information"] > 0.01 and plain["mutual_information"] > 0.01
    assert scaled["acc"] == pytest.approx(plain["acc"], abs=0.05)
