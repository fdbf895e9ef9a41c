"""Checkpoint files, written atomically.

A checkpoint directory holds:

* ``adapter/`` — peft's own adapter files (``adapter_model.safetensors`` and
  ``adapter_config.json``), loadable by peft alone;
* ``guide.safetensors`` — the variational parameters (guide ``state_dict``);
* ``head.safetensors`` — the answer-token head factors, if ``lm_head`` is adapted;
* ``scalabl_config.json`` — the :class:`ScalaBLConfig`, guide family, prior,
  targets, site names, class tokens, library version;
* ``trainer_state.pt`` + ``history.json`` — optimizer/scheduler state, step
  and ELBO history, for exact resume (tensors only: loaded with
  ``weights_only=True``).

The directory is built next to its destination and swapped in with renames,
so an interrupted save never leaves a half-written checkpoint in place.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from scalabl_pyro.errors import ScalaBLError

CONFIG_FILE = "scalabl_config.json"
GUIDE_FILE = "guide.safetensors"
HEAD_FILE = "head.safetensors"
TRAINER_FILE = "trainer_state.pt"
HISTORY_FILE = "history.json"
ADAPTER_DIR = "adapter"


def write_atomic_dir(path: str | Path, fill: Callable[[Path], None]) -> Path:
    """Create directory ``path`` by calling ``fill(tmpdir)`` then renaming into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        fill(tmp)
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def write_json(path: Path, obj: dict) -> None:
    """Write JSON (inside an atomic directory, or via a temp file + rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True))
    os.replace(tmp, path)


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """safetensors of detached, contiguous CPU copies."""
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path))


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Load a safetensors file (no pickle)."""
    return load_file(str(path))


def read_config(path: str | Path) -> dict:
    """The JSON metadata of a checkpoint, with a clear error if it is not one."""
    path = Path(path)
    cfg = path / CONFIG_FILE
    if not cfg.is_file():
        raise ScalaBLError(
            f"{path} is not a scalabl-pyro checkpoint (no {CONFIG_FILE}); pass the directory "
            "written by save_pretrained / scalabl train --output"
        )
    try:
        return json.loads(cfg.read_text())
    except json.JSONDecodeError as e:
        raise ScalaBLError(f"{cfg} is not valid JSON ({e}); the checkpoint is damaged") from e


def load_trainer_state(path: str | Path) -> dict | None:
    """Optimizer/scheduler state of a checkpoint (None if it has none)."""
    f = Path(path) / TRAINER_FILE
    if not f.is_file():
        return None
    return torch.load(f, map_location="cpu", weights_only=True)
