"""benchmarks/posterior_sigma_path.py rebuilds its committed table from the cells."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_committed_table_is_what_the_cells_give(tmp_path):
    spec = importlib.util.spec_from_file_location(
        "posterior_sigma_path", ROOT / "benchmarks" / "posterior_sigma_path.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "table.md"
    mod.main(["--out", str(out)])
    assert out.read_text(encoding="utf-8") == mod.OUT.read_text(encoding="utf-8")
    rows = [line for line in out.read_text(encoding="utf-8").splitlines() if "mean σ" in line]
    assert len(rows) == 3 and len({row.split("|", 2)[2] for row in rows}) == 1  # one σ path
