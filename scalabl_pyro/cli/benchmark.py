"""``scalabl benchmark``: the resumable methods x data sets x seeds grid
(:mod:`scalabl_pyro.experiments.benchmark`)."""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path
from typing import Any

from scalabl_pyro.cli.options import add_model_args, num_option, verbose_flag
from scalabl_pyro.errors import ScalaBLError

#: ``--quick``: a smoke-sized grid (a minute or two on a CPU).
QUICK = {"train_limit": 8, "steps": 4, "select_limit": 8, "eval_limit": 8}


def split_specs(text: str) -> list[str]:
    """Split ``a,b[x=1,y=2]+ts,c`` on the commas outside brackets."""
    parts, depth, cur = [], 0, []
    for ch in text:
        depth += {"[": 1, "]": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            parts.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur).strip())
    if depth != 0 or not all(parts):
        raise ScalaBLError(
            f"--methods {text!r} is malformed; write e.g. "
            "--methods mle,mle+ts,scalabl[kl_weight=10]"
        )
    return parts


def _int_list(flag: str, text: str) -> list[int]:
    if not re.fullmatch(r"\s*\d+(\s*,\s*\d+)*\s*", text):
        raise ScalaBLError(f"{flag} {text!r} must be comma-separated whole numbers, e.g. 0,1,2")
    return [int(x) for x in text.split(",")]


def register(sub: Any) -> None:
    """Add ``scalabl benchmark`` to the subcommands."""
    p = sub.add_parser(
        "benchmark",
        help="methods x data sets x seeds -> one table (resumable; --quick for a smoke run)",
    )
    verbose_flag(p, top=False)
    add_model_args(p)
    p.add_argument(
        "--methods",
        default="mle,mle+ts,scalabl",
        help="method specs name[key=value,...] (add +ts for temperature scaling), comma-separated "
        "(names: mle, scalabl, full_rank, low_rank, block, reference, official, map, mc_dropout, "
        "ensemble, blob, laplace)",
    )
    p.add_argument("--tasks", default="arc_easy", help="data set keys, comma-separated")
    p.add_argument("--seeds", default="0", help="training seeds, comma-separated (e.g. 0,1,2)")
    p.add_argument(
        "--protocol",
        choices=("in_distribution", "ood"),
        default="in_distribution",
        help="ood: train on OpenBookQA, report ARC-C/E and MMLU chemistry/physics too",
    )
    p.add_argument("--output", required=True, help="benchmark folder (new, or one to resume)")
    num_option(p, "--train-limit", "training questions (a fixed random subset)", 256)
    num_option(p, "--steps", "training steps per cell", 256)
    num_option(p, "--batch-size", "questions per step", 4)
    num_option(p, "--lr", "learning rate of the LoRA factors", 1e-3)
    num_option(p, "--select-limit", "selection (validation) questions", 200)
    num_option(p, "--eval-limit", "report (test) questions per data set", 500)
    num_option(p, "--eval-every", "validation curve every N steps (0: none)", 0)
    num_option(p, "--curve-limit", "selection questions in the validation curve", 100)
    num_option(
        p,
        "--threads",
        "CPU threads (1 keeps cells bitwise reproducible and long runs fast beside other "
        "jobs, docs/reliability.md)",
        "$OMP_NUM_THREADS, else 1",
    )
    p.add_argument("--quick", action="store_true", help="a smoke-sized grid (1-2 minutes)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument(
        "--table-only",
        action="store_true",
        help="rebuild the table from the cells already finished in --output; train nothing",
    )


def config_from_args(args: argparse.Namespace) -> Any:
    """A :class:`~scalabl_pyro.experiments.benchmark.BenchmarkConfig` from the parsed options."""
    from scalabl_pyro.data.registry import check_task
    from scalabl_pyro.experiments.benchmark import BenchmarkConfig

    tasks = [t.strip() for t in args.tasks.split(",")]
    for t in tasks:
        check_task(t)
    given = {  # options left unset keep BenchmarkConfig's own defaults
        "train_limit": args.train_limit,
        "steps": args.steps,
        "select_limit": args.select_limit,
        "eval_limit": args.eval_limit,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "eval_every": args.eval_every,
        "curve_limit": args.curve_limit,
    }
    sizes = {k: v for k, v in given.items() if v is not None}
    if args.quick:
        typed = ["--" + k.replace("_", "-") for k in QUICK if given[k] is not None]
        if typed:
            raise ScalaBLError(
                f"--quick sets the grid's sizes itself, so {', '.join(typed)} would be ignored; "
                "drop --quick or the size options"
            )
        sizes.update(QUICK)
    return BenchmarkConfig(
        methods=split_specs(args.methods),
        tasks=tasks,
        seeds=_int_list("--seeds", args.seeds),
        protocol=args.protocol,
        output=args.output,
        model=args.model or "smollm2-135m",
        dtype=args.dtype,
        device=args.device,
        progress=args.progress,
        extra={"command": "scalabl " + " ".join(sys.argv[1:]), "quick": args.quick},
        **sizes,
    )


def run(args: argparse.Namespace) -> None:
    """Run or resume the grid and print the table."""
    from scalabl_pyro.experiments.benchmark import rebuild_table, run_benchmark

    cfg = config_from_args(args)
    if not args.table_only:
        from scalabl_pyro.inference.train import set_cpu_threads

        set_cpu_threads(args.threads or (None if os.environ.get("OMP_NUM_THREADS") else 1))
    if args.table_only:
        rebuild_table(cfg)
    else:
        run_benchmark(cfg, on_cell=lambda msg: print(msg, file=sys.stderr, flush=True))
    print(Path(cfg.output, "table.md").read_text(), end="")
