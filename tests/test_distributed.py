"""Several processes: 2 gloo processes with batch 2 equal 1 process with batch 4."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from scalabl_pyro.cli import main
from scalabl_pyro.inference.distributed import DistributedContext
from scalabl_pyro.io import checkpoint as ckpt
from scalabl_pyro.testing import tiny_model_and_tokenizer

ROOT = Path(__file__).resolve().parent.parent
TRAIN = ["train", "--steps", "3", "--lr", "1e-2", "--guide", "mean_field", "--rank", "4"]


@pytest.fixture()
def tiny_run(tmp_path: Path) -> list[str]:
    """``scalabl train`` options for a tiny random model saved to disk and a learnable toy task."""
    model, tok = tiny_model_and_tokenizer()
    base = tmp_path / "tiny_base"
    model.save_pretrained(base)
    tok.save_pretrained(base)
    rows = [  # the label is the item number mod 3
        {
            "question": f"Which colour is item {i}?",
            "choices": ["red", "blue", "green"],
            "label": i % 3,
        }
        for i in range(16)
    ]
    data = tmp_path / "toy.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    return [*TRAIN, "--model", str(base), "--data", str(data), "--no-progress"]


def _last_step(path: Path) -> dict:
    return json.loads((path / ckpt.HISTORY_FILE).read_text())["steps"][-1]


def _states(path: Path) -> dict[str, torch.Tensor]:
    c = ckpt.Checkpoint(path)
    return {**{f"lora:{k}": v for k, v in c.lora().items()}, **c.guide_state()}


def test_shard_splits_the_global_batch():
    idx = list(range(8))
    assert DistributedContext(0, 2).shard(idx) == [0, 1, 2, 3]
    assert DistributedContext(1, 2).shard(idx) == [4, 5, 6, 7]
    with pytest.raises(ValueError, match="does not split"):
        DistributedContext(0, 3).shard(idx)
    assert DistributedContext.detect() is None  # no process group in the test process


def test_two_gloo_processes_equal_one_process_with_the_double_batch(tmp_path, tiny_run):
    """DDP averages gradients; each rank's loss is the full-data ELBO estimate (KL once).

    ``accelerate launch -m scalabl_pyro.cli train`` is the multi-process entry point.
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    launch = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
        "-m", "scalabl_pyro.cli",
    ]  # fmt: skip
    two = tmp_path / "two"
    run = subprocess.run(
        [*launch, *tiny_run, "--batch-size", "2", "--output", str(two)],
        env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count(f"saved {two}") == 1  # rank 0 alone prints

    one = tmp_path / "one"
    assert main([*tiny_run, "--batch-size", "4", "--output", str(one)]) == 0

    two_last, one_last = _last_step(two), _last_step(one)
    assert two_last["loss"] == pytest.approx(one_last["loss"], rel=1e-5)
    assert two_last["kl"] == pytest.approx(one_last["kl"], rel=1e-5)  # KL counted once
    a, b = _states(two), _states(one)
    assert a.keys() == b.keys()
    moved = 0
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-5, msg=k)
        moved += int(not torch.equal(a[k], torch.zeros_like(a[k])))
    assert moved > 0


def test_under_a_launcher_device_is_the_ranks(tmp_path, tiny_run, monkeypatch, capsys):
    """With WORLD_SIZE > 1 every process takes its rank's device, so --device is refused."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    rc = main([*tiny_run, "--device", "cpu", "--output", str(tmp_path / "out")])
    assert rc == 2
    assert "--device cpu: under accelerate launch" in capsys.readouterr().err
