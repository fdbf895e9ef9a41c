"""scalabl-pyro: ScalaBL (scalable Bayesian LoRA via stochastic variational subspace
inference) as a Pyro probabilistic program over Hugging Face causal LMs.

The folders are the layers, each importing only the ones below it (bottom first;
``tests/test_architecture.py`` checks it):

* ``utils/``, ``errors``: random state, logging, atomic writes;
* ``io/``: embedded assets, base-model loading, checkpoints;
* ``data/``: multiple-choice data sets;
* ``program/``: the Pyro program (latents, LoRA adapters, model, guides, objectives);
* ``evaluation/``: metrics and their figures;
* ``inference/``: training, Bayesian model averaging, temperature scaling;
* ``methods/``: one object per method (ScalaBL and its baselines) and their registry;
* ``diagnostics/``: ArviZ, PSIS k-hat and LOO, and their figures;
* ``config``, ``api``: :class:`ScalaBL` ties them together;
* ``experiments/``: benchmark grid, guide comparison, demo;
* ``cli/``: the ``scalabl`` command, one module per command.

Public names are imported lazily, so ``scalabl fetch`` and ``import
scalabl_pyro.io.assets`` do not pay for importing peft and Pyro.
"""

from __future__ import annotations

import importlib
import logging as _logging

from scalabl_pyro.utils import logging_utils as _logging_utils

__version__ = "0.1.0"

_EXPORTS = {
    "ScalaBL": "scalabl_pyro.api",
    "ScalaBLConfig": "scalabl_pyro.config",
    "TrainConfig": "scalabl_pyro.inference.train_config",
    "TrainHistory": "scalabl_pyro.inference.train",
    "Prediction": "scalabl_pyro.inference.predict",
    "GUIDE_FAMILIES": "scalabl_pyro.program.families",
    "classification_metrics": "scalabl_pyro.evaluation.metrics",
    "load_base_model": "scalabl_pyro.io.loading",
    "load_task": "scalabl_pyro.data",
    "load_local": "scalabl_pyro.data",
    "MCDataset": "scalabl_pyro.data",
    "MCExample": "scalabl_pyro.data",
    "ScalaBLError": "scalabl_pyro.errors",
    "to_inference_data": "scalabl_pyro.diagnostics.posterior",
    "pareto_k_of_q": "scalabl_pyro.diagnostics.khat",
    "CompareConfig": "scalabl_pyro.experiments.comparison",
    "compare_guides": "scalabl_pyro.experiments.comparison",
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
