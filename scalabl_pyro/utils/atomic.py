"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Each write goes to a temporary file with a unique name (:func:`tempfile.mkstemp`,
``.{name}.XXXXXXXX.tmp``) in the target's own directory, then :func:`os.replace`
renames it over the target (atomic on one file system). Two writers of the same
path never share a temporary file, and a failed write removes its own. Directories
are written atomically by :func:`scalabl_pyro.io.checkpoint.write_atomic_dir`.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

FILE_MODE = 0o644
"""Permissions of a written file (``mkstemp`` creates 0600)."""


@contextmanager
def atomic_open(path: str | Path, mode: str = "wb", **kw: Any) -> Iterator[IO[Any]]:
    """Open a unique temporary file beside ``path``; a clean exit renames it to ``path``.

    ``mode`` is ``"wb"`` or ``"w"`` (text, UTF-8 unless ``encoding`` is given). The
    parent directory is created. An exception inside the block removes the
    temporary file and leaves ``path`` as it was.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes a whole file: mode 'w' or 'wb', not {mode!r}")
    if mode == "w":
        kw.setdefault("encoding", "utf-8")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **kw) as fh:
            yield fh
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns ``path``."""
    with atomic_open(path, "wb") as fh:
        fh.write(data)
    return Path(path)


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns ``path``."""
    with atomic_open(path, "w") as fh:
        fh.write(text)
    return Path(path)
