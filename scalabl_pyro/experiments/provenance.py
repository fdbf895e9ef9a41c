"""Where a result came from: library version, commit and a fingerprint of today's defaults.

A stored output (a notebook's cells, a results table) is only as current as the settings it
was made with. :func:`defaults_fingerprint` hashes every field of ``ScalaBLConfig()`` and
``TrainConfig()``, so a change of any default changes the fingerprint. Each tutorial notebook
prints :func:`provenance` in its first code cell, and ``tests/test_notebook_fingerprint.py``
fails when a committed notebook's fingerprint is not today's: stale outputs cannot land
silently, they have to be re-run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

import scalabl_pyro

#: The line :func:`provenance` prints; the drift test reads the fingerprint back from it.
FINGERPRINT_PREFIX = "defaults fingerprint: "


def defaults() -> dict[str, dict[str, Any]]:
    """Every default of the two configuration objects, as plain JSON values."""
    from scalabl_pyro.config import ScalaBLConfig
    from scalabl_pyro.inference.train import TrainConfig

    def plain(cfg: Any) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))

    return {"ScalaBLConfig": plain(ScalaBLConfig()), "TrainConfig": plain(TrainConfig())}


def defaults_fingerprint() -> str:
    """A 12-hex-digit hash of :func:`defaults` (stable across runs and machines)."""
    text = json.dumps(defaults(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def git_commit(root: str | Path | None = None) -> str:
    """The short commit of the checkout the package runs from ('unknown' outside git)."""
    here = Path(root) if root is not None else Path(scalabl_pyro.__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def provenance(*, quiet: bool = False) -> dict[str, str]:
    """Version, commit and defaults fingerprint; printed one per line unless ``quiet``."""
    info = {
        "scalabl-pyro": scalabl_pyro.__version__,
        "commit": git_commit(),
        "defaults fingerprint": defaults_fingerprint(),
    }
    if not quiet:
        for key, value in info.items():
            print(f"{key}: {value}")
    return info
