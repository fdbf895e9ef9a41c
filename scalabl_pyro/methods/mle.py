"""MLE LoRA: plain LoRA in the same program, ``s`` a point estimate with a flat prior.

The guide is the point mass ``mle`` (no prior, no KL term); prediction is
one deterministic pass (S = 1). No parameters beyond plain LoRA.
"""

from __future__ import annotations

from typing import Any

from scalabl_pyro.methods.base import Method


class MLEMethod(Method):
    """Maximum-likelihood LoRA."""

    name = "mle"
    order = 1
    summary = "nothing (point s, flat prior): plain LoRA, S = 1"
    implied_guide = "mle"
    point_s = True
    uses_prior_scale = False
    objectives = ("elbo",)
    benchmark = {"mle": ({"method": "mle"}, {}, 1)}

    def gaussian_over_s(self, guide: str) -> bool:
        return False

    def predicts_one_pass(self, guide: str) -> bool:
        return True

    def uses_init_scale(self, guide: str) -> bool:
        return False

    def num_extra_parameters(self, sbl: Any) -> int:
        return 0


METHOD = MLEMethod()
