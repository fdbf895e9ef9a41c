"""``scalabl data``: show a data set or a local file (splits, size, an example)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from scalabl_pyro.cli.checks import load_data
from scalabl_pyro.cli.options import add_data_args, verbose_flag


def register(sub: Any) -> None:
    """Add ``scalabl data`` to the subcommands."""
    p = sub.add_parser("data", help="show a data set (or a local file): splits, size, an example")
    verbose_flag(p, top=False)
    add_data_args(p, "validation")


def _choice_counts(ds: Any) -> str:
    counts = [len(e.choices) for e in ds]
    lo, hi = min(counts), max(counts)
    return f"{lo} choices each" if lo == hi else f"{lo} to {hi} choices"


def run(args: argparse.Namespace) -> None:
    """Print the data set's splits, size and first example."""
    from scalabl_pyro.data.local import is_local_path
    from scalabl_pyro.data.registry import KNOWN_TASKS, canonical_name, mmlu_subject

    ds = load_data(args)
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
