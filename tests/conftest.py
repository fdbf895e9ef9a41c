"""Shared pytest fixtures: Pyro validation on, fresh param store, tiny models."""

from __future__ import annotations

from pathlib import Path

import pyro
import pytest
import torch

# One intra-op thread per test process: the tiny models are far too small for
# threading to pay off, on a busy 2-core machine OpenMP spin-waits make every op
# ~100x slower, and `make test` runs two pytest-xdist workers side by side.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _pyro_hygiene():
    """Validate distributions; start each test with an empty param store and the same globals.

    A test that changes Pyro's global settings or torch's default dtype gets them
    put back afterwards, so no test's outcome depends on which tests ran before it
    in the same process (xdist distributes them differently from run to run).
    """
    pyro.enable_validation(True)
    pyro.clear_param_store()
    settings, dtype = pyro.settings.get(), torch.get_default_dtype()
    yield
    pyro.clear_param_store()
    for key, value in settings.items():
        pyro.settings.set(**{key: value})
    torch.set_default_dtype(dtype)


def _figures_file(config) -> Path | None:
    """A file in pytest's cache folder, shared by xdist workers (None without the cache)."""
    cache = getattr(config, "cache", None)
    return None if cache is None else cache.mkdir("scalabl_figures") / "measured.jsonl"


def pytest_sessionstart(session):
    path = _figures_file(session.config)
    if path is not None and not hasattr(session.config, "workerinput") and path.exists():
        path.unlink()  # the controller starts each run with an empty list


@pytest.fixture()
def report_figure(request):
    """Record a measured figure; the terminal summary prints them (also under xdist)."""
    import json

    def record(name: str, value) -> None:
        path = _figures_file(request.config)
        if path is None:
            return
        with open(path, "a") as f:
            f.write(json.dumps({"test": request.node.nodeid, "name": name, "value": value}) + "\n")

    return record


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Print the figures that tests measured (e.g. zero-shot accuracy on real data)."""
    import json

    path = _figures_file(config)
    if path is None or not path.is_file():
        return
    terminalreporter.section("measured figures")
    for line in path.read_text().splitlines():
        row = json.loads(line)
        terminalreporter.write_line(f"{row['name']}: {json.dumps(row['value'])}")
