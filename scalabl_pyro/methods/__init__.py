"""The paper's baselines, each a short module over the shared model, trainer and predictor.

==========  ======================================================  ====================
method      what is random / how it predicts                        extra params vs LoRA
==========  ======================================================  ====================
scalabl     ``s`` per layer, guide family ``ScalaBLConfig.guide``    the guide's (2 L r)
mle         nothing (point ``s``, flat prior): plain LoRA, S = 1    0
map         nothing; Gaussian prior on the LoRA factors              0
mc_dropout  LoRA dropout kept on at test time, S passes             0
ensemble    K MLE members over one base, probabilities averaged     (K - 1) x LoRA
blob        mean-field Gaussian over every entry of ``A``, flipout  sum_l r d_in
laplace     ``N(s_MAP, H^-1)`` over the concatenated ``s``           D (D + 1) / 2
==========  ======================================================  ====================

See ``docs/baselines.md`` for the maths and what differs from each paper.
"""

from __future__ import annotations

METHODS = ("scalabl", "mle", "map", "mc_dropout", "ensemble", "blob", "laplace")
#: Methods whose ``s`` is a point estimate trained by maximum likelihood / MAP (guide 'mle').
POINT_S_METHODS = ("mle", "map", "mc_dropout", "ensemble")
#: Methods that predict with one deterministic pass (S = 1 whatever num_samples is).
DETERMINISTIC_METHODS = ("mle", "map")


def gaussian_over_s(method: str, guide: str) -> bool:
    """Whether the method's posterior is a Gaussian over ``s`` (what ``predict(width=)`` scales)."""
    return method == "laplace" or (method == "scalabl" and guide not in ("mle", "delta"))
