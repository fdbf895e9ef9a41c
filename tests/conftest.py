"""Shared pytest fixtures: Pyro validation on, fresh param store, tiny models."""

from __future__ import annotations

import pyro
import pytest
import torch

# One intra-op thread per test process: the tiny models are far too small for
# threading to pay off, on a busy 2-core machine OpenMP spin-waits make every op
# ~100x slower, and `make test` runs two pytest-xdist workers side by side.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _pyro_hygiene():
    """Validate distributions and start each test with an empty param store."""
    pyro.enable_validation(True)
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()
