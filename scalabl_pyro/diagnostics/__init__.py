"""Is the posterior trustworthy? ArviZ ``InferenceData`` and the importance diagnostics of a
fitted posterior (:mod:`.posterior`: ArviZ; :mod:`.khat`: k-hat of q, PSIS-LOO, held-out
elpd; :mod:`.fits`: draws and densities of a fit), PSIS / k-hat / LOO maths
(:mod:`.importance`) and their figures (:mod:`.plots`).

The everyday entry points are re-exported here, lazily (so that importing the plain-NumPy
:mod:`.importance` does not pay for torch and Pyro)::

    from scalabl_pyro.diagnostics import diagnose, loo, to_inference_data
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "to_inference_data": "scalabl_pyro.diagnostics.posterior",
    "combine_chains": "scalabl_pyro.diagnostics.posterior",
    "loo": "scalabl_pyro.diagnostics.posterior",
    "diagnose": "scalabl_pyro.diagnostics.khat",
    "pareto_k_of_q": "scalabl_pyro.diagnostics.khat",
    "PosteriorDiagnostics": "scalabl_pyro.diagnostics.khat",
    "ElpdResult": "scalabl_pyro.diagnostics.importance",
    "ParetoK": "scalabl_pyro.diagnostics.importance",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'scalabl_pyro.diagnostics' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
