"""The ``scalabl`` parser, built from the command modules, and the entry point.

Each command is one module with ``register(subparsers)`` and ``run(args)``;
:data:`COMMANDS` lists them in the order ``--help`` shows. Building the parser
imports only the command modules, which import torch only inside ``run``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from types import ModuleType

from scalabl_pyro.cli import (
    benchmark,
    compare,
    data,
    demo,
    diagnose,
    evaluate,
    fetch,
    train,
)
from scalabl_pyro.cli.options import EXIT_USAGE, Parser, verbose_flag
from scalabl_pyro.errors import ScalaBLError
from scalabl_pyro.inference.interrupt import TrainingInterrupted
from scalabl_pyro.utils.logging_utils import cli_logging

COMMANDS: dict[str, ModuleType] = {
    "fetch": fetch,
    "demo": demo,
    "train": train,
    "evaluate": evaluate,
    "data": data,
    "compare": compare,
    "diagnose": diagnose,
    "benchmark": benchmark,
}
"""Command name -> its module (``register`` adds the subparser, ``run`` executes it)."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for documentation and tests)."""
    parser = Parser(
        prog="scalabl",
        description="ScalaBL: Bayesian LoRA for LLMs via variational subspace inference (Pyro).",
    )
    verbose_flag(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMANDS.values():
        module.register(sub)
    return parser


def _os_error_line(e: OSError) -> str:
    what = e.strerror or str(e) or type(e).__name__
    where = f" ({e.filename})" if e.filename else ""
    return (
        f"{what}{where}; check the path, its permissions and the free disk space, then run "
        "the command again"
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``scalabl`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    # idle OpenMP threads sleep instead of spinning: two jobs sharing the cores no longer
    # starve each other (read when torch loads, so set before; docs/reliability.md)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    args.progress = not getattr(args, "no_progress", False) and sys.stderr.isatty()
    with cli_logging(args.verbose, progress=args.progress):
        try:
            COMMANDS[args.command].run(args)
        except ScalaBLError as e:
            print(f"error: {e}", file=sys.stderr)
            return EXIT_USAGE
        except OSError as e:  # a full disk, a lost mount, permissions: the machine, not a bug
            logging.getLogger(__name__).info("the error in full:", exc_info=True)  # shown with -v
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
