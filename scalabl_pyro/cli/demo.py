"""``scalabl demo``: zero-shot, MLE LoRA (+ TS) and ScalaBL on the embedded model and ARC-Easy."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from scalabl_pyro.cli.options import NO_PROGRESS, num_option, verbose_flag
from scalabl_pyro.errors import ScalaBLError


def register(sub: Any) -> None:
    """Add ``scalabl demo`` to the subcommands."""
    p = sub.add_parser(
        "demo",
        help="zero-shot, MLE LoRA (+ TS) and ScalaBL on SmolLM2-135M + ARC-Easy (~12 min CPU)",
    )
    verbose_flag(p, top=False)
    p.add_argument("--output", default="demo_output", help="directory for results.json and PNG")
    num_option(p, "--steps", "training steps per method", "160; --regime short: 150")
    num_option(p, "--eval-limit", "report questions", 200)
    num_option(p, "--samples", "posterior samples for BMA", 10)
    p.add_argument("--quick", action="store_true", help="a 1-2 minute smoke version")
    p.add_argument(
        "--regime",
        choices=("short", "overfit"),
        default="overfit",
        help="overfit (default): 64 training questions for 10 epochs, test split, MLE + "
        "temperature scaling (~12 min); short: 150 steps on all of train, validation split",
    )
    p.add_argument("--no-progress", action="store_true", help=NO_PROGRESS)


def run(args: argparse.Namespace) -> None:
    """Run the demo (:func:`scalabl_pyro.experiments.demo.run_demo`)."""
    out = Path(args.output).expanduser()
    if out.exists() and not out.is_dir():
        raise ScalaBLError(
            f"--output {args.output} is a file; the demo writes results.json and "
            "reliability.png into a directory, so name one"
        )
    from scalabl_pyro.io.checkpoint import check_writable

    check_writable(out, flag="--output")
    from scalabl_pyro.experiments.demo import DemoConfig, run_demo

    overrides: dict[str, Any] = {
        k: v
        for k, v in {
            "steps": args.steps,
            "eval_limit": args.eval_limit,
            "num_samples": args.samples,
        }.items()
        if v is not None
    }
    overrides["output_dir"] = args.output
    overrides["progress"] = args.progress
    if args.regime == "short":
        cfg = DemoConfig.short(quick=args.quick, **overrides)
    else:
        cfg = DemoConfig.quick(**overrides) if args.quick else DemoConfig(**overrides)
    run_demo(cfg)
