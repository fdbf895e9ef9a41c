"""ScalaBL and the paper's baselines, each a :class:`~.base.Method` in its own module.

==========  ======================================================  ====================
method      what is random / how it predicts                        extra params vs LoRA
==========  ======================================================  ====================
scalabl     ``s`` per layer, guide family ``ScalaBLConfig.guide``    the guide's (2 L r)
mle         nothing (point ``s``, flat prior): plain LoRA, S = 1    0
map         nothing; Gaussian prior on the LoRA factors             0
mc_dropout  LoRA dropout kept on at test time, S passes             0
ensemble    K MLE members over one base, probabilities averaged     (K - 1) x LoRA
blob        mean-field Gaussian over every entry of ``A``, flipout  sum_l r d_in
laplace     ``N(s_MAP, H^-1)`` over the concatenated ``s``           D (D + 1) / 2
==========  ======================================================  ====================

The official code's recipe is ScalaBL with the reference objective
(``official.py``, a recipe rather than a method). The registry
(:mod:`.registry`: :func:`get_method`, :func:`method_names`) finds every module
here that defines ``METHOD``; the facade, ``ScalaBLConfig``, the CLI and the
benchmark ask it and never compare method names. Importing this package
imports no torch. See ``docs/baselines.md`` for the maths and what differs
from each paper.
"""

from __future__ import annotations

from scalabl_pyro.methods.base import FitOutcome, FitSteps, Method
from scalabl_pyro.methods.registry import (
    benchmark_entries,
    get_method,
    get_recipe,
    method_names,
    recipe_names,
)

__all__ = [
    "DETERMINISTIC_METHODS",
    "FitOutcome",
    "FitSteps",
    "METHODS",
    "Method",
    "POINT_S_METHODS",
    "benchmark_entries",
    "gaussian_over_s",
    "get_method",
    "get_recipe",
    "method_names",
    "recipe_names",
]


def __getattr__(name: str):
    # derived from the registry on first use (the registry loads the method modules lazily)
    if name == "METHODS":
        return method_names()
    if name == "POINT_S_METHODS":  # s a point estimate trained by maximum likelihood / MAP
        return tuple(n for n in method_names() if get_method(n).point_s)
    if name == "DETERMINISTIC_METHODS":  # one deterministic pass whatever the guide
        return tuple(n for n in method_names() if get_method(n).predicts_one_pass("mean_field"))
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def gaussian_over_s(method: str, guide: str) -> bool:
    """Whether the method's posterior is a Gaussian over ``s`` (what ``predict(width=)`` scales)."""
    return get_method(method).gaussian_over_s(guide)
