"""MC dropout (Gal & Ghahramani 2016) on LoRA: dropout on ``A``'s input, kept on at test time.

Each adapted layer computes ``h = W0 x + (alpha / r) B diag(s) A (m * x) / (1 - p)``
with a Bernoulli(1 - p) mask ``m`` drawn per element (peft's ``lora_dropout``);
``s`` and the factors are point estimates (maximum likelihood, as MLE LoRA).
Prediction averages the probabilities of S passes, each with its own masks:
the S copies are folded into the batch, so every copy of a row draws its
own mask. In choice scoring a question's prefix runs once per copy (the
shared-prefix path of ``scoring.py``), so its C answers see the same prefix
masks and each answer token its own: a copy is one dropout network per
question, as in the lettered format. ``p = 0`` is MLE LoRA exactly.
No parameters beyond plain LoRA.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from scalabl_pyro.errors import ScalaBLError
from scalabl_pyro.methods.mle import MLEMethod

if TYPE_CHECKING:
    from torch import nn

    from scalabl_pyro.program.adapters import SubspaceLoRA

#: Dropout probability used when method 'mc_dropout' is chosen without one.
DEFAULT_DROPOUT = 0.1


def dropout_modules(family: SubspaceLoRA) -> list[nn.Module]:
    """peft's LoRA dropout modules of every adapted layer (kept in training mode to sample)."""
    return [layer.lora_dropout["default"] for layer in family.layers.values()]


class MCDropoutMethod(MLEMethod):
    """MLE LoRA trained with LoRA dropout, predicting with S dropout masks."""

    name = "mc_dropout"
    order = 3
    summary = "LoRA dropout kept on at test time, S passes"
    default_dropout = DEFAULT_DROPOUT
    benchmark = {"mc_dropout": ({"method": "mc_dropout"}, {}, 10)}

    def predicts_one_pass(self, guide: str) -> bool:
        return False

    def predict(self, sbl: Any, run: Callable[..., Any], *, num_samples: int, mode: str):
        """BMA over ``num_samples`` dropout masks at the point ``s`` (mode 'mean': no dropout)."""
        if mode != "bma":
            return run()
        if num_samples < 1:
            raise ScalaBLError(f"num_samples must be >= 1, got {num_samples}")
        point = sbl.posterior_mean()
        latents = {k: v[None].expand(num_samples, *v.shape) for k, v in point.items()}
        return run(latents, dropout_modules(sbl.subspace))


METHOD = MCDropoutMethod()
