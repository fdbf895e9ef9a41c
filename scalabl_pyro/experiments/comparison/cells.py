"""One finished (family, seed) on disk: ``families/<name>/seed<k>/`` holds ``result.json``
(the row, the settings it was made with, the history) and ``arrays.npz``, both
written atomically; a cell made with other settings is refused, never reused.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scalabl_pyro.errors import ScalaBLError
from scalabl_pyro.experiments.comparison.config import ARRAYS_FILE, RESULT_FILE, CompareConfig
from scalabl_pyro.experiments.comparison.results import FamilyResult
from scalabl_pyro.io.checkpoint import write_json
from scalabl_pyro.utils.atomic import atomic_open

log = logging.getLogger(__name__)


def _save_npz_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with atomic_open(path, "wb") as fh:
        np.savez_compressed(fh, **arrays)


def _json_safe(x: Any) -> Any:
    """NaN/inf -> None, numpy scalars -> Python (strict JSON)."""
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(float(x)) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


def _machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def cell_dir(out: Path, family: str, seed: int) -> Path:
    """Where one (family, seed) cell lives."""
    return out / "families" / family / f"seed{seed}"


def load_family_result(
    cell: Path, family: str, seed: int, settings: dict[str, Any] | None = None
) -> FamilyResult | None:
    """A finished cell's stored result (None if it is not complete).

    With ``settings``, a cell made with different settings is refused with
    one line that names the first differing setting.
    """
    res, arr = cell / RESULT_FILE, cell / ARRAYS_FILE
    if not (res.is_file() and arr.is_file()):
        return None
    try:
        meta = json.loads(res.read_text())
        with np.load(arr) as z:
            arrays = {k: z[k] for k in z.files}
    except (ValueError, OSError, EOFError) as e:
        log.warning("%s is damaged (%s); fitting it again", cell, e)
        print(f"{family} seed {seed}: the stored cell is damaged; fitting it again", flush=True)
        return None
    if settings is not None:
        saved = meta.get("settings") or {}
        differ = [k for k in sorted(set(settings) | set(saved)) if saved.get(k) != settings.get(k)]
        if differ:
            k = differ[0]
            raise ScalaBLError(
                f"finished cell {cell} was made with {k}={saved.get(k)!r}, not "
                f"{settings.get(k)!r}; use a new --output (or delete that cell to refit it)"
            )
    row = dict(meta["row"])
    row["family"] = family
    return FamilyResult(family, seed, row, meta["history"], meta["layers"], arrays)


def family_correlation(family_dir: Path) -> np.ndarray | None:
    """The stored (D, D) posterior correlation of a finished cell (None if absent)."""
    arr = family_dir / ARRAYS_FILE
    if not arr.is_file():
        return None
    with np.load(arr) as z:
        return z["correlation"] if "correlation" in z.files else None


def _save_cell(cell_dir: Path, result: FamilyResult, cfg: CompareConfig) -> None:
    """``arrays.npz`` and ``result.json`` (row, settings, history, layers, machine), atomically."""
    _save_npz_atomic(cell_dir / ARRAYS_FILE, result.arrays)
    write_json(
        cell_dir / RESULT_FILE,
        _json_safe(
            {
                "row": result.row,
                "settings": cfg.settings(),
                "history": result.history,
                "layers": result.layers,
                "machine": _machine(),
            }
        ),
    )
