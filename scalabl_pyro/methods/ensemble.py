"""Deep ensemble (Lakshminarayanan et al. 2017) of K LoRA adapters over one frozen base.

Member ``k`` is MLE LoRA trained from its own initialisation (a fresh
Kaiming draw of ``A`` under seed ``seed * 1009 + k``, ``B = 0``) and its own
data order (``TrainConfig.seed + k``). One peft model and one base model
serve all members: a member is its LoRA factors and point ``s``
(:func:`member_state`, a few MB at most), loaded into the shared adapter to
train or predict. The predictive distribution averages probabilities,

    p(y | x) = 1/K sum_k p(y | x, theta_k)

and ``Prediction.sample_log_probs`` holds the K members' log-probabilities.
Extra parameters over plain LoRA: ``(K - 1)`` times the LoRA parameters.
Members are trained one after another (their histories follow each other)
and saved only when all are trained, so an ensemble cannot be resumed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from scalabl_pyro.errors import ScalaBLError
from scalabl_pyro.methods.base import FitOutcome, FitSteps
from scalabl_pyro.methods.mle import MLEMethod

if TYPE_CHECKING:  # the registry is read by light modules: torch only inside functions
    import torch
    from pyro.infer.autoguide import AutoGuide

    from scalabl_pyro.inference.predict import Prediction
    from scalabl_pyro.program.adapters import SubspaceLoRA

DEFAULT_ENSEMBLE_SIZE = 5
_LORA, _GUIDE = "lora.", "guide."


def member_seed(seed: int, k: int) -> int:
    """Initialisation seed of member ``k``."""
    return seed * 1009 + k


def member_state(family: SubspaceLoRA, guide: AutoGuide) -> dict[str, torch.Tensor]:
    """The LoRA factors and point ``s`` now in the shared adapter (CPU copies)."""
    out = {_LORA + k: v.detach().cpu().clone() for k, v in family.lora_state().items()}
    out |= {_GUIDE + k: v.detach().cpu().clone() for k, v in guide.state_dict().items()}
    return out


def load_member(family: SubspaceLoRA, guide: AutoGuide, state: Mapping[str, torch.Tensor]) -> None:
    """Load one member into the shared adapter."""
    family.load_lora_state({k[len(_LORA) :]: v for k, v in state.items() if k.startswith(_LORA)})
    device = next(iter(guide.parameters())).device
    guide.load_state_dict(
        {k[len(_GUIDE) :]: v.to(device) for k, v in state.items() if k.startswith(_GUIDE)}
    )


def pack_members(members: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """One flat tensor dict (``member<k>.<key>``) for a safetensors file."""
    return {f"member{k}.{key}": v for k, m in enumerate(members) for key, v in m.items()}


def unpack_members(tensors: Mapping[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """Inverse of :func:`pack_members`."""
    members: dict[int, dict[str, torch.Tensor]] = {}
    for key, v in tensors.items():
        head, _, rest = key.partition(".")
        if not head.startswith("member") or not head[len("member") :].isdigit():
            raise ScalaBLError(
                f"ensemble tensor {key!r} is not named member<k>.<name>; the checkpoint is damaged"
            )
        members.setdefault(int(head[len("member") :]), {})[rest] = v
    return [members[k] for k in sorted(members)]


def average_predictions(preds: Sequence[Prediction]) -> Prediction:
    """Average the members' probabilities (log-mean-exp in float64); keep each member's."""
    import numpy as np

    from scalabl_pyro.inference.predict import Prediction

    slp = np.concatenate([p.sample_log_probs for p in preds], axis=0)  # (K, N, C)
    bma = np.logaddexp.reduce(slp, axis=0) - np.log(slp.shape[0])
    return Prediction(
        probs=np.exp(bma),
        sample_log_probs=slp,
        labels=preds[0].labels,
        class_mask=preds[0].class_mask,
    )


def predict_members(
    family: SubspaceLoRA,
    guide: AutoGuide,
    members: Sequence[Mapping[str, torch.Tensor]],
    predict_one: Callable[[], Prediction],
) -> Prediction:
    """Predict with every member in turn; the adapter holds what it held before afterwards."""
    current = member_state(family, guide)
    try:
        preds = []
        for m in members:
            load_member(family, guide, m)
            preds.append(predict_one())
    finally:
        load_member(family, guide, current)
    return average_predictions(preds)


class EnsembleMethod(MLEMethod):
    """K MLE members over one base; probabilities averaged."""

    name = "ensemble"
    order = 4
    summary = "K MLE members over one base, probabilities averaged"
    uses_ensemble_size = True
    benchmark = {"ensemble": ({"method": "ensemble"}, {}, 5)}

    def check_config(self, config: Any) -> None:
        super().check_config(config)
        if config.ensemble_size < 2:
            raise ScalaBLError(
                f"an ensemble needs ensemble_size >= 2, got {config.ensemble_size}; "
                "use method='mle' for a single adapter"
            )

    def predicts_one_pass(self, guide: str) -> bool:
        return False

    def fixed_predictive(self, guide: str, meta: dict) -> str | None:
        return (
            f"the checkpoint is an ensemble, which averages its {meta.get('num_members', 'K')} "
            "members, so"
        )

    def check_train_config(self, config: Any, resume: bool) -> None:
        super().check_train_config(config, resume)
        if resume:
            raise ScalaBLError(
                "an ensemble cannot be resumed (its members are saved only when all are "
                "trained); train it again without resume"
            )

    def fit(self, sbl: Any, train: Any, config: Any, steps: FitSteps, **run: Any) -> FitOutcome:
        """Train the K members in turn (own initialisation and data order); keep member 0 loaded."""
        from scalabl_pyro.inference.train import TrainHistory

        history = TrainHistory()
        members = []
        for k in range(sbl.config.ensemble_size):
            sbl.subspace.reset_lora(member_seed(sbl.config.seed, k))
            steps.rebuild_guide()
            cfg_k = replace(config, seed=config.seed + k)
            h = steps.fit_once(train, cfg_k, family="mle", output_dir=None, resume=None)
            history.steps += h.steps
            history.validation += h.validation
            members.append(member_state(sbl.subspace, sbl.guide))
        load_member(sbl.subspace, sbl.guide, members[0])
        return FitOutcome(history, members=members, resumable=False)

    def predict(self, sbl: Any, run: Callable[..., Any], *, num_samples: int, mode: str):
        """The average of the members' predictions (one member while none are trained)."""
        if not sbl.members:
            return run()
        return predict_members(sbl.subspace, sbl.guide, sbl.members, run)

    def num_extra_parameters(self, sbl: Any) -> int:
        return (sbl.config.ensemble_size - 1) * sbl.subspace.num_lora_parameters()

    def checkpoint_extras(self, sbl: Any) -> dict[str, Any]:
        return {"members": pack_members(sbl.members)} if sbl.members else {}

    def load_extras(self, checkpoint: Any) -> list:
        packed = checkpoint.members()
        return unpack_members(packed) if packed else []


METHOD = EnsembleMethod()
