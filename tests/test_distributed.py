"""Several processes: 2 gloo processes with batch 2 equal 1 process with batch 4."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from scalabl_pyro.inference.distributed import DistributedContext
from scalabl_pyro.io import checkpoint as ckpt

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scalabl_pyro" / "cli" / "launch_ddp.py"
ARGS = ["--tiny", "--steps", "3", "--lr", "1e-2", "--guide", "mean_field"]


def _script():
    spec = importlib.util.spec_from_file_location("train_ddp", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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


def test_two_gloo_processes_equal_one_process_with_the_double_batch(tmp_path):
    """DDP averages gradients; each rank's loss is the full-data ELBO estimate (KL once)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    launch = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
    ]  # fmt: skip
    two = tmp_path / "two"
    run = subprocess.run(
        [*launch, str(SCRIPT), *ARGS, "--batch-size", "2", "--output", str(two)],
        env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    two_last = json.loads(run.stdout.strip().splitlines()[-1])

    one = tmp_path / "one"
    one_last = _script().main([*ARGS, "--batch-size", "4", "--output", str(one)])

    assert two_last["loss"] == pytest.approx(one_last["loss"], rel=1e-5)
    assert two_last["kl"] == pytest.approx(one_last["kl"], rel=1e-5)  # KL counted once
    a, b = _states(two), _states(one)
    assert a.keys() == b.keys()
    moved = 0
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-5, msg=k)
        moved += int(not torch.equal(a[k], torch.zeros_like(a[k])))
    assert moved > 0
