"""Training-step cost of ScalaBL relative to plain LoRA, measured side by side.

Three methods on the same model, batch and LoRA settings (SmolLM2-135M + ARC-Easy,
choice scoring, q_proj/v_proj, r = 8):

* ``lora``   — plain peft LoRA, cross-entropy on the class scores, AdamW;
* ``mle``    — the Pyro path with a point-mass guide and no prior (ScalaBL's MLE);
* ``scalabl`` — the Pyro path with the mean-field guide (the paper's ScalaBL).

Steps are interleaved (lora, mle, scalabl, lora, ...) so that machine noise hits all
three alike; the report gives median seconds per step and the ratios to plain LoRA.
Peak memory: on CUDA ``max_memory_allocated`` per method; on CPU the peak RSS of a child
process that runs only that method. Results go to a JSON file.

    python benchmarks/step_time.py --steps 10 --out benchmarks/results/step_time.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from scalabl_pyro import ScalaBL, ScalaBLConfig, TrainConfig, load_task
from scalabl_pyro.inference.train import Trainer, batch_indices
from scalabl_pyro.io.loading import load_base_model
from scalabl_pyro.program.adapters import SubspaceLoRA
from scalabl_pyro.program.formats import make_format
from scalabl_pyro.program.scoring import class_scores

METHODS = ("lora", "mle", "scalabl")


class PlainLoRAStep:
    """One AdamW step of ordinary peft LoRA on the class scores (no Pyro, no hooks)."""

    def __init__(self, args: argparse.Namespace, train, device: torch.device) -> None:
        base, tok = load_base_model(args.model, dtype=args.dtype, device=str(device))
        self.sub = SubspaceLoRA(base, rank=8, alpha=16, svd_init=False)
        self.sub.remove_hooks()
        self.fmt = make_format("choice", tok, train.num_classes)
        self.opt = torch.optim.AdamW(self.sub.lora_parameters(), lr=args.lr)
        self.train, self.device, self.bs = train, device, args.batch_size

    def __call__(self, i: int) -> None:
        idx = batch_indices(len(self.train), self.bs, 0, i)  # the Trainer's batches
        batch = self.fmt.encode([self.train[j] for j in idx], indices=idx).to(self.device)
        self.opt.zero_grad()
        scores = class_scores(self.sub, batch)
        torch.nn.functional.cross_entropy(scores, batch.labels).backward()
        torch.nn.utils.clip_grad_norm_(self.sub.lora_parameters(), 1.0)
        self.opt.step()


class PyroStep:
    """One step of the library's Trainer (the Pyro path) for a guide family."""

    def __init__(self, args, train, device: torch.device, guide: str) -> None:
        base, tok = load_base_model(args.model, dtype=args.dtype, device=str(device))
        cfg = ScalaBLConfig(guide=guide, prior_scale=None if guide == "mle" else 1.0)
        sbl = ScalaBL(cfg, base, tok)
        tcfg = TrainConfig(steps=10_000, batch_size=args.batch_size, lr=args.lr, progress=False)
        self.trainer = Trainer(
            sbl.model, sbl.guide, guide, sbl.format_for(train), train, tcfg, device
        )

    def __call__(self, i: int) -> None:
        self.trainer.step()


def _make(method: str, args, train, device):
    if method == "lora":
        return PlainLoRAStep(args, train, device)
    return PyroStep(args, train, device, "mle" if method == "mle" else "mean_field")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_interleaved(args, train, device) -> dict[str, list[float]]:
    """Seconds per step of each method, steps interleaved."""
    runners = {m: _make(m, args, train, device) for m in METHODS}
    times: dict[str, list[float]] = {m: [] for m in METHODS}
    for i in range(args.warmup + args.steps):
        for m in METHODS:
            _sync(device)
            t0 = time.perf_counter()
            runners[m](i)
            _sync(device)
            if i >= args.warmup:
                times[m].append(time.perf_counter() - t0)
    return times


def peak_memory_child(method: str, args) -> dict[str, float]:
    """Memory (MiB) of a child process running only ``method``: RSS once the model is
    loaded, and the peak RSS during the training steps (Linux: VmHWM reset via clear_refs)."""
    cmd = [
        sys.executable,
        __file__,
        "--child",
        method,
        "--steps",
        "3",
        "--warmup",
        "0",
        "--model",
        args.model,
        "--dtype",
        args.dtype,
        "--batch-size",
        str(args.batch_size),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _proc_status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(args) -> None:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    train = load_task(args.task, "train")
    run = _make(args.child, args, train, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        loaded = torch.cuda.memory_allocated() / 2**20
    else:
        loaded = _proc_status_mib("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS counter
    for i in range(args.steps):
        run(i)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = _proc_status_mib("VmHWM")
    print(
        json.dumps(
            {
                "after_load": loaded,
                "peak_during_steps": peak,
                "lifetime_peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            }
        )
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="ScalaBL vs plain LoRA step time")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--task", default="arc_easy")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--out", default="benchmarks/results/step_time.json")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(args)
        return 0
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    train = load_task(args.task, "train")
    times = time_interleaved(args, train, device)
    med = {m: statistics.median(t) for m, t in times.items()}
    result = {
        "settings": {k: v for k, v in vars(args).items() if k != "child"},
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
        },
        "median_seconds_per_step": med,
        "ratio_to_plain_lora": {m: med[m] / med["lora"] for m in METHODS},
        "all_seconds": times,
        "peak_memory_mib": {m: peak_memory_child(m, args) for m in METHODS},
    }
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, path)
    print(
        json.dumps(
            {
                k: result[k]
                for k in ("median_seconds_per_step", "ratio_to_plain_lora", "peak_memory_mib")
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
