"""benchmarks/name_cell_settings.py: cells renamed to the setting they were trained with."""

from __future__ import annotations

import json
from pathlib import Path

from scalabl_testutils import load_benchmark_script

from scalabl_pyro.experiments.benchmark import CELL_DIR, cell_path


def _load():
    return load_benchmark_script("name_cell_settings")


def _cell(root: Path, spec: str, init_scale: float) -> Path:
    path = cell_path(root, spec, "arc_easy", 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"spec": spec, "task": "arc_easy", "seed": 0, "model_config": {"init_scale": init_scale}}
    path.write_text(json.dumps(meta))
    path.with_suffix(".npz").write_bytes(b"arrays")
    return path


def test_only_the_named_methods_trained_with_the_value_are_renamed(tmp_path):
    tool = _load()
    old = _cell(tmp_path, "scalabl[normalization=mean]", 0.05)
    mle = _cell(tmp_path, "mle[normalization=mean]", 0.05)  # has no initial std: keep its name
    new = _cell(tmp_path, "scalabl[normalization=mean,kl_weight=16]", 0.4)  # another value
    done = tool.rename_cells(tmp_path, "init_scale", "0.05", ("scalabl", "full_rank"))
    renamed = cell_path(tmp_path, "scalabl[normalization=mean,init_scale=0.05]", "arc_easy", 0)
    assert done == [(old.name, renamed.name)]
    assert not old.exists() and not old.with_suffix(".npz").exists()
    assert json.loads(renamed.read_text())["spec"] == "scalabl[normalization=mean,init_scale=0.05]"
    assert renamed.with_suffix(".npz").read_bytes() == b"arrays"
    assert mle.exists() and new.exists()
    assert sorted(p.name for p in (tmp_path / CELL_DIR).iterdir() if p.name.startswith(".")) == []
    # a second run finds nothing left to rename
    assert tool.rename_cells(tmp_path, "init_scale", "0.05", ("scalabl",)) == []
