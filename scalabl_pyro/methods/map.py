"""MAP LoRA: maximum a posteriori LoRA factors under a Gaussian prior (weight decay, done right).

The model adds ``pyro.factor("lora_prior", sum log N(theta; 0, sigma^2))`` with
``theta = (B, diag(s) A)`` of every layer and ``sigma = ScalaBLConfig.lora_prior_scale``
(``ScalaBLModel(lora_prior_scale=...)``) on training passes; ``s`` is a point
(guide ``mle``). Prediction is one deterministic pass. No extra parameters.
"""

from __future__ import annotations

from typing import Any

from scalabl_pyro.methods.mle import MLEMethod


class MAPMethod(MLEMethod):
    """MLE LoRA plus a Gaussian prior on the LoRA factors."""

    name = "map"
    order = 2
    summary = "nothing; Gaussian prior on the LoRA factors"
    benchmark = {"map": ({"method": "map"}, {}, 1)}

    def model_options(self, config: Any) -> dict[str, Any]:
        return {"lora_prior_scale": config.lora_prior_scale}


METHOD = MAPMethod()
