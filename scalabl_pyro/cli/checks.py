"""Checks and loaders several commands share; each imports what it needs when called."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from scalabl_pyro.cli.options import MAX_LETTER_CHOICES
from scalabl_pyro.errors import ScalaBLError


def check_letter_classes(data: Any, task_format: str, num_classes: int | None) -> None:
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


def check_device(device: str) -> None:
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


def read_checkpoint_meta(path: str, flag: str) -> dict:
    from scalabl_pyro.io.checkpoint import CONFIG_FILE, read_config, recover_interrupted_save

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


def check_checkpoint_files(path: str) -> None:
    """Every file of the checkpoint whole, before the model loads (headers only)."""
    from scalabl_pyro.io.checkpoint import Checkpoint

    Checkpoint(Path(path).expanduser()).check_files()


def load_data(args: argparse.Namespace) -> Any:
    from scalabl_pyro.data import load_task

    seed = getattr(args, "subset_seed", 0)
    data = load_task(args.data, args.split, source=args.source, limit=args.limit, seed=seed)
    return data


def scalabl_class() -> Any:
    """Import the heavy stack (torch, transformers, peft, pyro)."""
    from scalabl_pyro.api import ScalaBL

    return ScalaBL


def check_report_dir(path: str, marker: str) -> Path:
    """An output directory that is new, empty, or one this command wrote (holds ``marker``)."""
    from scalabl_pyro.io.checkpoint import check_writable

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


def held_out_examples(
    value: str, args: argparse.Namespace, *, flag: str, taken: str, limit: int | None
) -> Any:
    """The questions ``flag`` names for fitting a temperature: a file, or a split of --data.

    ``taken`` says what ``args.split`` is used for in this command ("the training split",
    "the split being reported"); a temperature fitted on it would be fitted on the
    questions it is judged by, so that split is refused. A split name needs --data to be a
    data set with splits, not one local file. Files are read as validation data.
    """
    from scalabl_pyro.data import load_local, load_task
    from scalabl_pyro.data.local import is_local_path
    from scalabl_pyro.data.registry import KNOWN_TASKS, canonical_name

    if is_local_path(value):
        data = load_local(value, split="validation")
        return data.subset(limit, seed=0) if limit is not None and limit < len(data) else data
    if canonical_name(str(args.data)) not in KNOWN_TASKS and is_local_path(args.data):
        raise ScalaBLError(
            f"{flag} {value} names a split, but --data {args.data} is one local file; "
            "pass the path of a held-out file instead"
        )
    if value == args.split:
        raise ScalaBLError(
            f"{flag} {value} is {taken}; fit the temperature on held-out questions "
            f"(e.g. {flag} validation)"
        )
    return load_task(args.data, value, source=args.source, limit=limit, seed=0)
