"""The mark that says "this library wrote this image", and the check for it.

``scalabl evaluate --plot`` (and every figure written by :mod:`scalabl_pyro.evaluation.plots`)
replaces an existing file only if it carries this mark, so a user's own
``photo.png`` is never overwritten because it happens to be a PNG. The mark is
ordinary image metadata: a PNG ``tEXt`` chunk ``Software: scalabl-pyro``, the
PDF info entry ``/Creator (scalabl-pyro)``, the SVG's Dublin Core creator
``scalabl-pyro``. Light on purpose (no matplotlib), so the CLI checks its
outputs before anything heavy is imported.
"""

from __future__ import annotations

import re
from pathlib import Path

MARK = "scalabl-pyro"

_PNG = b"tEXtSoftware\x00" + MARK.encode()
_PDF = b"/Creator (" + MARK.encode()
_SVG = re.compile(rb"<dc:creator>\s*<cc:Agent>\s*<dc:title>" + re.escape(MARK.encode()))
_WINDOW = 1 << 16  # the marks sit near the start (PNG, SVG) or the end (PDF) of the file


def image_metadata(fmt: str) -> dict[str, str]:
    """``savefig(metadata=...)`` for ``fmt`` (png, pdf or svg) that carries the mark."""
    return {"Software": MARK} if fmt == "png" else {"Creator": MARK}


def is_marked_image(path: str | Path) -> bool:
    """Whether ``path`` is a PNG, PDF or SVG that this library wrote (it carries the mark)."""
    try:
        with Path(path).open("rb") as fh:
            head = fh.read(_WINDOW)
            fh.seek(0, 2)
            size = fh.tell()
            fh.seek(max(size - _WINDOW, 0))
            tail = fh.read(_WINDOW)
    except OSError:
        return False
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return _PNG in head
    if head.startswith(b"%PDF"):
        return _PDF in tail or _PDF in head
    if head.lstrip().startswith((b"<?xml", b"<svg")):
        return _SVG.search(head) is not None
    return False
