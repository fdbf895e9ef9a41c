"""Shared-prefix vs full choice scoring: tokens and wall time, measured side by side.

For each task (ARC-Easy, C = 4; BoolQ, C = 2) on the real SmolLM2-135M in
bf16, the same ScalaBL setting (mean-field guide, q_proj/v_proj, r = 8,
choice format) runs with the batches in the full layout (every question
re-run for each choice: ``ChoiceFormat(shared_prefix=False)``, the path
before) and in the shared-prefix layout (the path after):

* a training step of the library's Trainer (batch 4, one particle): two
  trainers on two copies of the model see the same batches, steps
  interleaved (before, after, after, before, ...) so machine noise hits both;
* a 10-sample BMA evaluation (``scalabl_pyro.inference.predict.predict``) of the same
  validation questions, rounds interleaved the same way.

Tokens are the decoder's token positions per call, padding included
(``scoring.decoder_tokens``). Wall time and process CPU time are both
reported (one torch thread by default): on a machine shared with other jobs
CPU time is the steadier measure of the work done. Only ratios measured in
the same run compare.

    nice -n 10 python benchmarks/choice_scoring.py --out benchmarks/results/choice_scoring.json
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time

import numpy as np
import torch

from scalabl_pyro import ScalaBL, ScalaBLConfig, TrainConfig, load_task
from scalabl_pyro.inference.predict import predict
from scalabl_pyro.inference.train import Trainer, batch_indices
from scalabl_pyro.io.loading import load_base_model
from scalabl_pyro.program.scoring import decoder_tokens

sys.path.insert(0, os.path.dirname(__file__))
from _common import command, machine, write_results  # noqa: E402

PATHS = ("before", "after")


def _formats(sbl: ScalaBL, data):
    """The library's choice format for ``data``, with and without the shared layout."""
    after = sbl.format_for(data)
    before = copy.copy(after)
    before.shared_prefix = False
    after.shared_prefix = True
    return {"before": before, "after": after}


def _per_task(spec: str, task: str) -> int:
    """``"24"`` for every task, or ``"arc_easy=24,boolq=10"``."""
    if "=" not in spec:
        return int(spec)
    return int(dict(kv.split("=") for kv in spec.split(","))[task])


def _order(i: int) -> tuple[str, str]:
    return PATHS if i % 2 == 0 else PATHS[::-1]


def bench_training(args, task: str) -> dict:
    """Seconds and decoder tokens per training step, both paths interleaved."""
    train = load_task(task, "train")
    trainers, fmts = {}, {}
    for path in PATHS:
        base, tok = load_base_model(args.model, dtype=args.dtype)
        sbl = ScalaBL(ScalaBLConfig(guide="mean_field"), base, tok)
        fmts[path] = _formats(sbl, train)[path]
        tcfg = TrainConfig(steps=10_000, batch_size=args.batch_size, progress=False, seed=0)
        trainers[path] = Trainer(
            sbl.model, sbl.guide, "mean_field", fmts[path], train, tcfg, torch.device("cpu")
        )
    secs: dict[str, list[float]] = {p: [] for p in PATHS}
    cpu: dict[str, list[float]] = {p: [] for p in PATHS}
    toks: dict[str, list[int]] = {p: [] for p in PATHS}
    for i in range(args.warmup + args.steps):
        idx = batch_indices(len(train), args.batch_size, 0, i)
        for path in _order(i):
            batch = fmts[path].encode([train[j] for j in idx], indices=idx)
            t0, c0 = time.perf_counter(), time.process_time()
            trainers[path].step()
            dt, dc = time.perf_counter() - t0, time.process_time() - c0
            if i >= args.warmup:
                secs[path].append(dt)
                cpu[path].append(dc)
                toks[path].append(decoder_tokens(batch))
    med = {p: statistics.median(secs[p]) for p in PATHS}
    med_cpu = {p: statistics.median(cpu[p]) for p in PATHS}
    tok = {p: float(np.mean(toks[p])) for p in PATHS}
    return {
        "median_seconds_per_step": med,
        "median_cpu_seconds_per_step": med_cpu,
        "mean_decoder_tokens_per_step": tok,
        "speedup": med["before"] / med["after"],
        "cpu_speedup": med_cpu["before"] / med_cpu["after"],
        "token_ratio": tok["before"] / tok["after"],
        "all_seconds": secs,
        "all_cpu_seconds": cpu,
    }


def _text_length(ex) -> int:  # predict()'s batching order (similar lengths together)
    return len(ex.question) + max(len(c) for c in ex.choices)


def _eval_tokens(fmt, data, batch_size: int, samples: int) -> int:
    order = sorted(range(len(data)), key=lambda i: _text_length(data[i]))
    total = 0
    for start in range(0, len(data), batch_size):
        idx = order[start : start + batch_size]
        total += decoder_tokens(fmt.encode([data[i] for i in idx], indices=idx), samples)
    return total


