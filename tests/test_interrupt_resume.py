"""Ctrl-C/SIGTERM during `scalabl train` saves a resumable checkpoint; --resume reuses the set.

Issue 21, items 1 and 2. The CLI runs as a subprocess on a tiny random model;
the signal is real, sent by the process to itself right after the k-th
``AdamW.step`` (the wrapper is installed from outside the library, as in
``fault_runner.py``), so it lands mid-step, where a user's Ctrl-C lands.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from bad_inputs import GOOD_ROWS, jsonl
from test_cli_failures import fails_cleanly

ROOT = Path(__file__).resolve().parents[1]
STEPS = ["--steps", "6", "--batch-size", "2", "--rank", "2", "--no-progress"]

SIGNAL_RUNNER = """
import os, signal, sys
import torch
sig, k = getattr(signal, sys.argv[1]), int(sys.argv[2])
real, calls = torch.optim.AdamW.step, [0]
def step(self, *args, **kwargs):
    calls[0] += 1
    if calls[0] == k:
        os.kill(os.getpid(), sig)  # mid-step: the update below still has to run
    return real(self, *args, **kwargs)
torch.optim.AdamW.step = step
from scalabl_pyro.cli import main
sys.argv = ["scalabl", *sys.argv[3:]]
sys.exit(main())
"""


def run(cwd: Path, *args: str, signal_at: tuple[str, int] | None = None):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "tests")])
    env["HF_HUB_OFFLINE"] = "1"
    env["OMP_NUM_THREADS"] = "1"
    if signal_at is None:
        cmd = [sys.executable, "-m", "scalabl_pyro.cli", *args]
    else:
        cmd = [sys.executable, "-c", SIGNAL_RUNNER, signal_at[0], str(signal_at[1]), *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300, env=env)


def digests(path: Path) -> dict[str, str]:
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def space(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model, a data file and one uninterrupted 6-step run (``reference``)."""
    from scalabl_pyro.testing import tiny_model_and_tokenizer

    root = tmp_path_factory.mktemp("interrupt")
    model, tok = tiny_model_and_tokenizer()
    model.save_pretrained(root / "tiny")
    tok.save_pretrained(root / "tiny")
    (root / "data.jsonl").write_text(jsonl(GOOD_ROWS * 2))
    model_dir = str(root / "tiny")  # one absolute path: the adapter config names it
    out = run(root, "train", "--model", model_dir, "--data", "data.jsonl", "--output", "reference",
              *STEPS)  # fmt: skip
    assert out.returncode == 0, out.stderr
    return root


@pytest.fixture()
def work(space: Path, tmp_path: Path) -> Path:
    w = tmp_path / "w"
    w.mkdir()
    shutil.copy(space / "data.jsonl", w)
    return w


def test_ctrl_c_saves_a_checkpoint_that_resumes_exactly(space: Path, work: Path) -> None:
    """Default --checkpoint-every 0: SIGINT in step 3 -> step 3 saved, exit 130, one line;
    --resume with no --data continues on the saved set to the same bytes as a run never cut."""
    train = [
        "train",
        "--model",
        str(space / "tiny"),
        "--data",
        "data.jsonl",
        "--output",
        "run",
        *STEPS,
    ]
    out = run(work, *train, signal_at=("SIGINT", 3))
    assert out.returncode == 130, out.stderr
    assert out.stderr.splitlines() == [
        "interrupted by SIGINT after step 3 of 6; saved a resumable checkpoint of step 3 to run; "
        "continue with scalabl train --output run --resume"
    ]
    history = json.loads((work / "run" / "history.json").read_text())
    assert [s["step"] for s in history["steps"]] == [1, 2, 3]
    saved = json.loads((work / "run" / "scalabl_config.json").read_text())["train_data"]
    assert saved["origin"] == "data.jsonl" and saved["num_examples"] == 8
    out = run(work, "train", "--output", "run", "--resume", "--no-progress")
    assert out.returncode == 0, out.stderr
    assert digests(work / "run") == digests(space / "reference")


def test_sigterm_saves_too(space: Path, work: Path) -> None:
    train = [
        "train",
        "--model",
        str(space / "tiny"),
        "--data",
        "data.jsonl",
        "--output",
        "run",
        *STEPS,
    ]
    out = run(work, *train, "--checkpoint-every", "4", signal_at=("SIGTERM", 2))
    assert out.returncode == 143, out.stderr
    assert len(out.stderr.splitlines()) == 1 and "by SIGTERM after step 2 of 6" in out.stderr
    history = json.loads((work / "run" / "history.json").read_text())
    assert [s["step"] for s in history["steps"]] == [1, 2]


def test_signal_in_the_last_step_just_finishes(space: Path, work: Path) -> None:
    train = [
        "train",
        "--model",
        str(space / "tiny"),
        "--data",
        "data.jsonl",
        "--output",
        "run",
        *STEPS,
    ]
    out = run(work, *train, signal_at=("SIGINT", 6))
    assert out.returncode == 0 and out.stderr == "", out.stderr
    assert "saved run" in out.stdout


RESUME = ["train", "--output", "ref", "--resume", "--steps", "8", "--no-progress"]

DATA_CASES = {
    "--limit other than the saved set": (
        [*RESUME, "--limit", "4"],
        ["--resume continues training on the checkpoint's training set (data.jsonl/train: 8 "
         "examples, sha256 ", "so --limit 4 would change it (saved: all examples); drop --limit"],
    ),
    "--split other than the saved set": (
        [*RESUME, "--split", "validation"],
        ["so --split validation would change it (saved: train)"],
    ),
    "--data with other examples": (
        [*RESUME, "--data", "other.jsonl"],
        ["--data other.jsonl other.jsonl/train: 4 examples", "is not the training set of the "
         "checkpoint in --output ref (data.jsonl/train: 8 examples", "drop --data"],
    ),
    "the saved file has changed since": (
        RESUME,
        ["the training set of the checkpoint in --output ref, data.jsonl/train: 8 examples",
         "has changed since (now 4 examples"],
    ),
    "the saved file is gone": (
        RESUME,
        ["--resume: the checkpoint's training set is the file data.jsonl, which is not found",
         "pass --data with its path"],
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(DATA_CASES))
def test_resume_refuses_another_training_set(space: Path, work: Path, case: str) -> None:
    shutil.copytree(space / "reference", work / "ref")
    (work / "other.jsonl").write_text(jsonl(GOOD_ROWS))
    if case == "the saved file has changed since":
        (work / "data.jsonl").write_text(jsonl(GOOD_ROWS))
    if case == "the saved file is gone":
        (work / "data.jsonl").unlink()
    args, fragments = DATA_CASES[case]
    fails_cleanly(work, args, *fragments)


def test_resume_accepts_the_same_examples_under_another_name(space: Path, work: Path) -> None:
    shutil.copytree(space / "reference", work / "ref")
    shutil.copy(work / "data.jsonl", work / "moved.jsonl")
    out = run(work, *RESUME, "--data", "moved.jsonl")
    assert out.returncode == 0, out.stderr
    steps = json.loads((work / "ref" / "history.json").read_text())["steps"]
    assert [s["step"] for s in steps] == list(range(1, 9))
