"""The `scalabl` command line: help, exit codes, and train -> evaluate on a tiny local model."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from scalabl_pyro.cli import build_parser, main
from scalabl_pyro.testing import tiny_model_and_tokenizer


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "scalabl_pyro.cli", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )


def test_help_lists_subcommands():
    out = run_cli("--help")
    assert out.returncode == 0
    for cmd in ("fetch", "demo", "train", "evaluate", "data"):
        assert cmd in out.stdout


def test_bad_input_exits_2_with_one_line_and_no_traceback():
    out = run_cli("data", "--data", "no_such_set")
    assert out.returncode == 2
    err = out.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: unknown data set 'no_such_set'")
    assert "arc_easy" in err[0] and "Traceback" not in out.stderr


def test_missing_checkpoint_is_a_clear_error(tmp_path, capsys):
    rc = main(
        [
            "evaluate",
            "--checkpoint",
            str(tmp_path / "nope"),
            "--data",
            str(tmp_path / "missing.jsonl"),
        ]
    )
    assert rc == 2
    assert "error:" in capsys.readouterr().err


def test_parser_rejects_unknown_guide_choice():
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["train", "--output", "x", "--format", "cloze"])
    assert e.value.code == 2


@pytest.fixture()
def tiny_dir(tmp_path):
    model, tok = tiny_model_and_tokenizer()
    d = tmp_path / "tiny-llama"
    model.save_pretrained(d)
    tok.save_pretrained(d)
    data = tmp_path / "toy.jsonl"
    rows = [
        {
            "id": str(i),
            "question": f"Which is a mammal {i}?",
            "choices": ["a whale", "a rock", "a star"],
            "label": "A",
        }
        for i in range(12)
    ]
    data.write_text("\n".join(json.dumps(r) for r in rows))
    return d, data


def test_train_then_evaluate_on_local_model(tiny_dir, tmp_path):
    model_dir, data = tiny_dir
    ckpt = tmp_path / "ckpt"
    out = run_cli(
        "train",
        "--model",
        str(model_dir),
        "--data",
        str(data),
        "--output",
        str(ckpt),
        "--steps",
        "3",
        "--rank",
        "2",
        "--lr",
        "1e-2",
        "--no-progress",
    )
    assert out.returncode == 0, out.stderr
    assert (ckpt / "adapter" / "adapter_model.safetensors").is_file()
    assert (ckpt / "guide.safetensors").is_file()
    meta = json.loads((ckpt / "scalabl_config.json").read_text())
    assert meta["guide_family"] == "mean_field" and len(meta["site_names"]) == 4
    metrics = tmp_path / "m.json"
    plot = tmp_path / "rel.png"
    out = run_cli(
        "evaluate",
        "--checkpoint",
        str(ckpt),
        "--data",
        str(data),
        "--samples",
        "3",
        "--output",
        str(metrics),
        "--plot",
        str(plot),
        "--no-progress",
    )
    assert out.returncode == 0, out.stderr
    m = json.loads(metrics.read_text())
    assert set(m) >= {"acc", "ece", "nll", "brier"} and m["n"] == 12
    assert plot.stat().st_size > 1000
    # resume continues from the saved optimizer state to the new step budget
    out = run_cli(
        "train",
        "--output",
        str(ckpt),
        "--data",
        str(data),
        "--steps",
        "5",
        "--resume",
        "--no-progress",
    )
    assert out.returncode == 0, out.stderr
    hist = json.loads((ckpt / "history.json").read_text())
    assert [s["step"] for s in hist["steps"]] == [1, 2, 3, 4, 5]
