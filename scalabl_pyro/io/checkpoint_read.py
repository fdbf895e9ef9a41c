"""Reading a checkpoint back: every file checked, every damaged or foreign one a clear error.

:class:`Checkpoint` reads the metadata once and each file on demand, and
refuses a checkpoint made for another base model (:meth:`Checkpoint.check_compatible`)
before any tensor is read. :func:`resume_data_settings` and
:func:`check_train_data` hold a resumed run to the training set the
checkpoint records (:data:`TRAIN_DATA_KEY`). The layout: :mod:`scalabl_pyro.io.checkpoint`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from scalabl_pyro.errors import ScalaBLError
from scalabl_pyro.io.checkpoint_dir import (
    ADAPTER_CONFIG,
    ADAPTER_DIR,
    ADAPTER_WEIGHTS,
    CONFIG_FILE,
    ENSEMBLE_FILE,
    GUIDE_FILE,
    HISTORY_FILE,
    LORA_FILE,
    TRAINER_FILE,
    recover_interrupted_save,
)

if TYPE_CHECKING:  # torch is imported where tensors are read, so that the
    import torch  # output-directory checks of the CLI refuse in a fraction of a second


def _missing(path: Path) -> ScalaBLError:
    return ScalaBLError(
        f"{path} is missing; the checkpoint is incomplete: restore it or train again"
    )


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Load a safetensors file (no pickle); a damaged file is one clear error."""
    if not path.is_file():
        raise _missing(path)
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for bad headers/data
        raise ScalaBLError(
            f"{path} is not a readable safetensors file ({type(e).__name__}); the checkpoint is "
            "damaged (truncated or overwritten): restore it or train again"
        ) from e