def bench_evaluation(args, task: str) -> dict:
    """Seconds and decoder tokens per evaluated question, S-sample BMA, both paths."""
    val = load_task(task, "validation", limit=_per_task(args.eval_questions, task), seed=0)
    base, tok = load_base_model(args.model, dtype=args.dtype)
    sbl = ScalaBL(ScalaBLConfig(guide="mean_field"), base, tok)
    fmts = _formats(sbl, val)
    n = len(val)
    secs: dict[str, list[float]] = {p: [] for p in PATHS}
    cpu: dict[str, list[float]] = {p: [] for p in PATHS}
    probs = {}
    kw = dict(num_samples=args.samples, batch_size=args.eval_batch_size, progress=False, seed=0)
    for i in range(args.eval_rounds):
        for path in _order(i):
            t0, c0 = time.perf_counter(), time.process_time()
            pred = predict(sbl.model, sbl.guide, fmts[path], val, **kw)
            secs[path].append((time.perf_counter() - t0) / n)
            cpu[path].append((time.process_time() - c0) / n)
            probs[path] = pred
    med = {p: statistics.median(secs[p]) for p in PATHS}
    med_cpu = {p: statistics.median(cpu[p]) for p in PATHS}
    tok = {p: _eval_tokens(fmts[p], val, args.eval_batch_size, args.samples) / n for p in PATHS}
    diff = float(np.abs(probs["before"].probs - probs["after"].probs).max())
    return {
        "questions": n,
        "median_seconds_per_question": med,
        "decoder_tokens_per_question": tok,
        "median_cpu_seconds_per_question": med_cpu,
        "speedup": med["before"] / med["after"],
        "cpu_speedup": med_cpu["before"] / med_cpu["after"],
        "token_ratio": tok["before"] / tok["after"],
        "max_abs_prob_difference_bf16": diff,
        "accuracy": {p: probs[p].metrics()["acc"] for p in PATHS},
        "all_seconds_per_question": secs,
        "all_cpu_seconds_per_question": cpu,
    }


def _markdown(result: dict) -> str:
    s = result["settings"]
    lines = [
        "# Shared-prefix choice scoring: before (full) vs after (shared prefix)",
        "",
        f"Command: `{result['command']}`",
        f"Machine: {result['machine']['platform']}, {result['machine']['cpus']} CPUs, "
        f"torch {result['machine']['torch']} (threads={result['machine']['torch_threads']}), "
        f"{result['machine']['device']}; {result['note']}",
        f"Settings: {s['model']} in {s['dtype']}, mean-field ScalaBL, q_proj/v_proj r = 8, "
        f"training batch {s['batch_size']} ({s['steps']} timed steps), evaluation "
        f"{s['samples']}-sample BMA on validation questions ({s['eval_questions']}) "
        f"(batch {s['eval_batch_size']}, {s['eval_rounds']} rounds).",
        "",
        "| task | measure | before | after | speed-up (wall) | speed-up (CPU time) | token ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for task, r in result["tasks"].items():
        t, e = r["training"], r["evaluation"]
        lines.append(
            f"| {task} | training step, s wall (CPU) | "
            f"{t['median_seconds_per_step']['before']:.3f} "
            f"({t['median_cpu_seconds_per_step']['before']:.3f}) | "
            f"{t['median_seconds_per_step']['after']:.3f} "
            f"({t['median_cpu_seconds_per_step']['after']:.3f}) | {t['speedup']:.2f}x | "
            f"{t['cpu_speedup']:.2f}x | {t['token_ratio']:.2f}x |"
        )
        lines.append(
            f"| {task} | training step, decoder tokens | "
            f"{t['mean_decoder_tokens_per_step']['before']:.0f} | "
            f"{t['mean_decoder_tokens_per_step']['after']:.0f} | | | |"
        )
        lines.append(
            f"| {task} | {s['samples']}-sample evaluation, s / question wall (CPU) | "
            f"{e['median_seconds_per_question']['before']:.3f} "
            f"({e['median_cpu_seconds_per_question']['before']:.3f}) | "
            f"{e['median_seconds_per_question']['after']:.3f} "
            f"({e['median_cpu_seconds_per_question']['after']:.3f}) | {e['speedup']:.2f}x | "
            f"{e['cpu_speedup']:.2f}x | {e['token_ratio']:.2f}x |"
        )
        lines.append(
            f"| {task} | {s['samples']}-sample evaluation, decoder tokens / question | "
            f"{e['decoder_tokens_per_question']['before']:.0f} | "
            f"{e['decoder_tokens_per_question']['after']:.0f} | | | |"
        )
    lines += [
        "",
        "Max |p_before - p_after| of the BMA probabilities (bf16 round-off): "
        + ", ".join(
            f"{k} {v['evaluation']['max_abs_prob_difference_bf16']:.2g}"
            for k, v in result["tasks"].items()
        ),
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="shared-prefix vs full choice scoring")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--tasks", default="arc_easy,boolq")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--samples", type=int, default=10)
    p.add_argument(
        "--eval-questions",
        default="arc_easy=24,boolq=10",
        help="validation questions per task: N, or task=N,task=N",
    )
    p.add_argument("--eval-batch-size", type=int, default=8)
    p.add_argument("--eval-rounds", type=int, default=2)
    p.add_argument(
        "--note",
        default="machine shared with other jobs (compare only the ratios of this run)",
    )
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--out", default="benchmarks/results/choice_scoring.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = {"command": command(), "machine": machine(), "note": args.note}
    result["settings"] = {k: v for k, v in vars(args).items() if k not in ("out", "note")}
    result["tasks"] = {}
    t0 = time.perf_counter()
    for task in args.tasks.split(","):
        result["tasks"][task] = {
            "training": bench_training(args, task),
            "evaluation": bench_evaluation(args, task),
        }
        speed = {k: (v["speedup"], v["cpu_speedup"]) for k, v in result["tasks"][task].items()}
        print(task, speed, flush=True)
    result["wall_seconds"] = time.perf_counter() - t0
    load = os.getloadavg()
    result["machine"]["load_average_1_5_15_at_end"] = [round(x, 2) for x in load]
    write_results(args.out, result, _markdown(result))
    print(_markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
