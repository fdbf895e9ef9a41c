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

from torch import nn

from scalabl_pyro.program.adapters import SubspaceLoRA

#: Dropout probability used when method 'mc_dropout' is chosen without one.
DEFAULT_DROPOUT = 0.1


def dropout_modules(family: SubspaceLoRA) -> list[nn.Module]:
    """peft's LoRA dropout modules of every adapted layer (kept in training mode to sample)."""
    return [layer.lora_dropout["default"] for layer in family.layers.values()]
