"""Helpers shared by the benchmark scripts: machine description and atomic result files."""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
from pathlib import Path

import torch

from scalabl_pyro.utils.atomic import write_text_atomic


def machine() -> dict:
    """The machine and library versions a result was measured on."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "load_average_1_5_15_at_start": [round(x, 2) for x in load],
        "niceness": os.nice(0),
    }


def command() -> str:
    """The command line that produced a result."""
    return "python " + " ".join(shlex.quote(a) for a in sys.argv)


def write_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (unique temporary name, then a rename)."""
    return write_text_atomic(path, text)


def write_results(path: str | Path, result: dict, markdown: str) -> None:
    """``path`` (.json) and the same name with ``.md``, both atomically."""
    path = Path(path)
    write_atomic(path, json.dumps(result, indent=2) + "\n")
    write_atomic(path.with_suffix(".md"), markdown)


def study_paths(description: str, study: Path, argv: list[str] | None) -> tuple[Path, Path]:
    """``--study`` (the calibration study's folder) and ``--out`` (default: the study)."""
    import argparse

    p = argparse.ArgumentParser(description=description)
    p.add_argument("--study", type=Path, default=study, help="the calibration study's folder")
    p.add_argument("--out", type=Path, default=None, help="where to write (default: --study)")
    args = p.parse_args(argv)
    return args.study, args.out or args.study
