"""BLoB (Wang et al., NeurIPS 2024): a mean-field Gaussian over every entry of LoRA's ``A``.

The method: its latent family is :class:`~.family.BlobLoRA` (site ``A.<path>``,
prior ``N(0, lora_prior_scale^2)``, 0.2 as in BLoB; flipout noise), its
guide :class:`~.family.BlobGuide` (``log sigma`` per entry, the mean is peft's
live ``lora_A``), trained by the ELBO with analytic KL (guide family
``mean_field``) at initial sigma 0.05, predicting by BMA over draws of ``A``.
Checkpoint and export are the shared ones (the plain adapter holds the
posterior-mean ``A``). The maths is in :mod:`.family` and ``docs/baselines.md``.

:class:`BlobLoRA` and :class:`BlobGuide` are imported from :mod:`.family` on
first use, so the registry stays free of torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from scalabl_pyro.methods.base import REFERENCE_INIT_SCALE, Method

_LAZY = ("BlobGuide", "BlobLoRA")


class BlobMethod(Method):
    """BLoB on the shared program: a second latent family and its guide."""

    name = "blob"
    order = 5
    summary = "mean-field Gaussian over every entry of A, flipout"
    implied_guide = "mean_field"
    uses_prior_scale = False
    adapts_lm_head = False
    objectives = ("elbo",)
    benchmark = {"blob": ({"method": "blob"}, {}, 10)}

    def gaussian_over_s(self, guide: str) -> bool:
        return False  # its Gaussian is over A

    def predicts_one_pass(self, guide: str) -> bool:
        return False

    def point_latents(self, guide: str) -> bool:
        return False

    def default_init_scale(self, guide: str) -> float:
        return REFERENCE_INIT_SCALE  # BLoB's

    def uses_init_scale(self, guide: str) -> bool:
        return True

    def build_family(self, config: Any, base_model: Any, class_token_ids: Any):
        from scalabl_pyro.methods.blob.family import BlobLoRA

        return BlobLoRA(
            base_model,
            rank=config.rank,
            alpha=config.alpha,
            dropout=config.lora_dropout,
            target_modules=config.target_modules,
            seed=config.seed,
            prior_scale=config.lora_prior_scale,
        )

    def build_guide(self, config: Any, model: Any, family: Any, init_scales: Any):
        from scalabl_pyro.methods.blob.family import BlobGuide

        return BlobGuide(model, family, init_scale=config.initial_scale)


METHOD = BlobMethod()


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module("scalabl_pyro.methods.blob.family"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
