"""The `scalabl` command line: help, exit codes, and train -> evaluate on a tiny local model."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from scalabl_pyro.cli import build_parser, main, options
from scalabl_pyro.cli import data as data_command
from scalabl_pyro.cli import train as train_command
from scalabl_pyro.errors import ScalaBLError
from scalabl_pyro.io.checkpoint import CHECKPOINT_ENTRIES, check_output_dir, check_writable
from scalabl_pyro.testing import tiny_model_and_tokenizer

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run this checkout's CLI (PYTHONPATH = the repository root)."""
    full_env = dict(os.environ if env is None else env)
    paths = [str(ROOT), full_env.get("PYTHONPATH", "")]
    full_env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    return subprocess.run(
        [sys.executable, "-m", "scalabl_pyro.cli", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=full_env,
    )


def _sha(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


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
        "--kl-weight",
        "4",
        "--normalization",
        "sum",
        "--init-scale",
        "0.2",
        "--no-progress",
    )
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""  # no library warnings or progress bars when stderr is not a TTY
    assert (ckpt / "adapter" / "adapter_model.safetensors").is_file()
    assert (ckpt / "guide.safetensors").is_file()
    meta = json.loads((ckpt / "scalabl_config.json").read_text())
    assert meta["guide_family"] == "mean_field" and len(meta["site_names"]) == 4
    assert meta["train_config"]["kl_weight"] == 4.0
    assert meta["config"]["normalization"] == "sum"
    assert meta["config"]["init_scale"] == 0.2
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
        "--width",
        "2",
        "--output",
        str(metrics),
        "--plot",
        str(plot),
        "--no-progress",
    )
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
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


def test_train_refuses_an_existing_checkpoint_then_overwrites_it(tiny_dir, tmp_path):
    model_dir, data = tiny_dir
    ckpt = tmp_path / "ckpt"
    args = ["train", "--model", str(model_dir), "--data", str(data), "--output", str(ckpt)]
    args += ["--rank", "2", "--lr", "1e-2", "--no-progress"]
    out = run_cli(*args, "--steps", "2")
    assert out.returncode == 0, out.stderr
    before = _sha(ckpt)
    out = run_cli(*args, "--steps", "1")
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert "--resume" in out.stderr and "--overwrite" in out.stderr
    assert _sha(ckpt) == before
    out = run_cli(*args, "--steps", "1", "--overwrite")
    assert out.returncode == 0, out.stderr
    hist = json.loads((ckpt / "history.json").read_text())
    assert [s["step"] for s in hist["steps"]] == [1]
    assert _sha(ckpt) != before and set(os.listdir(ckpt)) <= set(CHECKPOINT_ENTRIES)


def test_data_shows_a_local_file(tiny_dir):
    _, data = tiny_dir
    out = run_cli("data", "--data", str(data))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == f"toy: local file {data} (the whole file is one split)"
    assert lines[1] == "validation: 12 examples, 3 choices each"
    example = json.loads("\n".join(lines[2:]))
    assert example["choices"] == ["a whale", "a rock", "a star"] and example["label"] == 0


def test_data_shows_emoji_as_text(tmp_path):
    """`scalabl data` prints the example as UTF-8 JSON, not \\ud83c... escapes (issue 21)."""
    data = tmp_path / "emoji.jsonl"
    rows = [
        {
            "question": "Which is a fruit? \U0001f34e",
            "choices": ["\U0001f34e", "\U0001f697"],
            "label": 0,
        }
    ]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = run_cli("data", "--data", str(data), env={**os.environ, "PYTHONIOENCODING": "utf-8"})
    assert out.returncode == 0, out.stderr
    assert "\U0001f34e" in out.stdout and "\\ud83c" not in out.stdout
    assert json.loads("\n".join(out.stdout.splitlines()[2:]))["choices"][0] == "\U0001f34e"


