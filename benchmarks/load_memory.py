"""Peak RSS while loading vs the steady state, on the real SmolLM2 in bf16.

    nice -n 10 python benchmarks/load_memory.py   # -> benchmarks/results/load_memory.json

Each case runs in a fresh subprocess (so one's peak cannot hide in another's):
imports first, then RSS is read (``before``), the model is loaded, garbage
is collected and RSS is read again (``steady``); ``peak`` is the process's
high-water mark (``ru_maxrss``). Cases:

* ``plain``: ``AutoModelForCausalLM.from_pretrained(dir, dtype=bf16)`` (what
  the library did before: safetensors memory-mapped, float32 file pages
  resident while converting);
* ``base``: :func:`scalabl_pyro.load_base_model` (lean path);
* ``checkpoint``: ``ScalaBL.from_pretrained`` of a saved ScalaBL checkpoint.

Goal (issue 9): ``peak / steady <= 1.2``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "load_memory.json"
CASES = ("plain", "base", "checkpoint")


def _rss_mib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def child(case: str, checkpoint: str | None) -> dict:
    """Load once in this process and report before / steady / peak RSS in MiB."""
    import torch
    from transformers import AutoModelForCausalLM

    from scalabl_pyro.api import ScalaBL
    from scalabl_pyro.io.assets import ensure_embedded_model
    from scalabl_pyro.io.loading import load_base_model

    source = str(ensure_embedded_model("smollm2-135m"))
    gc.collect()
    before = _rss_mib()
    if case == "plain":
        obj = AutoModelForCausalLM.from_pretrained(source, dtype=torch.bfloat16)
    elif case == "base":
        obj = load_base_model("smollm2-135m", dtype="bfloat16", device="cpu")
    else:
        obj = ScalaBL.from_pretrained(checkpoint, device="cpu", dtype="bfloat16")
    gc.collect()
    steady = _rss_mib()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    del obj
    return {
        "case": case,
        "rss_before_mib": round(before, 1),
        "rss_steady_mib": round(steady, 1),
        "rss_peak_mib": round(peak, 1),
        "peak_over_steady": round(peak / steady, 3),
        "load_increment_ratio": round((peak - before) / max(steady - before, 1e-9), 3),
    }


def _make_checkpoint(path: Path) -> None:
    from scalabl_pyro.api import ScalaBL
    from scalabl_pyro.config import ScalaBLConfig

    ScalaBL.from_base(ScalaBLConfig(dtype="bfloat16", device="cpu")).save_pretrained(path)


def _run_child(args: list[str]) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    out = subprocess.run(
        [sys.executable, __file__, *args], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    """Run every case in its own process; write and return the results."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--child", choices=CASES, help=argparse.SUPPRESS)
    p.add_argument("--checkpoint", help=argparse.SUPPRESS)
    p.add_argument("--make-checkpoint", help=argparse.SUPPRESS)
    p.add_argument("--output", default=str(RESULTS))
    args = p.parse_args(argv)
    if args.make_checkpoint:
        _make_checkpoint(Path(args.make_checkpoint))
        print("{}")
        return {}
    if args.child:
        result = child(args.child, args.checkpoint)
        print(json.dumps(result))
        return result
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "ckpt"
        _run_child(["--make-checkpoint", str(ckpt)])
        rows = [_run_child(["--child", c, "--checkpoint", str(ckpt)]) for c in CASES]
    result = {
        "command": "nice -n 10 python benchmarks/load_memory.py",
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()}",
        "model": "smollm2-135m (float32 safetensors on disk) loaded in bfloat16 on CPU",
        "goal": "peak_over_steady <= 1.2",
        "cases": rows,
    }
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_name(f".{out.name}.tmp")
    tmp_out.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp_out, out)
    for r in rows:
        print(
            f"{r['case']:>10}: before {r['rss_before_mib']:7.1f} MiB  steady "
            f"{r['rss_steady_mib']:7.1f}  peak {r['rss_peak_mib']:7.1f}  "
            f"peak/steady {r['peak_over_steady']:.3f}"
        )
    return result


if __name__ == "__main__":
    main()
