"""Shared pytest fixtures: Pyro validation on, fresh param store, tiny models."""

from __future__ import annotations

import pyro
import pytest


@pytest.fixture(autouse=True)
def _pyro_hygiene():
    """Validate distributions and start each test with an empty param store."""
    pyro.enable_validation(True)
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()
