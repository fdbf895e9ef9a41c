"""What the commands share: option types and ranges, the common option groups, and the
words of error messages. Building a parser from these imports no torch (``--help`` is fast).
"""

from __future__ import annotations

import argparse
import math
import re
from dataclasses import dataclass
from typing import Any, NoReturn

from scalabl_pyro.methods import method_names, recipe_names
from scalabl_pyro.methods.base import MEAN_FIELD_GUIDES, POINT_MASS_GUIDES

__all__ = ["MEAN_FIELD_GUIDES", "POINT_MASS_GUIDES"]  # re-exported for the commands

EXIT_USAGE = 2

#: formats.NORMALIZATIONS, spelled out so that building the parser imports no torch (a test
#: checks that the two agree)
NORMALIZATIONS = ("mean", "sum", "byte")

GUIDES = ("mean_field", "log_mean_field", "full_rank", "low_rank", "block", "delta", "mle")
"""Guide families (``program.families.GUIDE_FAMILIES``, repeated to keep parsing light)."""

METHODS = method_names()
"""The registered methods (:mod:`scalabl_pyro.methods`: the registry imports no torch)."""

RECIPES = recipe_names()
"""The registered recipes (``--recipe``)."""

MAX_LETTER_CHOICES = 8
"""Answer letters A-H of the letter format (``scalabl_pyro.program.formats.LETTERS``)."""

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

NO_PROGRESS = "no progress bars (they are drawn only when stderr is a terminal)"


class Parser(argparse.ArgumentParser):
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
    "--calibrate-limit": Range(int, 1),
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


def parse_device(text: str) -> str:
    if not _DEVICE.match(text):
        raise argparse.ArgumentTypeError(
            f"must be auto, cpu, cuda, cuda:<index> or mps, got {text!r}"
        )
    return text


def parse_dtype(text: str) -> str:
    name = text.strip().lower().removeprefix("torch.")
    if name not in _DTYPE_ALIASES:
        raise argparse.ArgumentTypeError(
            f"must be auto, float32, bfloat16 or float16, got {text!r}"
        )
    return _DTYPE_ALIASES[name]


def num_option(p: argparse.ArgumentParser, flag: str, help: str, default: Any, **kw: Any) -> None:
    """A numeric option with its range in the help; ``default`` is only shown (None is stored)."""
    rng = RANGES[flag]
    shown = "" if default is None else f"; default {default}"
    p.add_argument(
        flag, type=rng, default=None, metavar="N", help=f"{help} ({rng.describe()}{shown})", **kw
    )


def verbose_flag(p: argparse.ArgumentParser, top: bool) -> None:
    p.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=False if top else argparse.SUPPRESS,
        help="log at INFO level and show the libraries' warnings",
    )


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        default=None,
        help="embedded alias (smollm2-135m, the default), local directory, or hub id org/name",
    )
    p.add_argument(
        "--device", type=parse_device, default="auto", help="auto, cpu, cuda, cuda:N, mps"
    )
    p.add_argument(
        "--dtype", type=parse_dtype, default="auto", help="auto, float32, bfloat16, float16"
    )


DATA_DEFAULTS = {"data": "arc_easy", "source": "auto"}


def add_data_args(p: argparse.ArgumentParser, split: str, resumable: bool = False) -> None:
    """``resumable`` (train): defaults are filled in later, so --resume can reuse the saved set."""
    saved = "; with --resume, the checkpoint's" if resumable else ""
    p.add_argument(
        "--data",
        default=None if resumable else DATA_DEFAULTS["data"],
        help="data set key (arc_easy, boolq, mmlu_college_physics, ...) or a local "
        ".jsonl/.json/.csv/.parquet file" + (f" (default arc_easy{saved})" if resumable else ""),
    )
    p.add_argument(
        "--split",
        default=None if resumable else split,
        help=f"split of a named data set (default {split}{saved}); "
        "for a local file, the name its one split gets",
    )
    num_option(p, "--limit", f"random subset of this many examples{saved}", None)
    p.add_argument(
        "--source",
        default=None if resumable else DATA_DEFAULTS["source"],
        choices=("auto", "embedded", "hub", "local"),
        help="where a named data set is read from (default auto: embedded, else the hub)",
    )


def given(args: argparse.Namespace, *names: str) -> list[str]:
    """The flags among ``names`` (dest names) that the user typed (not left at None)."""
    return ["--" + n.replace("_", "-") for n in names if getattr(args, n, None) is not None]


def flag_list(flags: list[str]) -> str:
    return flags[0] if len(flags) == 1 else ", ".join(flags[:-1]) + " and " + flags[-1]


def them(flags: list[str]) -> str:
    return "it" if len(flags) == 1 else "them"
