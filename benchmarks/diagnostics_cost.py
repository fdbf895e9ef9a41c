"""Cost of the diagnostics' S x N log-likelihood matrix against the BMA path, side by side.

On the same training questions and model (SmolLM2-135M, mean-field ScalaBL at
the library defaults, ARC-Easy in choice scoring with the shared prefix),
each round times

* ``predict``: ``predict(num_samples=10)``, the BMA a user runs;
* ``to_inference_data``: S draws of q (guide traces, with log q) and the
  (S, N) log-likelihood matrix, ``num_samples=S``;
* ``diagnose``: the same plus k-hat of q and PSIS-LOO of the training questions.

Reported: seconds per (question, draw) of each, and their ratio to
``predict`` (goal: at most 1: the matrix costs what the BMA costs per draw).
Rounds rotate the order; medians over rounds; wall and process CPU time.

    OMP_NUM_THREADS=1 python benchmarks/diagnostics_cost.py \
        --out benchmarks/results/diagnostics_cost.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

from scalabl_pyro import ScalaBL, ScalaBLConfig, load_task
from scalabl_pyro.diagnostics.posterior import diagnose, to_inference_data

sys.path.insert(0, os.path.dirname(__file__))
from _common import command, machine, write_results  # noqa: E402


def _timed(fn) -> tuple[float, float]:
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--questions", type=int, default=16)
    p.add_argument("--draws", type=int, default=30, help="S of the diagnostics (>= 25)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--out", default="benchmarks/results/diagnostics_cost.json")
    a = p.parse_args(argv)
    data = load_task("arc_easy", "train", limit=a.questions, seed=0)
    sbl = ScalaBL.from_base(ScalaBLConfig(base_model=a.model, dtype=a.dtype))
    n = len(data)
    runs = {
        "predict": (10, lambda: sbl.predict(data, num_samples=10, progress=False)),
        "to_inference_data": (a.draws, lambda: to_inference_data(sbl, data, num_samples=a.draws)),
        "diagnose": (a.draws, lambda: diagnose(sbl, data, num_samples=a.draws)),
    }
    runs["predict"][1]()  # warm-up: first-call allocations, tokenizer caches
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in runs}
    names = list(runs)
    for r in range(a.rounds):
        for k in names[r % len(names) :] + names[: r % len(names)]:
            times[k].append(_timed(runs[k][1]))
    rows = {}
    for k, (s, _) in runs.items():
        wall = statistics.median(t[0] for t in times[k])
        cpu = statistics.median(t[1] for t in times[k])
        rows[k] = {
            "draws": s,
            "wall_s": wall,
            "cpu_s": cpu,
            "wall_per_question_draw_s": wall / (n * s),
            "cpu_per_question_draw_s": cpu / (n * s),
        }
    base = rows["predict"]
    for row in rows.values():
        row["ratio_to_predict_wall"] = (
            row["wall_per_question_draw_s"] / base["wall_per_question_draw_s"]
        )
        row["ratio_to_predict_cpu"] = (
            row["cpu_per_question_draw_s"] / base["cpu_per_question_draw_s"]
        )
    result = {
        "what": "seconds per (question, draw) of the diagnostics' S x N matrix and of predict",
        "settings": {
            "model": a.model,
            "dtype": a.dtype,
            "questions": n,
            "draws": a.draws,
            "rounds": a.rounds,
            "data": "arc_easy/train (first questions of a seed-0 subset)",
            "config": "ScalaBLConfig() defaults (mean_field, choice scoring, mean scores)",
        },
        "rows": rows,
        "machine": machine(),
        "command": command(),
    }
    md = [
        "# Diagnostics cost against predict (per question and draw)",
        "",
        f"{n} ARC-Easy training questions, {a.model} ({a.dtype}), default mean-field ScalaBL; "
        f"predict with 10 draws, diagnostics with {a.draws}; median of {a.rounds} rounds.",
        "",
        "| path | draws | wall s | s per (question, draw) | ratio to predict: wall | CPU |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for k, row in rows.items():
        md.append(
            f"| {k} | {row['draws']} | {row['wall_s']:.1f} | {row['wall_per_question_draw_s']:.4f} "
            f"| {row['ratio_to_predict_wall']:.2f} | {row['ratio_to_predict_cpu']:.2f} |"
        )
    write_results(a.out, result, "\n".join(md) + "\n")
    print("\n".join(md))
    return result


if __name__ == "__main__":
    main()
