"""Committed notebook outputs are made at today's defaults (issue: stale outputs by design).

Every tutorial notebook prints :func:`scalabl_pyro.experiments.provenance.provenance` in its
first code cell. A change of any ``ScalaBLConfig()`` or ``TrainConfig()`` default changes the
fingerprint, and this test then fails until the notebooks are re-run (``make notebooks``)
and their outputs committed.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

from scalabl_pyro.experiments import provenance

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


def _first_code_cell(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    return next(c for c in nb.cells if c.cell_type == "code")


def _stored_fingerprint(cell: nbformat.NotebookNode) -> str | None:
    for out in cell.get("outputs", []):
        text = out.get("text", "") if out.get("output_type") == "stream" else ""
        for line in text.splitlines():
            if line.startswith(provenance.FINGERPRINT_PREFIX):
                return line[len(provenance.FINGERPRINT_PREFIX) :].strip()
    return None


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_outputs_carry_todays_defaults(path):
    cell = _first_code_cell(nbformat.read(path, as_version=4))
    assert "provenance(" in cell.source, f"{path.name}: the first code cell must print provenance()"
    stored = _stored_fingerprint(cell)
    today = provenance.defaults_fingerprint()
    assert stored == today, (
        f"{path.name} was run with defaults fingerprint {stored}, today's is {today}: "
        "re-run it (make notebooks) and commit its outputs"
    )


def test_fingerprint_changes_with_any_default(monkeypatch):
    before = provenance.defaults_fingerprint()
    assert before == provenance.defaults_fingerprint()  # stable
    real = provenance.defaults()
    for group, fields in real.items():
        for name in fields:
            changed = {g: dict(f) for g, f in real.items()}
            changed[group][name] = ["changed", fields[name]]
            monkeypatch.setattr(provenance, "defaults", lambda c=changed: c)
            assert provenance.defaults_fingerprint() != before, f"{group}.{name}"


def test_provenance_prints_the_line_the_test_reads(capsys):
    info = provenance.provenance()
    out = capsys.readouterr().out
    assert f"{provenance.FINGERPRINT_PREFIX}{info['defaults fingerprint']}" in out.splitlines()
    assert info["scalabl-pyro"]