def tensor_shapes(path: Path) -> dict[str, list[int]]:
    """Names and shapes in a safetensors header, without reading any tensor data."""
    if not path.is_file():
        raise _missing(path)
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: list(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    except Exception as e:
        raise ScalaBLError(
            f"{path} is not a readable safetensors file ({type(e).__name__}); the checkpoint is "
            "damaged (truncated or overwritten): restore it or train again"
        ) from e


def _module_kinds(sites: list[str]) -> list[str]:
    """The target-module names (last path component) adapted by ``sites``, in order."""
    return list(dict.fromkeys(name.rsplit(".", 1)[-1] for name in sites))


def _site_mismatch(saved: list[str], here: list[str], base: str | None) -> str:
    """Say what differs between a checkpoint's latent sites and a model's, and the fix."""
    kinds_saved, kinds_here = _module_kinds(saved), _module_kinds(here)
    if set(kinds_saved) != set(kinds_here):
        return (
            f"the checkpoint adapts {', '.join(kinds_saved) or 'no modules'} but this model is "
            f"set up to adapt {', '.join(kinds_here) or 'no modules'}; build it with the "
            f"checkpoint's target modules (target_modules={tuple(kinds_saved)!r}), as "
            "from_pretrained does"
        )
    if set(saved) == set(here):
        return (
            f"the checkpoint lists its {len(saved)} latent sites in another order than this "
            f"model ({kinds_saved} vs {kinds_here}); build it with the checkpoint's target "
            f"modules in their order (target_modules={tuple(kinds_saved)!r})"
        )
    only_saved = [n for n in saved if n not in set(here)]
    only_here = [n for n in here if n not in set(saved)]
    example = (
        f"{only_saved[0]!r} is in the checkpoint only"
        if only_saved
        else f"{only_here[0]!r} is on this model only"
    )
    return (
        f"the checkpoint has {len(saved)} latent sites and this model {len(here)}, and "
        f"{len(only_saved)} of the checkpoint's are not on this model ({example}): the base "
        f"model has other layers than the one it was trained on ({base}); load it on that model"
    )


class Checkpoint:
    """A checkpoint directory opened for reading (metadata read once)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._files_checked = False
        recover_interrupted_save(self.path)
        self.meta = read_config(self.path)
        if self.meta.get("library") != "scalabl-pyro" or "config" not in self.meta:
            raise ScalaBLError(
                f"{self.path / CONFIG_FILE} is not a scalabl-pyro checkpoint config; pass the "
                "directory written by save_pretrained / scalabl train --output"
            )
        if "lora_shapes" not in self.meta:
            raise ScalaBLError(
                f"{self.path} was written by an older scalabl-pyro (no {LORA_FILE}); "
                "train it again with this version"
            )

    def check_compatible(self, site_names: list[str], lora_shapes: Mapping[str, list[int]]) -> None:
        """Refuse, before any tensor is read, a checkpoint made for another base model."""
        base = self.meta["config"].get("base_model")
        saved_sites = list(self.meta.get("site_names") or [])
        if saved_sites != list(site_names):
            raise ScalaBLError(
                f"{self.path}: {_site_mismatch(saved_sites, list(site_names), base)}"
            )
        for source, shapes in (
            ("config", self.meta["lora_shapes"]),
            (LORA_FILE, tensor_shapes(self.path / LORA_FILE)),
        ):
            if dict(shapes) != dict(lora_shapes):
                bad = sorted(
                    k for k in set(shapes) | set(lora_shapes) if shapes.get(k) != lora_shapes.get(k)
                )
                raise ScalaBLError(
                    f"{self.path}: LoRA factor {bad[0]} is {shapes.get(bad[0])} in the "
                    f"checkpoint's {source} but {lora_shapes.get(bad[0])} on this base model; "
                    f"load it on the base model it was trained on ({base})"
                )

    def check_files(self) -> None:
        """Refuse a damaged or incomplete checkpoint before any model is loaded.

        Reads what is cheap and says whether every file is whole: the
        safetensors headers (a truncated file fails here: its header names
        more bytes than there are) of the LoRA factors, the guide and the
        peft adapter, and the adapter's and the history's JSON.
        ``trainer_state.pt`` is read in full when a run is resumed. Checked once
        per :class:`Checkpoint`: a second call (loading after the resume
        decision) reads nothing.
        """
        if self._files_checked:
            return
        for f in (LORA_FILE, GUIDE_FILE, f"{ADAPTER_DIR}/{ADAPTER_WEIGHTS}"):
            tensor_shapes(self.path / f)
        adapter_config = self.path / ADAPTER_DIR / ADAPTER_CONFIG
        if not adapter_config.is_file():
            raise _missing(adapter_config)
        _read_json(adapter_config)
        self.history()
        self._files_checked = True

    def lora(self) -> dict[str, torch.Tensor]:
        """The unfolded LoRA factors."""
        return load_tensors(self.path / LORA_FILE)

    def guide_state(self) -> dict[str, torch.Tensor]:
        """The guide's state dict."""
        return load_tensors(self.path / GUIDE_FILE)

    def members(self) -> dict[str, torch.Tensor] | None:
        """An ensemble's packed member tensors (None if the checkpoint holds no ensemble)."""
        if self.meta["config"].get("method") != "ensemble":
            return None
        if not (self.path / ENSEMBLE_FILE).is_file() and not self.meta.get("num_members"):
            return None  # an ensemble saved before training: no members yet
        return load_tensors(self.path / ENSEMBLE_FILE)

    def history(self) -> dict:
        """The training history (empty if the checkpoint has none)."""
        f = self.path / HISTORY_FILE
        if not f.is_file():
            return {}
        return _read_json(f)

    def trainer_state(self) -> dict | None:
        """Optimizer/scheduler state (None if the checkpoint has none)."""
        return load_trainer_state(self.path)


def read_config(path: str | Path) -> dict:
    """The JSON metadata of a checkpoint, with a clear error if it is not one."""
    path = Path(path)
    cfg = path / CONFIG_FILE
    if not cfg.is_file():
        raise ScalaBLError(
            f"{path} is not a scalabl-pyro checkpoint (no {CONFIG_FILE}); pass the directory "
            "written by save_pretrained / scalabl train --output"
        )
    return _read_json(cfg)


def _read_json(path: Path) -> dict:
    try:
        obj = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ScalaBLError(
            f"{path} is not valid JSON ({e}); the checkpoint is damaged: restore it or train again"
        ) from e
    if not isinstance(obj, dict):
        raise ScalaBLError(
            f"{path} does not hold a JSON object; the checkpoint is damaged: restore it or "
            "train again"
        )
    return obj


def load_trainer_state(path: str | Path) -> dict | None:
    """Optimizer/scheduler state of a checkpoint (None if it has none)."""
    f = Path(path) / TRAINER_FILE
    if not f.is_file():
        return None
    import torch

    try:
        return torch.load(f, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, foreign pickle, ...
        raise ScalaBLError(
            f"{f} could not be read ({type(e).__name__}); the checkpoint is damaged: restore it "
            "or train again without --resume"
        ) from e


# ------------------------------------------------------- the training set of a run

TRAIN_DATA_KEY = "train_data"
"""Key of :meth:`MCDataset.identity` in ``scalabl_config.json``: the run's training set."""

#: The settings that choose a training set, as the CLI names them (``--data``: the origin).
_DATA_FLAGS = {"split": "--split", "limit": "--limit", "source": "--source"}


def describe_train_data(identity: Mapping) -> str:
    """``arc_easy/train (--limit 16, seed 0): 16 examples, sha256 1a2b3c4d5e6f``."""
    name = identity.get("origin") or identity.get("name")
    chosen = (
        f" (--limit {identity['limit']}, seed {identity.get('subset_seed', 0)})"
        if identity.get("limit") is not None
        else ""
    )
    return (
        f"{name}/{identity.get('split')}{chosen}: {identity.get('num_examples')} examples, "
        f"sha256 {str(identity.get('sha256'))[:12]}"
    )


def resume_data_settings(saved: Mapping | None, given: Mapping[str, object]) -> dict:
    """The data settings a resumed run loads: the saved ones, unless given.

    ``given`` holds the CLI's ``data``, ``split``, ``limit`` and ``source``
    (``None``: not given). A given ``--split``, ``--limit`` or ``--source``
    other than the saved one would train on another set, and is refused here,
    before anything loads; ``--data`` may name the same set another way (a
    moved file), so it is compared by fingerprint once loaded
    (:func:`check_train_data`). A checkpoint that does not record its
    training set (an older version) needs ``--data``.
    """
    if saved is None:
        if given.get("data") is None:
            raise ScalaBLError(
                "--resume: the checkpoint in --output does not record its training set (saved "
                "by an older scalabl-pyro), so it cannot be reused; pass the --data (and "
                "--split, --limit) of the run it continues"
            )
        return {
            "data": given["data"],
            "split": given.get("split") or "train",
            "limit": given.get("limit"),
            "source": given.get("source") or "auto",
            "seed": 0,
        }
    for key, flag in _DATA_FLAGS.items():
        value = given.get(key)
        ours = saved.get(key)
        if key == "source" and value == "auto":
            continue  # auto picks the saved source's examples, checked by fingerprint
        if (
            value is not None
            and value != ours
            and not (key == "split" and str(value).strip().lower() == str(ours))
        ):
            raise ScalaBLError(
                f"--resume continues training on the checkpoint's training set "
                f"({describe_train_data(saved)}), so {flag} {value} would change it "
                f"(saved: {'all examples' if ours is None else ours}); drop {flag}, or train a "
                "new model into another --output"
            )
    origin = saved.get("origin")
    local = saved.get("source") == "local" and origin is not None
    if given.get("data") is None and local and not Path(origin).expanduser().is_file():
        raise ScalaBLError(
            f"--resume: the checkpoint's training set is the file {origin}, which is not "
            "found from here (a relative path counts from where training ran); pass --data "
            "with its path"
        )
    return {
        "data": given.get("data") if given.get("data") is not None else origin,
        "split": saved.get("split"),
        "limit": saved.get("limit"),
        "source": saved.get("source") or "auto",
        "seed": saved.get("subset_seed") or 0,
    }


def check_train_data(
    saved: Mapping | None, data, *, where: str, flag: str = "--data", fix: str | None = None
) -> None:
    """Refuse to resume on examples other than those the checkpoint was trained on.

    ``saved`` is the checkpoint's :data:`TRAIN_DATA_KEY` entry (``None``, an
    older checkpoint: nothing to compare); ``data`` the :class:`MCDataset`
    about to be trained on. Same fingerprint (sha256 of the examples), same
    set, whatever it is called.
    """
    if saved is None:
        return
    now = data.identity()
    if now["sha256"] == saved.get("sha256"):
        return
    same_source = saved.get("origin") is not None and now.get("origin") == saved.get("origin")
    if (
        same_source
        and now.get("split") == saved.get("split")
        and (now.get("limit") == saved.get("limit"))
    ):
        what = (
            f"the training set of the checkpoint in {where}, {describe_train_data(saved)}, has "
            f"changed since (now {now['num_examples']} examples, sha256 {now['sha256'][:12]}); "
            "restore it, or train a new model into another output"
        )
    else:
        what = (
            f"{flag} {describe_train_data(now)} is not the training set of the checkpoint in "
            f"{where} ({describe_train_data(saved)}); "
            + (fix or f"drop {flag} to continue on the saved one, or train anew elsewhere")
        )
    raise ScalaBLError(what)
