"""Cost of Bayesian model averaging, as ratios measured side by side in one run.

On the same validation questions and model (SmolLM2-135M in bf16, mean-field
ScalaBL, q_proj/v_proj r = 8, ARC-Easy in choice scoring with the shared
prefix), each round times

* ``deterministic``: ``predict(mode="mean")``, one pass with the posterior mean;
* ``bma S``: ``predict(num_samples=S)`` for S = 1, 4, 10, 30: S joint draws
  through ``Predictive``, then the program per batch in a vectorised sample
  plate, the S draws folded into the batch (chunks of at most ``max_rows``);
* ``forward S``: the folded forward passes alone, the same chunks of the same
  pre-encoded batches through ``ScalaBLModel.scores`` (no Pyro trace, no
  tokenising, draws made beforehand); ``forward 1`` with the posterior mean
  is the deterministic pass's own forward work.

Reported: ``bma S / deterministic`` (goal: at most S on a CPU), ``forward S /
deterministic``, and the share of ``bma S`` spent above its forwards
(tokenising, drawing, Pyro's trace, float64 averaging). Rounds rotate the
order of the measurements; medians over rounds. Wall and process CPU time
both (one torch thread by default; CPU time is steadier on a shared machine).

    nice -n 10 python benchmarks/bma_cost.py --out benchmarks/results/bma_cost.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

from scalabl_pyro import ScalaBL, ScalaBLConfig, load_task
from scalabl_pyro.inference.predict import draw_latents, posterior_point, predict

sys.path.insert(0, os.path.dirname(__file__))
from _common import command, machine, write_results  # noqa: E402


def _text_length(ex) -> int:  # predict()'s batching order (similar lengths together)
    return len(ex.question) + max(len(c) for c in ex.choices)


@torch.no_grad()
def _forwards(sbl: ScalaBL, batches, latents, max_rows: int) -> None:
    """The folded forward passes of ``predict`` alone, chunked the same way."""
    s_total = next(iter(latents.values())).shape[0]
    for batch in batches:
        chunk = max(1, min(s_total, max_rows // max(batch.num_rows, 1)))
        for s0 in range(0, s_total, chunk):
            sbl.model.scores(batch, {k: v[s0 : s0 + chunk] for k, v in latents.items()})


def _timed(fn) -> tuple[float, float]:
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="cost of S-sample BMA vs one deterministic pass")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--task", default="arc_easy")
    p.add_argument("--questions", type=int, default=16)
    p.add_argument("--samples", default="1,4,10,30")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-rows", type=int, default=256)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument(
        "--note",
        default="machine shared with other jobs (compare only the ratios of this run)",
    )
    p.add_argument("--out", default="benchmarks/results/bma_cost.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = {"command": command(), "machine": machine(), "note": args.note}
    result["settings"] = {k: v for k, v in vars(args).items() if k not in ("out", "note")}
    sizes = [int(s) for s in args.samples.split(",")]

    from scalabl_pyro.io.loading import load_base_model

    base, tok = load_base_model(args.model, dtype=args.dtype)
    sbl = ScalaBL(ScalaBLConfig(guide="mean_field"), base, tok)
    val = load_task(args.task, "validation", limit=args.questions, seed=0)
    fmt = sbl.format_for(val)
    order = sorted(range(len(val)), key=lambda i: _text_length(val[i]))
    batches = [
        fmt.encode([val[i] for i in order[s : s + args.batch_size]])
        for s in range(0, len(val), args.batch_size)
    ]
    point = {k: v[None] for k, v in posterior_point(sbl.guide).items()}
    draws = {s: draw_latents(sbl.model, sbl.guide, s, seed=s) for s in sizes}
    kw = dict(batch_size=args.batch_size, max_rows=args.max_rows, progress=False, seed=0)
    jobs = {"deterministic": lambda: predict(sbl.model, sbl.guide, fmt, val, mode="mean", **kw)}
    jobs["forward 1 (mean)"] = lambda: _forwards(sbl, batches, point, args.max_rows)
    for s in sizes:
        jobs[f"bma {s}"] = lambda s=s: predict(sbl.model, sbl.guide, fmt, val, num_samples=s, **kw)
        jobs[f"forward {s}"] = lambda s=s: _forwards(sbl, batches, draws[s], args.max_rows)
    names = list(jobs)
    wall: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    jobs["deterministic"]()  # warm-up
    t_start = time.perf_counter()
    for r in range(args.rounds):
        shift = r * (len(names) // args.rounds or 1)
        for n in names[shift:] + names[:shift]:
            w, c = _timed(jobs[n])
            wall[n].append(w)
            cpu[n].append(c)
    med = {n: statistics.median(v) for n, v in wall.items()}
    med_cpu = {n: statistics.median(v) for n, v in cpu.items()}
    table = {}
    for s in sizes:
        b, f = f"bma {s}", f"forward {s}"
        table[s] = {
            "bma_over_deterministic_wall": med[b] / med["deterministic"],
            "bma_over_deterministic_cpu": med_cpu[b] / med_cpu["deterministic"],
            "forward_over_deterministic_cpu": med_cpu[f] / med_cpu["deterministic"],
            "share_above_forwards_cpu": 1.0 - med_cpu[f] / med_cpu[b],
        }
    det_share = 1.0 - med_cpu["forward 1 (mean)"] / med_cpu["deterministic"]
    result.update(
        {
            "questions": len(val),
            "median_seconds": med,
            "median_cpu_seconds": med_cpu,
            "ratios": table,
            "deterministic_share_above_forward_cpu": det_share,
            "all_seconds": wall,
            "all_cpu_seconds": cpu,
            "wall_seconds": time.perf_counter() - t_start,
        }
    )
    result["machine"]["load_average_1_5_15_at_end"] = [round(x, 2) for x in os.getloadavg()]
    write_results(args.out, result, _markdown(result))
    print(_markdown(result))
    return 0


def _markdown(result: dict) -> str:
    s, m = result["settings"], result["machine"]
    lines = [
        "# Cost of Bayesian model averaging: S-sample `predict` vs one deterministic pass",
        "",
        f"Command: `{result['command']}`",
        f"Machine: {m['platform']}, {m['cpus']} CPUs, torch {m['torch']} "
        f"(threads={m['torch_threads']}), {m['device']}; {result['note']}",
        f"Settings: {s['model']} in {s['dtype']}, mean-field ScalaBL, {s['task']} validation, "
        f"{result['questions']} questions, choice scoring with the shared prefix, batch "
        f"{s['batch_size']}, max_rows {s['max_rows']}, {s['rounds']} interleaved rounds.",
        f"Deterministic pass (posterior mean): {result['median_seconds']['deterministic']:.2f} s "
        f"wall, {result['median_cpu_seconds']['deterministic']:.2f} s CPU; "
        f"{100 * result['deterministic_share_above_forward_cpu']:.0f} % of its CPU time is "
        "outside the forward pass.",
        "",
        "| S | BMA / deterministic (wall) | BMA / deterministic (CPU) | forwards alone / "
        "deterministic (CPU) | share of BMA above its forwards (CPU) |",
        "|---|---|---|---|---|",
    ]
    for size, r in result["ratios"].items():
        lines.append(
            f"| {size} | {r['bma_over_deterministic_wall']:.2f} | "
            f"{r['bma_over_deterministic_cpu']:.2f} | {r['forward_over_deterministic_cpu']:.2f} | "
            f"{100 * r['share_above_forwards_cpu']:.0f} % |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
