"""Guide families over the subspace latents, selectable by name.

With L adapted layers of rank r the latent dimension is D = L r (a few
hundred to ~2,000 even for 7B models), so even a full-rank Gaussian is cheap.

=============  ===============================================  =======================
name           posterior                                        free parameters
=============  ===============================================  =======================
mean_field     N(mu_l, diag sigma_l^2) per layer (the paper)    2 D
log_mean_field mean-field, mu = exp(log mu) > 0, sigma =        2 D
               exp(log sigma): the official code's parameters
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
The mean-field families use the analytic KL (``TraceMeanField_ELBO``).
``log_mean_field`` is what the official implementation stores: a positive
mean through ``log mu`` and ``log sigma``, with initial scales drawn from
``U[init_scale / sqrt 2, init_scale]``; gradient steps on log-parameters
shrink ``mu`` far more gently than steps on ``mu`` itself, which matters for
the reference objective's SGD step on the reverse KL.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from typing import Any

import numpy as np
import pyro
import pyro.distributions as dist
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
from pyro.infer.autoguide.utils import deep_setattr
from pyro.nn import PyroModule
from torch import nn

from scalabl_pyro.errors import ScalaBLError
from scalabl_pyro.program.families import check_family


def _base_constraint(constraint: constraints.Constraint) -> constraints.Constraint:
    """The constraint under any ``independent`` wrappers."""
    while isinstance(constraint, constraints.independent):
        constraint = constraint.base_constraint
    return constraint


def _is_real(constraint: constraints.Constraint) -> bool:
    return _base_constraint(constraint) is constraints.real


class AutoMeanFieldNormal(AutoNormal):
    """``AutoNormal`` whose real-valued sites are sampled from ``Normal(loc, scale)`` directly.

    Pyro's ``AutoNormal`` samples an auxiliary ``<name>_unconstrained`` site and
    records the latent itself as a ``Delta``; ``TraceMeanField_ELBO`` then finds
    no closed-form KL(Delta || Normal) pair and falls back to the Monte-Carlo
    ``log q(s) - log p(s)``. Sampling the (real-support) site directly keeps
    the same parameters, names and state dict and gives the analytic KL.
    """

    def forward(self, *args, **kwargs):
        if self.prototype_trace is None:
            self._setup_prototype(*args, **kwargs)
        sites = list(self.prototype_trace.iter_stochastic_nodes())
        if not all(_is_real(site["fn"].support) for _, site in sites):
            return super().forward(*args, **kwargs)
        plates = self._create_plates(*args, **kwargs)
        result = {}
        for name, site in sites:
            with ExitStack() as stack:
                for frame in site["cond_indep_stack"]:
                    if frame.vectorized:
                        stack.enter_context(plates[frame.name])
                loc, scale = self._get_loc_and_scale(name)
                fn = dist.Normal(loc, scale).to_event(self._event_dims[name])
                result[name] = pyro.sample(name, fn)
        return result


def _deep_getattr(obj, key: str):
    """Inverse of Pyro's ``deep_setattr`` for dotted site names."""
    return functools.reduce(getattr, key.split("."), obj)


