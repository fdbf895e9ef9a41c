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
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from pyro.infer.autoguide import AutoGuide

from scalabl_pyro.errors import ScalaBLError
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
