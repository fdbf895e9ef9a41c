"""Fault tests: kill -9 during a checkpoint write, a full disk, a diverging update.

Each case runs the CLI as a subprocess through ``fault_runner.py``, which
wraps one function of the process (``os.replace``, safetensors' ``save_file``,
``torch.save``, ``AdamW.step``) to SIGKILL it, raise ENOSPC or spoil an update
on its k-th call. Nothing in the library knows about it. A tiny random model
saved to a local directory keeps every run to a few seconds.

One training run here: 4 steps of 2 examples, a checkpoint every 2 steps, so
two saves (steps 2 and 4). The second save calls ``save_file`` 3 times
(calls 4-6: adapter, LoRA factors, guide), ``torch.save`` once (call 2) and
``os.replace`` 4 times (calls 4-7: config JSON, history JSON, the old
checkpoint moved aside, the new one renamed in).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from bad_inputs import GOOD_ROWS, jsonl
from test_cli_failures import assert_one_error, snapshot

from scalabl_pyro.io.checkpoint import Checkpoint

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
STEPS = ["--steps", "4", "--batch-size", "2", "--checkpoint-every", "2", "--no-progress"]


def run_faulty(cwd: Path, target: str, k: int, when: str, action: str, *args: str):
    """The CLI with one fault: ``action`` (kill, enospc, nan, huge) at call ``k``."""
    env = {k_: v for k_, v in os.environ.items() if not k_.startswith(("HF_", "TRANSFORMERS_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(TESTS)])
    env["HF_HUB_OFFLINE"] = "1"
    cmd = [sys.executable, str(TESTS / "fault_runner.py"), target, str(k), when, action, "--"]
    return subprocess.run(
        [*cmd, *args], cwd=cwd, capture_output=True, text=True, timeout=300, env=env
    )


def train(
    cwd: Path, model: Path, output: str, *extra: str, fault=("os.replace", 0, "after", "none")
):
    args = ["train", "--model", str(model), "--data", "data.jsonl", "--output", output]
    return run_faulty(cwd, *fault, *args, *STEPS, *extra)


def resume(cwd: Path, output: str):
    return run_faulty(
        cwd, "os.replace", 0, "after", "none",
        "train", "--data", "data.jsonl", "--output", output, "--resume", "--no-progress",
    )  # fmt: skip


def digests(path: Path) -> dict[str, str]:
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def space(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with a tiny model, a data file and one uninterrupted run (``reference``)."""
    from scalabl_pyro.testing import tiny_model_and_tokenizer

    root = tmp_path_factory.mktemp("faults")
    model, tok = tiny_model_and_tokenizer()
    model.save_pretrained(root / "tiny")
    tok.save_pretrained(root / "tiny")
    (root / "data.jsonl").write_text(jsonl(GOOD_ROWS * 2))
    out = train(root, root / "tiny", "reference")
    assert out.returncode == 0, out.stderr
    return root


@pytest.fixture()
def work(space: Path, tmp_path: Path) -> Path:
    w = tmp_path / "w"
    w.mkdir()
    shutil.copy(space / "data.jsonl", w)
    return w


KILLS = {  # (target, call, when): where in the second save (or between steps) the kill lands
    "after the LoRA factors are written": ("safetensors.torch.save_file", 5, "after"),
    "after the trainer state is written": ("torch.save", 2, "after"),
    "before the old checkpoint is moved aside": ("os.replace", 6, "before"),
    "between moving the old aside and renaming the new in": ("os.replace", 6, "after"),
    "after the final rename, before the old copy is deleted": ("os.replace", 7, "after"),
    "between two steps (after the update of step 3)": ("torch.optim.AdamW.step", 3, "after"),
}


@pytest.mark.parametrize("case", list(KILLS))
def test_kill_during_a_checkpoint_write_then_resume_is_bit_identical(space, work, case):
    target, k, when = KILLS[case]
    killed = train(work, space / "tiny", "run", fault=(target, k, when, "kill"))
    assert killed.returncode == -9, killed.stderr
    done = resume(work, "run")
    if k == 7 and target == "os.replace":  # the new checkpoint was complete: nothing to resume
        assert_one_error(done, "already trained 4 steps")
    else:
        assert done.returncode == 0, done.stderr
    assert digests(work / "run") == digests(space / "reference")
    assert sorted(p.name for p in work.iterdir()) == ["data.jsonl", "run"]  # no leftovers


def test_full_disk_while_overwriting_keeps_the_old_checkpoint(space, work):
    shutil.copytree(space / "reference", work / "run")
    before = snapshot(work)
    out = train(
        work, space / "tiny", "run", "--overwrite",
        fault=("safetensors.torch.save_file", 2, "before", "enospc"),
    )  # fmt: skip
    assert_one_error(out, "No space left on device", "free disk space")
    assert snapshot(work) == before


def test_full_disk_in_a_later_save_leaves_the_earlier_checkpoint_readable(space, work):
    out = train(
        work, space / "tiny", "run", fault=("safetensors.torch.save_file", 5, "before", "enospc")
    )
    assert_one_error(out, "No space left on device")
    assert sorted(p.name for p in work.iterdir()) == ["data.jsonl", "run"]
    ckpt = Checkpoint(work / "run")
    ckpt.check_files()
    assert ckpt.trainer_state()["step"] == 2
    assert [s["step"] for s in ckpt.history()["steps"]] == [1, 2]
    assert all(torch.isfinite(t).all() for t in ckpt.lora().values())


def test_a_nan_update_stops_with_one_line_and_keeps_the_last_good_checkpoint(space, work):
    out = train(work, space / "tiny", "run", fault=("torch.optim.AdamW.step", 3, "after", "nan"))
    line = assert_one_error(out, "training diverged at step 3", "a parameter became non-finite")
    assert "likely cause" in line and "--lr" in line
    assert "the last good checkpoint, run (step 2), is intact" in line
    ckpt = Checkpoint(work / "run")
    assert ckpt.trainer_state()["step"] == 2
    assert all(
        torch.isfinite(t).all() for t in [*ckpt.lora().values(), *ckpt.guide_state().values()]
    )


def test_a_nan_update_with_overwrite_leaves_the_old_checkpoint(space, work):
    shutil.copytree(space / "reference", work / "run")
    before = snapshot(work)
    out = train(
        work, space / "tiny", "run", "--overwrite",
        fault=("torch.optim.AdamW.step", 1, "after", "nan"),
    )  # fmt: skip
    assert_one_error(out, "at step 1", "the checkpoint that was in run is intact (not replaced)")
    assert snapshot(work) == before


def test_an_overflowing_update_stops_with_one_line(space, work):
    """Finite parameters whose forward pass overflows: stopped at the next step, one line.

    Whether the NaN loss or Pyro's validation ``ValueError`` sees it first depends on
    the values; the ValueError mapping itself is pinned in-process in
    ``test_program.py::test_divergence_names_step_cause_and_the_last_good_checkpoint``.
    """
    out = train(work, space / "tiny", "run", fault=("torch.optim.AdamW.step", 3, "after", "huge"))
    line = assert_one_error(out, "training diverged at step 4", "likely cause")
    assert "(step 2), is intact" in line
    assert Checkpoint(work / "run").trainer_state()["step"] == 2
