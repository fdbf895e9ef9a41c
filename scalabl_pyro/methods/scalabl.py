"""ScalaBL: an r-dimensional latent ``s`` per adapted layer under a guide family of choice.

``h = W0 x + (alpha / r) B diag(s) A x``, ``s_l ~ N(0, sigma_p^2 I_r)``; the
guide (``ScalaBLConfig.guide``: mean_field, log_mean_field, full_rank,
low_rank, block, or the point masses delta and mle) is trained by SVI and
prediction averages the probabilities of S posterior draws. All of it is
:class:`~scalabl_pyro.methods.base.Method`'s default behaviour; the official
code's recipe is ScalaBL with the reference objective (``methods/official.py``).
"""

from __future__ import annotations

from scalabl_pyro.methods.base import Method


class ScalaBLMethod(Method):
    """ScalaBL (``docs/method.md``): every behaviour is the base class's."""

    name = "scalabl"
    order = 0


METHOD = ScalaBLMethod()
