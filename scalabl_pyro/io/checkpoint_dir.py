"""A checkpoint directory on disk: the names it holds, how it is swapped in, where it may go.

:func:`write_atomic_dir` builds a directory next to its destination and swaps
it in with renames, so an interrupted save never leaves a half-written
checkpoint in place; :func:`recover_interrupted_save` finishes the swap of a
killed writer. :func:`check_output_dir` decides, before anything is loaded,
whether training may write a checkpoint at a path. What each file holds:
:mod:`scalabl_pyro.io.checkpoint`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from scalabl_pyro.errors import ScalaBLError

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
