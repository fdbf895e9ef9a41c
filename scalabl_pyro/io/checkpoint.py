"""Checkpoints: what goes in one, how it is written atomically, validated and read back.

A checkpoint directory holds:

* ``adapter/`` — a plain peft adapter (``adapter_model.safetensors`` +
  ``adapter_config.json``) with the posterior mean folded in
  (``B' = B diag(mu)``, the answer-token head as an ``lm_head`` LoRA):
  ``PeftModel.from_pretrained(base, ckpt / "adapter")`` *is* the
  posterior-mean model, with peft alone;
* ``lora.safetensors`` — the unfolded LoRA factors ScalaBL trains (peft's
  state-dict keys, plus ``head.lora_A`` / ``head.lora_B``);
* ``guide.safetensors`` — the variational parameters (guide ``state_dict``);
* ``scalabl_config.json`` — the :class:`ScalaBLConfig`, guide family, site
  names, the shapes of every LoRA factor (checked against the base model
  before any tensor is read), class tokens, library version;
* ``trainer_state.pt`` + ``history.json`` — optimizer/scheduler state, step
  and ELBO history, for exact resume (tensors only: loaded with
  ``weights_only=True``);
* ``ensemble.safetensors`` — deep ensembles only: every member's LoRA factors
  and point ``s`` (``member<k>.lora.*`` / ``member<k>.guide.*``); the files
  above then hold member 0.

This module writes one (:func:`save_checkpoint`) and is the one to import:
it re-exports the rest. The directory is built next to its destination and
swapped in with renames, so an interrupted save never leaves a half-written
checkpoint in place (:mod:`~scalabl_pyro.io.checkpoint_dir`, which also
decides whether a run may write at a path). :class:`Checkpoint` reads one: the
metadata once, each file on demand, every damaged or foreign file reported as
one :class:`ScalaBLError` line (:mod:`~scalabl_pyro.io.checkpoint_read`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from scalabl_pyro.io.checkpoint_dir import (
    ADAPTER_CONFIG,
    ADAPTER_DIR,
    ADAPTER_WEIGHTS,
    CHECKPOINT_ENTRIES,
    CONFIG_FILE,
    ENSEMBLE_FILE,
    GUIDE_FILE,
    HISTORY_FILE,
    LORA_FILE,
    TRAINER_FILE,
    check_output_dir,
    check_writable,
    recover_interrupted_save,
    write_atomic_dir,
)
from scalabl_pyro.io.checkpoint_read import (
    TRAIN_DATA_KEY,
    Checkpoint,
    check_train_data,
    describe_train_data,
    load_tensors,
    load_trainer_state,
    read_config,
    resume_data_settings,
    tensor_shapes,
)
from scalabl_pyro.utils.atomic import write_text_atomic

if TYPE_CHECKING:  # torch is imported where tensors are written, so that the
    import torch  # output-directory checks of the CLI refuse in a fraction of a second

__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_DIR",
    "ADAPTER_WEIGHTS",
    "CHECKPOINT_ENTRIES",
    "CONFIG_FILE",
    "ENSEMBLE_FILE",
    "GUIDE_FILE",
    "HISTORY_FILE",
    "LORA_FILE",
    "TRAINER_FILE",
    "TRAIN_DATA_KEY",
    "Checkpoint",
    "CheckpointContents",
    "adapter_base",
    "check_output_dir",
    "check_train_data",
    "check_writable",
    "describe_train_data",
    "load_tensors",
    "load_trainer_state",
    "read_config",
    "recover_interrupted_save",
    "resume_data_settings",
    "save_adapter",
    "save_checkpoint",
    "save_tensors",
    "tensor_shapes",
    "write_atomic_dir",
    "write_json",
]


def write_json(path: Path, obj: dict) -> None:
    """Write JSON atomically (:func:`~scalabl_pyro.utils.atomic.write_text_atomic`)."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True))


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """safetensors of detached, contiguous CPU copies."""
    from safetensors.torch import save_file

    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path))


def adapter_base(model) -> tuple[str | None, str | None]:
    """The base model an exported adapter names: ``(base_model_name_or_path, revision)``.

    ``model`` is the Hugging Face base model. A model from the hub is named by
    its hub id and the commit it was loaded at (``config._commit_hash``); a
    local model (a ``save_pretrained`` directory, or an embedded alias, whose
    converted copy lives in the cache) by its absolute path, without a
    revision. A model with no recorded origin (built from a config in
    memory) gives ``(None, None)``: JSON ``null``, never the string "None".
    """
    name = getattr(model, "name_or_path", None) or getattr(model.config, "name_or_path", None)
    if not name or name == "None":
        return None, None
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path.resolve()), None
    return str(name), getattr(model.config, "_commit_hash", None) or None


def save_adapter(path: Path, state: Mapping[str, torch.Tensor], config) -> None:
    """Write a plain peft adapter directory (weights + ``adapter_config.json``).

    ``config.base_model_name_or_path`` / ``config.revision`` should name the
    base (:func:`adapter_base`) so that ``AutoPeftModelForCausalLM`` can load it.
    """
    path.mkdir(parents=True, exist_ok=True)
    save_tensors(path / ADAPTER_WEIGHTS, dict(state))
    config.save_pretrained(str(path))


@dataclass
class CheckpointContents:
    """Everything :func:`save_checkpoint` writes."""

    meta: dict
    lora: Mapping[str, torch.Tensor]
    guide: Mapping[str, torch.Tensor]
    adapter_state: Mapping[str, torch.Tensor]
    adapter_config: object  # peft LoraConfig
    history: dict
    trainer_state: dict | None = None
    members: Mapping[str, torch.Tensor] | None = None  # ensembles: all members, packed


def save_checkpoint(path: str | Path, contents: CheckpointContents) -> Path:
    """Write a whole checkpoint directory atomically."""

    def fill(tmp: Path) -> None:
        save_adapter(tmp / ADAPTER_DIR, contents.adapter_state, contents.adapter_config)
        save_tensors(tmp / LORA_FILE, dict(contents.lora))
        save_tensors(tmp / GUIDE_FILE, dict(contents.guide))
        write_json(tmp / CONFIG_FILE, contents.meta)
        write_json(tmp / HISTORY_FILE, contents.history)
        if contents.trainer_state is not None:
            import torch

            torch.save(_canonical(contents.trainer_state), tmp / TRAINER_FILE)
        if contents.members is not None:
            save_tensors(tmp / ENSEMBLE_FILE, dict(contents.members))

    return write_atomic_dir(path, fill)


def _canonical(obj):
    """A copy whose pickle depends only on the values: fresh containers, interned strings.

    Pickle writes a string or container seen before as a back-reference, so
    the bytes depend on which objects are shared. A resumed run's optimizer
    state (unpickled: its own copies of ``'step'``, ``'lr'``...) would
    otherwise pickle differently from an uninterrupted run's, though equal.
    """
    import sys

    if isinstance(obj, str):
        return sys.intern(obj)
    if isinstance(obj, dict):
        return {_canonical(k): _canonical(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_canonical(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_canonical(v) for v in obj)
    return obj
