"""``scalabl compare``: fit several guide families on the same data and compare them."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from scalabl_pyro.cli.checks import check_report_dir
from scalabl_pyro.cli.options import (
    GUIDES,
    NO_PROGRESS,
    NORMALIZATIONS,
    num_option,
    parse_dtype,
    verbose_flag,
)
from scalabl_pyro.errors import ScalaBLError


def register(sub: Any) -> None:
    """Add ``scalabl compare`` to the subcommands."""
    p = sub.add_parser(
        "compare", help="fit several guide families on the same data and compare them side by side"
    )
    verbose_flag(p, top=False)
    p.add_argument(
        "--families",
        default="mean_field,full_rank,low_rank,block,official",
        help="comma-separated guide families, or 'official' (the paper's recipe) "
        "(default mean_field,full_rank,low_rank,block,official)",
    )
    p.add_argument("--seeds", default="0", help="comma-separated seeds, one fit each (default 0)")
    p.add_argument(
        "--output", required=True, help="directory for the table, figures and per-family results"
    )
    p.add_argument("--model", default="smollm2-135m", help="base model (default smollm2-135m)")
    p.add_argument("--dtype", type=parse_dtype, default="auto", help="base weights (default auto)")
    p.add_argument("--data", default="arc_easy", help="named data set (default arc_easy)")
    num_option(p, "--train-limit", "training questions", 64)
    num_option(p, "--select-limit", "selection questions (not used for fitting)", 100)
    num_option(p, "--eval-limit", "held-out report questions", 200)
    num_option(p, "--steps", "training steps per family", 160)
    num_option(p, "--batch-size", "examples per step", 4)
    num_option(p, "--lr", "learning rate of the LoRA factors", 1e-3)
    num_option(p, "--var-lr", "learning rate of the variational parameters", "10 x lr")
    num_option(p, "--prior-scale", "prior standard deviation", 1.0)
    num_option(p, "--init-scale", "initial posterior std of s", "each family's default")
    p.add_argument(
        "--normalization", default=None, choices=NORMALIZATIONS, help="answer scores (mean)"
    )
    num_option(p, "--rank", "LoRA rank", 8)
    num_option(p, "--samples", "posterior samples for the held-out BMA", 10)
    num_option(p, "--diag-samples", "draws of q for k-hat and training LOO", 100)
    num_option(p, "--exact-limit", "largest training set scored exactly under every draw", 512)
    num_option(p, "--subsample", "residual subsample of the difference estimator", 128)
    p.add_argument("--quick", action="store_true", help="a few-minute smoke version")
    p.add_argument("--no-progress", action="store_true", help=NO_PROGRESS)


def _int_list(text: str, flag: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ScalaBLError(
            f"{flag} {text!r} is not a comma-separated list of integers; e.g. 0,1,2"
        ) from None
    if not vals or any(v < 0 for v in vals):
        raise ScalaBLError(f"{flag} {text!r} needs non-negative integers; e.g. 0,1,2")
    return vals


def run(args: argparse.Namespace) -> None:
    """Fit the families, write the table and figures, print the table."""
    from scalabl_pyro.experiments.comparison import RECIPES, CompareConfig, compare_guides

    families = tuple(f.strip() for f in args.families.split(",") if f.strip())
    known = (*GUIDES, *RECIPES)
    bad = [f for f in families if f not in known]
    if bad:
        raise ScalaBLError(f"--families: unknown guide family {bad[0]!r}; choose from {known}")
    seeds = _int_list(args.seeds, "--seeds")
    check_report_dir(args.output, "families")
    given: dict[str, Any] = {
        "families": families,
        "seeds": seeds,
        "base_model": args.model,
        "dtype": args.dtype,
        "task": args.data,
        "output_dir": args.output,
        "progress": args.progress,
    }
    for flag, key in (
        ("train_limit", "train_limit"),
        ("select_limit", "select_limit"),
        ("eval_limit", "eval_limit"),
        ("steps", "steps"),
        ("batch_size", "batch_size"),
        ("lr", "lr"),
        ("var_lr", "var_lr"),
        ("prior_scale", "prior_scale"),
        ("init_scale", "init_scale"),
        ("normalization", "normalization"),
        ("rank", "rank"),
        ("samples", "num_samples"),
        ("diag_samples", "diag_samples"),
        ("exact_limit", "exact_limit"),
        ("subsample", "subsample_size"),
    ):
        if getattr(args, flag) is not None:
            given[key] = getattr(args, flag)
    cfg = CompareConfig.quick(**given) if args.quick else CompareConfig(**given)
    command = "scalabl " + " ".join(sys.argv[1:]) if sys.argv[1:] else None
    result = compare_guides(cfg, command=command)
    print(result.table())
    print("wrote " + ", ".join(sorted(result.files.values())))