def test_data_shows_a_named_data_set(monkeypatch, capsys):
    from scalabl_pyro.data import MCDataset, MCExample

    ds = MCDataset("arc_easy", "validation", [MCExample("a", "q", ("x", "y", "z"), 1)])
    monkeypatch.setattr(data_command, "load_data", lambda args: ds)
    assert main(["data", "--data", "arc_easy"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "arc_easy: splits train, validation, test"
    assert out[1] == "validation: 1 example, 3 choices each"


# --------------------------------------------------------------------- pieces


def test_parser_lists_agree_with_the_library():
    from scalabl_pyro.methods import base, method_names, recipe_names
    from scalabl_pyro.program.families import GUIDE_FAMILIES, MEAN_FIELD_FAMILIES
    from scalabl_pyro.program.formats import LETTERS, NORMALIZATIONS

    assert options.NORMALIZATIONS == NORMALIZATIONS
    assert options.GUIDES == GUIDE_FAMILIES
    assert options.MEAN_FIELD_GUIDES == MEAN_FIELD_FAMILIES == base.MEAN_FIELD_GUIDES
    assert options.POINT_MASS_GUIDES == base.POINT_MASS_GUIDES
    assert set(base.POINT_MASS_GUIDES) <= set(GUIDE_FAMILIES)
    assert (method_names(), recipe_names()) == (options.METHODS, options.RECIPES)
    assert len(LETTERS) == options.MAX_LETTER_CHOICES


def test_range_parses_and_describes():
    rng = options.Range(float, 0, 1, low_open=True)
    assert rng("0.5") == 0.5 and rng("1") == 1.0
    assert rng.describe() == "a number > 0 and <= 1"
    for bad in ("0", "1.5", "nan", "inf", "x"):
        with pytest.raises(Exception, match="a number > 0 and <= 1"):
            rng(bad)
    assert options.Range(int, 1).describe() == "a whole number >= 1"


def test_resume_takes_unset_training_options_from_the_checkpoint():
    meta = {
        "config": {"base_model": "m", "guide": "delta", "task_format": "letter", "num_classes": 4},
        "train_config": {"steps": 10, "batch_size": 2, "num_particles": 1, "seed": 7},
    }
    args = build_parser().parse_args(["train", "--output", "x", "--resume", "--steps", "20"])
    s = train_command._train_settings(args, meta)
    assert (s.model, s.guide, s.task_format, s.num_classes) == ("m", "delta", "letter", 4)
    assert (s.steps, s.batch_size, s.seed) == (20, 2, 7)
    args = build_parser().parse_args(["train", "--output", "x", "--resume", "--batch-size", "8"])
    assert train_command._train_settings(args, meta).batch_size == 8


def test_check_output_dir_allows_new_empty_and_pure_checkpoints(tmp_path):
    check_output_dir(tmp_path / "new" / "run", resume=False, overwrite=False)
    (tmp_path / "empty").mkdir()
    check_output_dir(tmp_path / "empty", resume=False, overwrite=False)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    for name in CHECKPOINT_ENTRIES:
        (ckpt / name).write_text("x")
    check_output_dir(ckpt, resume=False, overwrite=True)
    check_output_dir(ckpt, resume=True, overwrite=False)
    with pytest.raises(ScalaBLError, match="already holds a checkpoint"):
        check_output_dir(ckpt, resume=False, overwrite=False)
    with pytest.raises(ScalaBLError, match="pass only one"):
        check_output_dir(ckpt, resume=True, overwrite=True)
    api_names = ("output_dir", "resume=True", "overwrite=True")
    with pytest.raises(
        ScalaBLError, match="^output_dir .* already holds a checkpoint; pass resume"
    ):
        check_output_dir(ckpt, resume=False, overwrite=False, flags=api_names)
    # the probes leave nothing behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "empty"]


def test_check_writable_names_the_flag(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ScalaBLError, match="^--plot .* cannot be created: .* is a file"):
        check_writable(blocker / "rel.png", flag="--plot")
    check_writable(tmp_path / "a" / "b" / "m.json")
    assert not (tmp_path / "a").exists()


def test_library_warnings_are_routed_and_restored(monkeypatch, capfd):
    """Without -v a failing command prints one line; with -v the libraries' warnings show.

    Afterwards logging, warnings and the environment are as they were (main() is safe to
    call in-process).
    """
    import huggingface_hub.utils.logging as hub_logging
    import transformers.utils.logging as tf_logging

    tf_root = logging.getLogger("transformers")
    before = (
        list(logging.getLogger().handlers),
        list(tf_root.handlers),
        tf_root.propagate,
        warnings.showwarning,
        os.environ.get("TRANSFORMERS_VERBOSITY"),
    )

    def noisy(args):
        tag = "loud" if args.verbose else "quiet"
        tf_logging.get_logger("transformers.modeling_utils").warning(f"tf-{tag}")
        hub_logging.get_logger("huggingface_hub.file_download").warning(f"hub-{tag}")
        logging.getLogger("peft.tuners").warning(f"peft-{tag}")
        warnings.warn(f"deprecated-{tag}", FutureWarning, stacklevel=1)
        logging.getLogger("scalabl_pyro.inference.train").info(f"own-{tag}")
        raise ScalaBLError("boom")

    monkeypatch.setattr(data_command, "run", noisy)
    capfd.readouterr()
    assert main(["data"]) == 2
    assert capfd.readouterr().err.splitlines() == ["error: boom"]

    assert main(["data", "-v"]) == 2
    err = capfd.readouterr().err
    for text in ("tf-loud", "hub-loud", "peft-loud", "FutureWarning: deprecated-loud", "own-loud"):
        assert text in err, err
    assert err.splitlines()[-1] == "error: boom" and err.count("error:") == 1
    after = (
        list(logging.getLogger().handlers),
        list(tf_root.handlers),
        tf_root.propagate,
        warnings.showwarning,
        os.environ.get("TRANSFORMERS_VERBOSITY"),
    )
    assert after == before


def test_os_errors_are_one_line_and_show_the_traceback_with_v(monkeypatch, capfd):
    def disk_full(args):
        raise OSError(28, "No space left on device", "/runs/x/.x.tmp")

    monkeypatch.setattr(data_command, "run", disk_full)
    capfd.readouterr()
    assert main(["data"]) == 2
    assert capfd.readouterr().err.splitlines() == [
        "error: No space left on device (/runs/x/.x.tmp); check the path, its permissions "
        "and the free disk space, then run the command again"
    ]
    assert main(["-v", "data"]) == 2
    err = capfd.readouterr().err
    assert "Traceback" in err and err.splitlines()[-1].startswith("error: No space left")


def test_evaluate_temperature_from_refuses_the_reported_split_and_single_files(tiny_dir):
    model_dir, data = tiny_dir
    out = run_cli(
        "evaluate", "--model", str(model_dir), "--data", str(data), "--temperature-from", "train"
    )
    assert out.returncode == 2 and "is one local file" in out.stderr
    out = run_cli(
        "evaluate",
        "--model",
        str(model_dir),
        "--data",
        "arc_easy",
        "--split",
        "test",
        "--temperature-from",
        "test",
    )
    assert out.returncode == 2 and "is the split being reported" in out.stderr


@pytest.mark.slow
def test_evaluate_temperature_from_fits_on_another_split(tiny_dir, tmp_path):
    model_dir, _ = tiny_dir
    res = tmp_path / "m.json"
    out = run_cli(
        "evaluate",
        "--model",
        str(model_dir),
        "--data",
        "arc_easy",
        "--split",
        "test",
        "--limit",
        "12",
        "--temperature-from",
        "validation",
        "--output",
        str(res),
    )
    assert out.returncode == 0, out.stderr
    got = json.loads(res.read_text())
    assert got["temperature"] > 0 and got["temperature_from"] == "arc_easy/validation"
