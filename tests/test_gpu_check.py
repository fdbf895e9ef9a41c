"""benchmarks/gpu_check.py --dry-run: every section runs on the CPU with tiny shapes."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_check.py"


def _gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_gpu_check_dry_run_fills_every_section(tmp_path, capsys):
    out = tmp_path / "gpu_check.json"
    result = _gpu_check().main(["--dry-run", "--output", str(out)])
    assert json.loads(out.read_text())["rows"] == result["rows"]
    rows = result["rows"]
    assert not [r for r in rows if "skipped" in r and r["check"] != "cuda tests"], rows
    tests = [r for r in rows if r["check"] == "cuda tests"]
    assert tests and tests[0]["ok"], tests  # on a CPU the cuda tests skip, they do not fail
    train = [r for r in rows if r["check"] == "train step"]
    assert {(r["model"], r["method"]) for r in train} == {
        (m, k) for m in ("smollm2", "llama7b-shape") for k in ("lora", "scalabl")
    }
    assert all(r["seconds_per_step"] > 0 and r["tokens_per_step"] > 0 for r in train)
    assert all(r["ratio_to_lora"] > 0 for r in train if r["method"] == "scalabl")
    bma = [r for r in rows if r["check"] == "BMA ratio"]
    assert [r["method"] for r in bma] == ["S=1", "S=4", "S=10", "S=30"]
    assert all(r["ratio"] > 0 for r in bma)
    assert [r["check"] for r in rows if "4bit" in r["check"]] == ["train step (4bit base)"]
    table = capsys.readouterr().out
    assert "BMA ratio" in table and "llama7b-shape" in table
