"""Laplace approximation over the subspace latents ``s``, after MAP training.

The method: the ScalaBL family and model; the guide :class:`~.posterior.LaplaceGuide`,
a point mass on the packed ``z`` (all ``s``) trained as MAP (ELBO of the
``delta`` family), then ``q(z) = N(z*, H^-1)`` with ``H`` the negative log
joint's Hessian (GGN or exact) summed over the training set
(:func:`fit_covariance`); prediction is BMA over draws of that Gaussian.
Resuming a run continues the MAP training (the covariance is dropped first).
Extra parameters: the covariance, ``D (D + 1) / 2``. The maths is in
:mod:`.posterior` and ``docs/baselines.md``.

The names of :mod:`.posterior` are imported from it on first use, so the
registry stays free of torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from scalabl_pyro.errors import ScalaBLError
from scalabl_pyro.methods.base import FitOutcome, FitSteps, Method

_LAZY = (
    "HESSIANS",
    "LaplaceGuide",
    "covariance_parameters",
    "exact_hessian_attention",
    "fit_laplace",
    "negative_log_joint_hessian",
    "prior_hessian",
)


class LaplaceMethod(Method):
    """MAP of ``s``, then a Gaussian at it with the inverse Hessian as covariance."""

    name = "laplace"
    order = 6
    summary = "N(s_MAP, H^-1) over the concatenated s"
    implied_guide = "full_rank"
    objectives = ("elbo",)
    benchmark = {"laplace": ({"method": "laplace"}, {}, 10)}

    def predicts_one_pass(self, guide: str) -> bool:
        return False

    def point_latents(self, guide: str) -> bool:
        return False

    def trains_a_point(self, guide: str) -> bool:
        return True  # the MAP of s; the Gaussian comes after

    def uses_init_scale(self, guide: str) -> bool:
        return False  # its Gaussian comes from the MAP, not from a start

    def check_train_config(self, config: Any, resume: bool) -> None:
        super().check_train_config(config, resume)
        if config.num_particles > 1:
            raise ScalaBLError(
                f"method {self.name!r} trains point estimates, so num_particles="
                f"{config.num_particles} samples would all be the same; use num_particles=1"
            )

    def build_guide(self, config: Any, model: Any, family: Any, init_scales: Any):
        from pyro.infer.autoguide import init_to_value

        from scalabl_pyro.methods.laplace.posterior import LaplaceGuide

        init = {k: v.clone() for k, v in family.init_values.items()}
        return LaplaceGuide(model, init_loc_fn=init_to_value(values=init))

    def training_family(self, config: Any) -> str:
        return "delta"  # the MAP of s: a point mass

    def fit(self, sbl: Any, train: Any, config: Any, steps: FitSteps, **run: Any) -> FitOutcome:
        outcome = super().fit(sbl, train, config, steps, **run)
        fit_covariance(sbl, train)
        return outcome

    def before_resume(self, guide: Any) -> None:
        guide.set_covariance(None)  # continue the MAP training of s

    def num_extra_parameters(self, sbl: Any) -> int:
        from scalabl_pyro.methods.laplace.posterior import covariance_parameters

        return covariance_parameters(sbl.subspace.num_latents)


def fit_covariance(sbl: Any, data: Any, *, batch_size: int = 8):
    """Set ``sbl.guide``'s covariance to ``H^-1`` at its MAP of ``s``, ``H`` over ``data``."""
    from scalabl_pyro.methods.laplace.posterior import (
        LaplaceGuide,
        fit_laplace,
        negative_log_joint_hessian,
    )

    if not isinstance(sbl.guide, LaplaceGuide):
        raise ScalaBLError(f"fit_laplace is for method 'laplace', not {sbl.method!r}")
    sbl.guide.set_covariance(None)
    h = negative_log_joint_hessian(
        sbl.model,
        sbl.guide,
        sbl.format_for(data),
        data,
        kind=sbl.config.laplace_hessian,
        batch_size=batch_size,
        max_examples=sbl.config.laplace_max_examples,
        seed=sbl.config.seed,
        device=sbl.device,
    )
    return fit_laplace(sbl.guide, h)


METHOD = LaplaceMethod()


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module("scalabl_pyro.methods.laplace.posterior"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
