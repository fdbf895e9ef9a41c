"""The official ScalaBL code's recipe: ScalaBL with the reference objective and its setup.

Modelled as **ScalaBL with a different objective object**, not a method of
its own: the model is method ``scalabl`` (a checkpoint records
``method: scalabl``) with guide ``log_mean_field`` (positive mean, log
parameters, initial sigma ~ U[0.05/sqrt 2, 0.05]), the accidental prior
``N(u, (1 + u)^2)`` (``reference_prior_quirk``), ``alpha = 2 x rank``, no LoRA
dropout, and ``lm_head`` adapted beside ``q_proj`` and ``v_proj`` (letter
format); training uses :class:`~scalabl_pyro.program.objectives.ReferenceObjective`
(``TrainConfig.objective="reference"``: AdamW on the mean NLL, SGD on
``pi_i KL(p || q)``), float32 LoRA path, each epoch's partial last batch kept
(``TrainConfig.OFFICIAL``). ``ScalaBLConfig.official()``,
``TrainConfig.official()``, ``scalabl train --recipe official`` and the
benchmark's ``official`` entry read their settings here.
"""

from __future__ import annotations

from typing import Any, ClassVar

from scalabl_pyro.methods.base import REFERENCE_INIT_SCALE


class OfficialRecipe:
    """The official recipe's fixed settings, for the config, the CLI and the benchmark."""

    name: ClassVar[str] = "official"
    #: What ``ScalaBLConfig.official()`` fixes (an override with another value is refused).
    model: ClassVar[dict[str, Any]] = {
        "method": "scalabl",
        "guide": "log_mean_field",
        "reference_prior_quirk": True,
        "prior_scale": 1.0,
        "init_scale": REFERENCE_INIT_SCALE,
        "dropout": 0.0,
        "task_format": "letter",
    }
    #: The objective it trains with (``program.objectives.ReferenceObjective``).
    objective: ClassVar[str] = "reference"
    #: The official code's learning rate: the recipe's default, which ``lr=`` / ``--lr`` may
    #: change (the library's own default, 1e-3, is the one the overfitting regime measured).
    lr: ClassVar[float] = 1e-4
    #: Its adapted modules (``lm_head`` must stay).
    target_modules: ClassVar[tuple[str, ...]] = ("q_proj", "v_proj", "lm_head")
    benchmark: ClassVar[dict[str, Any]] = {
        # the official code's whole recipe (ScalaBLConfig/TrainConfig.official; alpha follows rank)
        "official": ({"recipe": "official"}, {"recipe": "official"}, 10),
    }


RECIPE = OfficialRecipe()
