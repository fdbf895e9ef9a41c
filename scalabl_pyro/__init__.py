"""scalabl-pyro: ScalaBL (scalable Bayesian LoRA via stochastic variational subspace
inference) as a Pyro probabilistic program over Hugging Face causal LMs.

Where things are: the Pyro model in ``model.py``, guide families in
``guides.py``, objectives in ``objectives.py``, the training loop in
``train.py``, Bayesian model averaging in ``predict.py``, metrics in
``metrics.py``, ArviZ diagnostics in ``diagnostics.py`` (figures in
``diagnostic_plots.py``), guide-family comparison in ``comparison.py``;
:class:`ScalaBL` (``api.py``) ties them together.

Public names are imported lazily, so ``scalabl fetch`` and ``import
scalabl_pyro.assets`` do not pay for importing peft and Pyro.
"""

from __future__ import annotations

import importlib
import logging as _logging

from scalabl_pyro import logging_utils as _logging_utils

__version__ = "0.1.0"

_EXPORTS = {
    "ScalaBL": "scalabl_pyro.api",
    "ScalaBLConfig": "scalabl_pyro.config",
    "TrainConfig": "scalabl_pyro.train",
    "TrainHistory": "scalabl_pyro.train",
    "Prediction": "scalabl_pyro.predict",
    "GUIDE_FAMILIES": "scalabl_pyro.guides",
    "classification_metrics": "scalabl_pyro.metrics",
    "load_base_model": "scalabl_pyro.loading",
    "load_task": "scalabl_pyro.data",
    "load_local": "scalabl_pyro.data",
    "MCDataset": "scalabl_pyro.data",
    "MCExample": "scalabl_pyro.data",
    "ScalaBLError": "scalabl_pyro.errors",
    "to_inference_data": "scalabl_pyro.diagnostics",
    "pareto_k_of_q": "scalabl_pyro.diagnostics",
    "CompareConfig": "scalabl_pyro.comparison",
    "compare_guides": "scalabl_pyro.comparison",
}

__all__ = ["__version__", *sorted(_EXPORTS)]

_logging.getLogger(__name__).addHandler(_logging.NullHandler())

# bitsandbytes' import-time messages (peft imports it) wait until quantisation is asked for
_logging_utils.hold_bitsandbytes_import_logs()


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'scalabl_pyro' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
