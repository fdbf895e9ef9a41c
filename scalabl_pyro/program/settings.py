"""The Pyro settings the program runs under, entered as a context, never set for the process."""

from __future__ import annotations

import pyro

#: Guide parameters are module-local ``nn.Parameter``s, so a plain torch optimizer trains them.
PYRO_SETTINGS = {"module_local_params": True}


def pyro_settings():
    """The context under which the model and guides are built, trained and run."""
    return pyro.settings.context(**PYRO_SETTINGS)
