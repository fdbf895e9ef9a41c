"""Rename finished benchmark cells so that their specs name a setting whose default changed.

A cell is named by its method spec (``mle``, ``scalabl[init_scale=0.3]``). When a
library default changes, as ``normalization`` did from ``"sum"`` to ``"mean"``,
``scalabl benchmark`` refuses to reuse a cell whose spec now means another model.
This script gives such cells the spec they were really trained with
(``mle`` -> ``mle[normalization=sum]``), files and recorded spec alike, so the
study stays resumable and its tables keep their meaning:

    python benchmarks/name_cell_settings.py benchmarks/results/calibration/arc_easy \
        --key normalization --value sum
    python benchmarks/name_cell_settings.py benchmarks/results/calibration/arc_easy \
        --key init_scale --value 0.05 --methods scalabl,full_rank

Cells that already name the key, or were trained with another value, are left alone.
Each rename writes the new JSON atomically before the old files go.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from scalabl_pyro.experiments.benchmark import CELL_DIR, cell_path


def with_setting(spec: str, key: str, value: str) -> str:
    """``spec`` with ``key=value`` added to its brackets (``+ts`` is never part of a cell)."""
    if spec.endswith("]"):
        return f"{spec[:-1]},{key}={value}]"
    return f"{spec}[{key}={value}]"


def rename_cells(
    root: Path, key: str, value: str, methods: tuple[str, ...] | None = None
) -> list[tuple[str, str]]:
    """Rename every cell under ``root`` trained with ``key == value`` that does not name it.

    ``methods`` limits the renaming to those method names (the spec before ``[``):
    a setting that only some methods use (``init_scale``) names only their cells.
    """
    done = []
    for path in sorted((root / CELL_DIR).glob("*.json")):
        meta = json.loads(path.read_text())
        spec = meta["spec"]
        if methods is not None and spec.split("[")[0] not in methods:
            continue
        if f"{key}=" in spec or str(meta["model_config"].get(key)) != value:
            continue
        new_spec = with_setting(spec, key, value)
        new = cell_path(root, new_spec, meta["task"], meta["seed"])
        if new.exists():
            print(f"error: {new.name} exists already; {path.name} left as it is", file=sys.stderr)
            continue
        meta["spec"] = new_spec
        os.replace(path.with_suffix(".npz"), new.with_suffix(".npz"))
        tmp = new.with_name(f".{new.name}.tmp")
        tmp.write_text(json.dumps(meta, indent=1))
        os.replace(tmp, new)
        path.unlink()
        done.append((path.name, new.name))
        print(f"{path.name} -> {new.name}")
    return done


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("roots", nargs="+", type=Path, help="benchmark folders (hold cells/)")
    p.add_argument("--key", required=True)
    p.add_argument("--value", required=True)
    p.add_argument("--methods", default=None, help="only these methods, comma-separated")
    a = p.parse_args(argv)
    methods = tuple(a.methods.split(",")) if a.methods else None
    for root in a.roots:
        rename_cells(root, a.key, a.value, methods)
    return 0


if __name__ == "__main__":
    sys.exit(main())
