"""BLoB (Wang et al., NeurIPS 2024): a mean-field Gaussian over the entries of LoRA's ``A``.

Every adapted layer computes ``h = W0 x + (alpha / r) B A x`` with

    A_l ~ q(A_l) = N(M_l, diag sigma_l^2)       (r x d_in, site ``A.<module path>``)
    p(A_l) = N(0, sigma_p^2),  sigma_p = 0.2     (BLoB's prior)

and ``B`` a point estimate. It is a second :class:`~scalabl_pyro.program.latents.LatentFamily`
(:class:`BlobLoRA`): the Pyro model, the ELBO (analytic KL through
``TraceMeanField_ELBO``), the trainer and the BMA predictor are the ones
ScalaBL uses. ``M_l`` *is* peft's ``lora_A`` weight (the guide reads it, it is
not copied), so outside any scope the peft model is the posterior-mean
model and the plain adapter export needs no folding.

**Flipout** (Wen et al. 2018), as BLoB trains: one draw ``A = M + E`` per
step, ``E = sigma * eps``, and per *example* ``n`` random signs
``u_n in {+-1}^d_in``, ``v_n in {+-1}^r`` give

    A_n x = M x + ((E (x * u_n)) * v_n),   i.e.  A_n = M + E * (v_n u_n^T)

so every example sees a draw with the marginal ``q(A)`` while the batch
shares one ``eps``. All input rows of one example (one per answer in choice
scoring) share its signs. Posterior samples folded into the batch
(prediction, vectorised particles) are one exact draw per row; no signs.

Free parameters beyond plain LoRA: one ``sigma`` per entry of every ``A``,
``sum_l r d_in`` (~2.1 M on Llama-2-7B with BLoB's targets).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence

import pyro
import pyro.distributions as dist
import torch
from peft import LoraConfig
from pyro.infer.autoguide import AutoGuide
from pyro.infer.autoguide.utils import deep_setattr
from pyro.nn import PyroModule
from torch import nn

from scalabl_pyro.errors import ScalaBLError
from scalabl_pyro.program.adapters import SubspaceLoRA
from scalabl_pyro.program.latents import Draws

#: BLoB's prior standard deviation on the entries of A.
BLOB_PRIOR_SCALE = 0.2
SITE_PREFIX = "A."


class BlobLoRA(SubspaceLoRA):
    """peft LoRA whose ``A`` matrices are the random quantity (mean-field Gaussian, flipout).

    ``A`` keeps peft's Kaiming-uniform initialisation (no SVD: there is no
    ``s``), ``B = 0``. The answer-token head is not supported.
    """

    shares_prefix = False  # flipout noise is per example: prefix and answers must share it

    site_prefix = SITE_PREFIX

    def __init__(
        self,
        base_model: nn.Module,
        *,
        rank: int = 8,
        alpha: float = 16.0,
        dropout: float = 0.0,
        target_modules: Sequence[str] = ("q_proj", "v_proj"),
        seed: int = 0,
        prior_scale: float = BLOB_PRIOR_SCALE,
    ) -> None:
        if "lm_head" in target_modules:
            raise ScalaBLError(
                "method 'blob' does not adapt lm_head (its answer-token head has no Gaussian "
                "over A yet); drop lm_head from target_modules"
            )
        if prior_scale is None or not prior_scale > 0:
            raise ScalaBLError(f"BLoB needs a prior scale > 0 on A, got {prior_scale}")
        super().__init__(
            base_model,
            rank=rank,
            alpha=alpha,
            dropout=dropout,
            target_modules=target_modules,
            svd_init=False,
            seed=seed,
            prior_scale=prior_scale,
        )
        self.init_values = {
            name: layer.lora_A["default"].weight.detach().float().clone()
            for name, layer in self.layers.items()
        }

    # ------------------------------------------------------------- the family
    def mean(self, name: str) -> torch.Tensor:
        """The posterior mean ``M`` of one site: peft's live ``lora_A`` weight (trainable)."""
        return self.layers[name].lora_A["default"].weight

    def prior(self, name: str) -> dist.Distribution:
        """``N(0, sigma_p^2)`` on every entry of ``A`` (event shape (r, d_in))."""
        v = self.init_values[name]
        return dist.Normal(torch.zeros_like(v), self.prior_scale).to_event(2)

    def _make_hook(self, name: str) -> Callable:
        def hook(module: nn.Module, inputs, output: torch.Tensor) -> torch.Tensor:
            if not self.in_scope:
                return output  # the posterior mean: peft's own A x
            x = inputs[0]
            a = self.current(name)
            delta = (a.to(module.weight) - module.weight).to(x.dtype)  # E = A - M
            if delta.dim() == 2:
                pert = self._flipout(name, x, delta)
            else:  # one exact draw per row: (rows, r, d_in)
                xf = x.reshape(delta.shape[0], -1, x.shape[-1])
                pert = torch.einsum("btd,brd->btr", xf, delta).reshape(output.shape)
            return output + pert.to(output.dtype)

        return hook

    def flipout_signs(
        self, name: str, groups: torch.Tensor, d_in: int, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-example Rademacher signs ``(u, v)`` of one layer: (G, d_in), (G, r).

        Drawn once per scope (kept in :meth:`scope_cache`), so a recomputation
        under gradient checkpointing sees the same ones.
        """
        cache = self.scope_cache()
        key = ("flipout", name)
        if key not in cache:
            g = int(groups.max()) + 1
            u = torch.randint(0, 2, (g, d_in), device=device) * 2 - 1
            v = torch.randint(0, 2, (g, self.rank), device=device) * 2 - 1
            cache[key] = (u, v)
        return cache[key]

    def _flipout(self, name: str, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """``(E (x * u_n)) * v_n`` for every row (rows of one example share signs)."""
        rows = x.shape[0]
        groups = self.current_groups()
        if groups is None:
            groups = torch.arange(rows)
        groups = groups.to(x.device)
        u, v = self.flipout_signs(name, groups, x.shape[-1], x.device)
        shape = (rows,) + (1,) * (x.dim() - 2) + (-1,)
        u = u[groups].view(shape).to(x.dtype)
        v = v[groups].view(shape).to(x.dtype)
        return ((x * u) @ delta.T) * v

    # ----------------------------------------------------------------- export
    @torch.no_grad()
    def adapter_state(self, point: Draws) -> tuple[dict[str, torch.Tensor], LoraConfig]:
        """A plain peft adapter of the model at ``point`` (``A = point``, ``B`` as trained)."""
        state: dict[str, torch.Tensor] = {}
        for name, path in self.paths.items():
            layer = self.layers[name]
            state[f"{path}.lora_A.weight"] = point[name].detach().float().cpu().clone()
            state[f"{path}.lora_B.weight"] = layer.lora_B["default"].weight.detach().float().cpu()
        config = copy.deepcopy(self.peft_model.peft_config["default"])
        config.inference_mode = True
        return state, config

    @torch.no_grad()
    def merge_and_unload(self, point: Draws) -> nn.Module:
        """The base model with ``B A`` at ``point`` merged in (consumes the adapters)."""
        for name, layer in self.layers.items():
            a = layer.lora_A["default"].weight
            a.copy_(point[name].to(a))
        self.remove_hooks()
        return self.peft_model.merge_and_unload()


class BlobGuide(AutoGuide):
    """``q(A_l) = N(M_l, diag sigma_l^2)``: ``M_l`` is the family's live ``lora_A`` weight.

    Only ``log sigma`` (one per entry of every ``A``) is a parameter of the
    guide; the mean is trained with the LoRA factors. Initial
    ``sigma = init_scale``. Sites are sampled from ``Normal`` directly, so the
    ELBO's KL is analytic (``mean_field = True`` tells the trainer so).
    """

    mean_field = True

    def __init__(self, model: Callable, family: BlobLoRA, init_scale: float = 0.05) -> None:
        super().__init__(model)
        if not init_scale > 0:
            raise ScalaBLError(f"init_scale must be > 0, got {init_scale}")
        self._family = family
        self._init_scale = float(init_scale)

    def _setup_prototype(self, *args, **kwargs) -> None:
        super()._setup_prototype(*args, **kwargs)
        self.log_scales = PyroModule()
        for name, site in self.prototype_trace.iter_stochastic_nodes():
            init = torch.full_like(site["value"], math.log(self._init_scale))
            deep_setattr(self.log_scales, name, nn.Parameter(init))

    def _get_loc_and_scale(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean ``M`` (peft's weight) and scale ``exp(log sigma)`` of one site."""
        owner = self.log_scales
        for part in name.split("."):
            owner = getattr(owner, part)
        return self._family.mean(name).float(), owner.exp()

    def forward(self, *args, **kwargs) -> dict[str, torch.Tensor]:
        if self.prototype_trace is None:
            self._setup_prototype(*args, **kwargs)
        out = {}
        for name, _ in self.prototype_trace.iter_stochastic_nodes():
            loc, scale = self._get_loc_and_scale(name)
            out[name] = pyro.sample(name, dist.Normal(loc, scale).to_event(2))
        return out

    @torch.no_grad()
    def median(self, *args, **kwargs) -> dict[str, torch.Tensor]:
        """The posterior mean ``M`` of every site."""
        return {
            name: self._family.mean(name).detach().float().clone()
            for name, _ in self.prototype_trace.iter_stochastic_nodes()
        }
