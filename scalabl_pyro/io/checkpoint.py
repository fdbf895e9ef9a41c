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

The directory is built next to its destination and swapped in with renames,
so an interrupted save never leaves a half-written checkpoint in place.
:class:`Checkpoint` reads one: the metadata once, each file on demand, every
damaged or foreign file reported as one :class:`ScalaBLError` line.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from scalabl_pyro.errors import ScalaBLError
from scalabl_pyro.utils.atomic import write_text_atomic

if TYPE_CHECKING:  # torch is imported where tensors are read or written, so that the
    import torch  # output-directory checks of the CLI refuse in a fraction of a second

CONFIG_FILE = "scalabl_config.json"
GUIDE_FILE = "guide.safetensors"
LORA_FILE = "lora.safetensors"
TRAINER_FILE = "trainer_state.pt"
HISTORY_FILE = "history.json"
ENSEMBLE_FILE = "ensemble.safetensors"
ADAPTER_DIR = "adapter"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
#: Every name a checkpoint directory may hold (``--overwrite`` replaces only these).
CHECKPOINT_ENTRIES = (
    CONFIG_FILE,
    GUIDE_FILE,
    LORA_FILE,
    TRAINER_FILE,
    HISTORY_FILE,
    ADAPTER_DIR,
    ENSEMBLE_FILE,
)


def write_atomic_dir(path: str | Path, fill: Callable[[Path], None]) -> Path:
    """Create directory ``path`` by calling ``fill(tmpdir)`` then renaming into place.

    The new directory is built in ``.{name}.tmp-{pid}-*``; an existing
    ``path`` is moved to ``.{name}.old-{pid}``, the new one renamed in, the old
    one deleted. A process killed at any point leaves either the old or the
    new directory complete (or both): :func:`recover_interrupted_save` puts
    the survivor back at ``path`` and removes the leftovers.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recover_interrupted_save(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-{os.getpid()}-", dir=path.parent))
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


def _writer_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def recover_interrupted_save(path: str | Path) -> None:
    """Finish the swap of a :func:`write_atomic_dir` whose process was killed.

    Only this library's own leftovers of writers that are no longer running
    are touched: with ``path`` missing, the old directory moved aside
    (``.{name}.old-{pid}``) is put back, since the new one never arrived;
    with ``path`` present, the old copy is stale and deleted, and so are
    unfinished build directories (``.{name}.tmp-{pid}-*``).
    """
    path = Path(path)
    parent = path.parent
    if not parent.is_dir():
        return
    leftovers = []
    for entry in parent.glob(f".{path.name}.*"):
        kind, _, rest = entry.name[len(path.name) + 2 :].partition("-")
        pid = rest.split("-", 1)[0]
        if kind in ("old", "tmp") and pid.isdigit() and not _writer_alive(int(pid)):
            leftovers.append((kind, entry))
    for kind, entry in sorted(leftovers, key=lambda e: e[0]):  # "old" before "tmp"
        if kind == "old" and not path.exists() and (entry / CONFIG_FILE).is_file():
            os.replace(entry, path)
        else:
            shutil.rmtree(entry, ignore_errors=True)


def write_json(path: Path, obj: dict) -> None:
    """Write JSON atomically (:func:`~scalabl_pyro.utils.atomic.write_text_atomic`)."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True))


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """safetensors of detached, contiguous CPU copies."""
    from safetensors.torch import save_file

    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path))


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


# --------------------------------------------------------------- may I write here?


def check_writable(path: str | Path, *, flag: str = "--output") -> None:
    """Raise unless ``path`` (a file or directory to be written) can be created.

    The checkpoint writer and the atomic JSON/PNG writers create a temporary
    sibling of ``path`` and rename it into place, so what must be writable is
    the parent directory, or the nearest ancestor that exists (missing
    directories are created). Probed with a temporary directory that is
    removed at once: nothing is left behind. ``flag`` names the option in the
    message.
    """
    path = Path(path).expanduser()
    parent = path.absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ScalaBLError(
            f"{flag} {path} cannot be created: {parent} is a file, not a directory; "
            f"choose another {flag}"
        )
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".scalabl-write-check-", dir=parent))
    except OSError as e:
        raise ScalaBLError(
            f"{flag} {path} cannot be created: writing in {parent} fails "
            f"({e.strerror or type(e).__name__}); choose a directory you can write to"
        ) from None


def check_output_dir(
    path: str | Path,
    *,
    resume: bool,
    overwrite: bool,
    flags: tuple[str, str, str] = ("--output", "--resume", "--overwrite"),
) -> None:
    """Decide, before anything is loaded, whether training may write checkpoint ``path``.

    * ``resume``: ``path`` must be a checkpoint with training state;
    * neither: ``path`` must be new or an empty directory;
    * ``overwrite``: a non-empty ``path`` must be a checkpoint holding nothing
      but checkpoint entries (:data:`CHECKPOINT_ENTRIES`); other files are
      never deleted, the call refuses instead.

    Then the location must be writable (:func:`check_writable`). ``flags``
    names the output, resume and overwrite options in the messages (the CLI's
    by default). Raises :class:`ScalaBLError`; creates nothing (first it
    finishes a save that a killed run left half done:
    :func:`recover_interrupted_save`).
    """
    out, res, ovr = flags
    path = Path(path).expanduser()
    recover_interrupted_save(path)
    if resume and overwrite:
        raise ScalaBLError(
            f"{res} continues the checkpoint in {out} and {ovr} replaces it; pass only one"
        )
    if path.exists() and not path.is_dir():
        raise ScalaBLError(
            f"{out} {path} is a file, not a checkpoint directory; choose a new directory"
        )
    is_checkpoint = (path / CONFIG_FILE).is_file()
    if resume:
        if not path.exists():
            raise ScalaBLError(
                f"{res}: {out} {path} does not exist; drop {res} to start a new run there"
            )
        if not is_checkpoint:
            raise ScalaBLError(
                f"{res}: {out} {path} is not a scalabl-pyro checkpoint (no {CONFIG_FILE}); "
                f"pass the {out} directory of an earlier run"
            )
        if not (path / TRAINER_FILE).is_file():
            raise ScalaBLError(
                f"{res}: {out} {path} has no {TRAINER_FILE} (saved without training state), so "
                f"it cannot be resumed; start a new run in another {out}"
            )
    elif path.is_dir() and any(path.iterdir()):
        if not is_checkpoint:
            raise ScalaBLError(
                f"{out} {path} is not empty and is not a scalabl-pyro checkpoint, so nothing in "
                f"it is touched; choose a new or empty directory ({res} and {ovr} apply only "
                "to checkpoints)"
            )
        if not overwrite:
            raise ScalaBLError(
                f"{out} {path} already holds a checkpoint; pass {res} to continue it, "
                f"{ovr} to replace it, or choose a new directory"
            )
        foreign = sorted(p.name for p in path.iterdir() if p.name not in CHECKPOINT_ENTRIES)
        if foreign:
            more = f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
            shown = ", ".join(foreign[:5]) + more
            raise ScalaBLError(
                f"{ovr}: {out} {path} also holds files that are not part of a checkpoint "
                f"({shown}), so it is not replaced; move them out or choose a new directory"
            )
    check_writable(path, flag=out)


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