class AutoLogMeanField(AutoGuide):
    """Mean-field Gaussian ``s ~ N(exp(log_mu), diag exp(log_sigma)^2)`` per site.

    The official ScalaBL code's parameterisation: the mean is positive and
    both parameters live in log space. ``init_values`` must be positive (the
    SVD singular values are); ``init_scales`` holds each site's initial sigma.
    Sites are sampled from ``Normal`` directly, so the KL is analytic.
    """

    def __init__(
        self,
        model: Callable,
        init_values: Mapping[str, torch.Tensor],
        init_scales: Mapping[str, torch.Tensor],
    ) -> None:
        super().__init__(model)
        bad = [k for k, v in init_values.items() if not bool((v > 0).all())]
        if bad:
            raise ScalaBLError(
                f"log_mean_field needs positive initial locations (site {bad[0]!r} has a value "
                "<= 0); use svd_init or the mean_field family"
            )
        self._init_values = {k: v.detach().clone() for k, v in init_values.items()}
        self._init_scales = {k: v.detach().clone() for k, v in init_scales.items()}

    def _setup_prototype(self, *args, **kwargs) -> None:
        super()._setup_prototype(*args, **kwargs)
        self.log_locs = PyroModule()
        self.log_scales = PyroModule()
        for name, site in self.prototype_trace.iter_stochastic_nodes():
            shape = site["value"].shape
            loc = self._init_values[name].to(site["value"]).reshape(shape)
            scale = self._init_scales[name].to(site["value"]).reshape(shape)
            deep_setattr(self.log_locs, name, nn.Parameter(loc.log()))
            deep_setattr(self.log_scales, name, nn.Parameter(scale.log()))

    def _get_loc_and_scale(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean ``exp(log_mu)`` and scale ``exp(log_sigma)`` of one site."""
        return _deep_getattr(self.log_locs, name).exp(), _deep_getattr(self.log_scales, name).exp()

    def forward(self, *args, **kwargs) -> dict[str, torch.Tensor]:
        if self.prototype_trace is None:
            self._setup_prototype(*args, **kwargs)
        out = {}
        for name, site in self.prototype_trace.iter_stochastic_nodes():
            loc, scale = self._get_loc_and_scale(name)
            out[name] = pyro.sample(name, dist.Normal(loc, scale).to_event(site["fn"].event_dim))
        return out

    @torch.no_grad()
    def median(self, *args, **kwargs) -> dict[str, torch.Tensor]:
        """The posterior mean (= median) of each site."""
        return {
            name: self._get_loc_and_scale(name)[0].clone()
            for name, _ in self.prototype_trace.iter_stochastic_nodes()
        }


def build_guide(
    family: str,
    model: Callable,
    init_values: Mapping[str, torch.Tensor],
    *,
    init_scale: float = 0.05,
    low_rank: int = 4,
    init_scales: Mapping[str, torch.Tensor] | None = None,
) -> AutoGuide:
    """An autoguide of the named family for ``model``, initialised at ``init_values``.

    ``init_scales`` (per-site initial sigma) is used by ``log_mean_field``;
    without it every site starts at ``init_scale``.
    """
    check_family(family)
    init = init_to_value(values={k: v.clone() for k, v in init_values.items()})
    if family == "mean_field":
        return AutoMeanFieldNormal(model, init_loc_fn=init, init_scale=init_scale)
    if family == "log_mean_field":
        if init_scales is None:
            init_scales = {k: torch.full_like(v, init_scale) for k, v in init_values.items()}
        return AutoLogMeanField(model, init_values, init_scales)
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
        "log_mean_field": 2 * d,
        "full_rank": d + d * (d + 1) // 2,
        "low_rank": d * (low_rank + 2),
        "block": num_layers * (2 * rank + rank * (rank + 1) // 2),
        "delta": d,
        "mle": d,
    }[family]


def _free_size(value: torch.Tensor, constraint: constraints.Constraint) -> int:
    """Free parameters of one constrained tensor (triangular factors count once)."""
    base = _base_constraint(constraint)
    n = value.shape[-1] if value.dim() >= 2 else 0
    batch = value.numel() // max(n * n, 1) if n else 1
    if base is constraints.unit_lower_cholesky:
        return batch * n * (n - 1) // 2
    if base in (constraints.lower_cholesky, constraints.softplus_lower_cholesky):
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


def guide_covariance(guide: Any, site_names: Sequence[str]) -> np.ndarray | None:
    """The exact (D, D) covariance of a Gaussian guide over ``site_names`` (None: no closed form).

    Mean-field: diagonal of the scales; full-rank / low-rank: Pyro's
    ``get_posterior()`` (the joint Normal over the packed latent vector,
    identity transform since ``s`` is real); block (``AutoStructured`` with
    dense conditionals and no dependencies, ``s_l = loc_l + diag(scale_l) L_l
    z``): block-diagonal ``diag(scale_l) L_l L_l^T diag(scale_l)``. Other
    families: None. It reads the guides' internals, so it lives beside them.
    """
    from operator import attrgetter

    from pyro.infer.autoguide import AutoContinuous, AutoStructured

    from scalabl_pyro.program.model import pyro_settings

    with pyro_settings(), torch.no_grad():
        if isinstance(guide, (AutoMeanFieldNormal, AutoLogMeanField)):
            scales = [guide._get_loc_and_scale(n)[1].reshape(-1) for n in site_names]
            return np.diag(torch.cat(scales).double().cpu().numpy() ** 2)
        if isinstance(guide, AutoContinuous):
            order = list(guide._unconstrained_shapes)
            if order != list(site_names):
                return None
            post = guide.get_posterior()
            return post.covariance_matrix.double().cpu().numpy()
        if isinstance(guide, AutoStructured) and not guide.dependencies:
            blocks = []
            for n in site_names:
                if guide.conditionals.get(n) != "mvn":
                    return None
                scale = attrgetter(n)(guide.scales).reshape(-1).double()
                tril = attrgetter(n)(guide.scale_trils).double()
                blocks.append(scale[:, None] * (tril @ tril.T) * scale[None, :])
            return torch.block_diag(*blocks).cpu().numpy()
    return None
