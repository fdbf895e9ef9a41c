"""Guide families over the subspace latents, selectable by name.

With L adapted layers of rank r the latent dimension is D = L r (a few
hundred to ~2,000 even for 7B models), so even a full-rank Gaussian is cheap.

=============  ===============================================  =======================
name           posterior                                        free parameters
=============  ===============================================  =======================
mean_field     N(mu_l, diag sigma_l^2) per layer (the paper)    2 D
full_rank      one N(mu, Sigma) over all layers jointly         D + D (D + 1) / 2
low_rank       N(mu, W W^T + diag d), W is D x k                D (k + 2)
block          full-rank N per layer, layers independent        L (2 r + r (r + 1) / 2)
delta          point mass (MAP with the prior on)               D
mle            point mass with the prior off (plain LoRA)       D
=============  ===============================================  =======================

(``block`` is Pyro's ``AutoStructured`` with dense per-site conditionals: a
diagonal scale times a full Cholesky factor, so r of its parameters per layer
are redundant; the covariance it can express is the same.)

All are Pyro autoguides initialised at the SVD singular values (the initial
``s`` of each layer) with initial scale ``init_scale`` (0.05 by default).
The mean-field family uses the analytic KL (``TraceMeanField_ELBO``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from pyro.distributions import constraints
from pyro.infer.autoguide import (
    AutoDelta,
    AutoGuide,
    AutoLowRankMultivariateNormal,
    AutoMultivariateNormal,
    AutoNormal,
    AutoStructured,
    init_to_value,
)

from scalabl_pyro.errors import ScalaBLError

GUIDE_FAMILIES = ("mean_field", "full_rank", "low_rank", "block", "delta", "mle")
POINT_FAMILIES = ("delta", "mle")


def check_family(family: str) -> str:
    """Validate a guide-family name (clear error listing the known ones)."""
    if family not in GUIDE_FAMILIES:
        raise ScalaBLError(
            f"unknown guide family {family!r}; choose one of {', '.join(GUIDE_FAMILIES)}"
        )
    return family


def build_guide(
    family: str,
    model: Callable,
    init_values: Mapping[str, torch.Tensor],
    *,
    init_scale: float = 0.05,
    low_rank: int = 4,
) -> AutoGuide:
    """An autoguide of the named family for ``model``, initialised at ``init_values``."""
    check_family(family)
    init = init_to_value(values={k: v.clone() for k, v in init_values.items()})
    if family == "mean_field":
        return AutoNormal(model, init_loc_fn=init, init_scale=init_scale)
    if family == "full_rank":
        return AutoMultivariateNormal(model, init_loc_fn=init, init_scale=init_scale)
    if family == "low_rank":
        if low_rank < 1:
            raise ScalaBLError(f"guide_rank must be >= 1 for the low_rank family, got {low_rank}")
        return AutoLowRankMultivariateNormal(
            model, init_loc_fn=init, init_scale=init_scale, rank=low_rank
        )
    if family == "block":
        return AutoStructured(
            model,
            conditionals="mvn",
            dependencies={},
            init_loc_fn=init,
            init_scale=float(init_scale),
        )
    return AutoDelta(model, init_loc_fn=init)


def expected_num_parameters(family: str, num_layers: int, rank: int, low_rank: int = 4) -> int:
    """The free-parameter count of a family (the table in this module's docstring)."""
    check_family(family)
    d = num_layers * rank
    return {
        "mean_field": 2 * d,
        "full_rank": d + d * (d + 1) // 2,
        "low_rank": d * (low_rank + 2),
        "block": num_layers * (2 * rank + rank * (rank + 1) // 2),
        "delta": d,
        "mle": d,
    }[family]


def _free_size(value: torch.Tensor, constraint: constraints.Constraint) -> int:
    """Free parameters of one constrained tensor (triangular factors count once)."""
    base = constraint
    while isinstance(base, constraints.independent):
        base = base.base_constraint
    n = value.shape[-1] if value.dim() >= 2 else 0
    batch = value.numel() // max(n * n, 1) if n else 1
    if base in (constraints.unit_lower_cholesky,):
        return batch * n * (n - 1) // 2
    if isinstance(base, type(constraints.lower_cholesky)) or base in (
        constraints.lower_cholesky,
        constraints.softplus_lower_cholesky,
    ):
        return batch * n * (n + 1) // 2
    return value.numel()


def count_free_parameters(guide: AutoGuide) -> int:
    """Count a guide's free variational parameters by inspecting its constraints.

    Storage can be larger than the count (Pyro keeps a Cholesky factor as a
    full square matrix); this counts what the constraint leaves free.
    """
    total = 0
    for name, value in guide.named_parameters():
        constraint = _constraint_of(guide, name)
        total += _free_size(value, constraint)
    return total


def _constraint_of(guide: AutoGuide, param_name: str) -> constraints.Constraint:
    """The constraint Pyro stored for an unconstrained parameter ``..._unconstrained``."""
    path, leaf = param_name.rsplit(".", 1) if "." in param_name else ("", param_name)
    owner = guide
    for part in filter(None, path.split(".")):
        owner = getattr(owner, part)
    if leaf.endswith("_unconstrained"):
        pyro_params = owner.__dict__.get("_pyro_params", {})
        entry = pyro_params.get(leaf[: -len("_unconstrained")])
        if entry is not None:
            return entry[0]
    return constraints.real
