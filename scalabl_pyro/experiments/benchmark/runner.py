"""Run or resume a whole grid, and rebuild its table from the finished cells.

``benchmark.json`` in the output folder records the settings the cells were
made with; a re-run into the same folder must use the same settings.
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

from scalabl_pyro.errors import ScalaBLError
from scalabl_pyro.experiments.benchmark.cells import (
    CELL_DIR,
    _check_cell_config,
    _json_default,
    _why,
    cell_damage,
    cell_path,
    load_cell,
    run_cell,
)
from scalabl_pyro.experiments.benchmark.spec import BenchmarkConfig, parse_method
from scalabl_pyro.experiments.benchmark.tables import cell_rows, summarise, write_table
from scalabl_pyro.utils.atomic import write_text_atomic

SETTINGS_FILE = "benchmark.json"


def machine() -> dict[str, Any]:
    """Where the benchmark ran."""
    import torch

    return {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "threads": torch.get_num_threads(),
    }


def _check_settings(root: Path, cfg: BenchmarkConfig) -> None:
    path = root / SETTINGS_FILE
    if path.is_file():
        try:
            saved = json.loads(path.read_text()).get("settings", {})
        except (ValueError, AttributeError) as e:  # truncated, not UTF-8, not an object
            raise ScalaBLError(
                f"{path} is damaged ({_why(e)}), and it records the settings the cells in {root} "
                "were made with; restore it, or use a new --output"
            ) from None
        if saved != cfg.fingerprint():
            diff = sorted(
                k
                for k in set(saved) | set(cfg.fingerprint())
                if saved.get(k) != cfg.fingerprint().get(k)
            )
            raise ScalaBLError(
                f"{root} holds cells made with other settings ({', '.join(diff)}); use another "
                "--output, or the same settings to resume"
            )
    elif root.exists() and any(p for p in root.iterdir() if p.name != CELL_DIR):
        raise ScalaBLError(
            f"{root} exists and is not a benchmark folder; choose a new or empty --output"
        )


def run_benchmark(cfg: BenchmarkConfig, on_cell: Callable[[str], None] | None = None) -> dict:
    """Run (or resume) the whole grid, then rebuild and write the table; returns it."""
    root = Path(cfg.output)
    _check_settings(root, cfg)
    root.mkdir(parents=True, exist_ok=True)
    settings = {
        "settings": cfg.fingerprint(),
        "methods": list(cfg.methods),
        "tasks": list(cfg.tasks),
        "seeds": list(cfg.seeds),
        "machine": machine(),
        **cfg.extra,
    }
    write_text_atomic(root / SETTINGS_FILE, json.dumps(settings, indent=1, default=_json_default))
    trained = list(dict.fromkeys(s.trained for s in cfg.specs))
    for task in cfg.tasks:
        for seed in cfg.seeds:
            for spec_str in trained:
                spec = parse_method(spec_str)
                path = cell_path(root, spec.trained, task, seed)
                damage = cell_damage(path)
                done = path.is_file() and damage is None
                msg = f"{'skip' if done else 'run'} {spec.trained} / {task} / seed {seed}"
                if damage is not None:
                    msg += f" (its saved cell is damaged: {damage}; training it again)"
                if on_cell:
                    on_cell(msg)
                run_cell(spec, task, seed, cfg)
    return build_table(cfg)


def rebuild_table(cfg: BenchmarkConfig) -> dict:
    """The table of the cells already finished in ``cfg.output``, training none.

    For a grid that finishes over several sittings: look at what is done. The
    folder must hold cells made with ``cfg``'s settings, and each finished cell
    must still be what its spec means (see :func:`_check_cell_config`).
    """
    root = Path(cfg.output)
    if not (root / SETTINGS_FILE).is_file():
        raise ScalaBLError(
            f"{root} is not a benchmark folder (no {SETTINGS_FILE}); run the grid first, "
            "without --table-only"
        )
    _check_settings(root, cfg)
    for trained in dict.fromkeys(s.trained for s in cfg.specs):
        spec = parse_method(trained)
        for task in cfg.tasks:
            for seed in cfg.seeds:
                path = cell_path(root, spec.trained, task, seed)
                if path.is_file():
                    load_cell(path)  # a damaged cell: one line, with the fix
                    _check_cell_config(path, spec, seed, cfg)
    return build_table(cfg)


def build_table(cfg: BenchmarkConfig) -> dict:
    """Rebuild the table from the finished cells of ``cfg`` (missing cells are left out)."""
    root = Path(cfg.output)
    rows = []
    for spec in cfg.specs:
        for task in cfg.tasks:
            for seed in cfg.seeds:
                path = cell_path(root, spec.trained, task, seed)
                if not path.is_file():
                    continue
                meta, arrays = load_cell(path)
                rows += cell_rows(spec, meta, arrays, cfg.n_bins)
    summary = summarise(rows)
    write_table(root, cfg, rows, summary)
    return {"rows": rows, "summary": summary}
