"""Subspace LoRA: peft LoRA adapters whose rank-r bottleneck is scaled by ``s``.

Every adapted linear layer computes

    h = W0 x + (alpha / r) * B diag(s) A x

where ``A`` (r x d_in) and ``B`` (d_out x r) are peft's LoRA factors and ``s``
(r,) is the layer's latent subspace variable, supplied for each forward pass
by the Pyro model inside a scope (:meth:`LatentFamily.use`). ``s`` enters
through a forward hook on peft's ``lora_A`` module (its output ``A x`` is
multiplied by ``s``); nothing in peft or transformers is patched. ``s`` may
be one vector per layer (shared by the batch) or one vector per input row,
which is how posterior samples are folded into the batch dimension. Outside
any scope the hook applies the family's point (the posterior mean once a
guide is attached), so the peft model on its own is the posterior-mean model.

Export: :meth:`SubspaceLoRA.adapter_state` folds ``diag(s)`` into ``B``
(``B' = B diag(mu)``), giving a plain peft adapter whose output is the
posterior-mean model's; the answer-token head becomes an ordinary ``lm_head``
LoRA whose ``B`` is zero outside the answer rows.

Initialisation follows the reference code: peft draws a random ``A``; its thin
SVD ``U S Vh`` gives ``A = Vh`` (orthonormal rows) and the initial posterior
location ``s = S``, so that ``diag(S) Vh`` spans the same row space as the
random draw; ``B = 0``.

The output head (``lm_head``) can be adapted too, restricted to the rows of
the answer tokens (:class:`SubspaceClassHead`), so that no full-vocabulary
delta is ever built.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Mapping, Sequence

import pyro.distributions as dist
import torch
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict
from peft.tuners.lora import LoraLayer
from pyro.distributions import constraints
from torch import nn

from scalabl_pyro.errors import ScalaBLError
from scalabl_pyro.program.latents import Draws, LatentFamily
from scalabl_pyro.utils.logging_utils import quiet_library_calls
from scalabl_pyro.utils.rng import model_devices, seeded

log = logging.getLogger(__name__)

SITE_PREFIX = "s."
HEAD_SITE = "s.lm_head"


def site_name(module_path: str, prefix: str = SITE_PREFIX) -> str:
    """Stable Pyro site name for the LoRA layer at ``module_path``."""
    for strip in ("base_model.model.",):
        if module_path.startswith(strip):
            module_path = module_path[len(strip) :]
    return prefix + module_path


class SubspaceClassHead(nn.Module):
    """LoRA on the output head, restricted to the C answer-token rows.

    ``logits_c = W0[c] h + (alpha/r) B diag(s) A h`` for the answer tokens
    only: B is (C x r), so the head adds ``r (d + C)`` parameters instead of
    ``r (d + V)``.
    """

    def __init__(
        self, head_weight: torch.Tensor, class_token_ids: torch.Tensor, rank: int, alpha: float
    ) -> None:
        super().__init__()
        w = head_weight.detach()[class_token_ids].clone()
        self.register_buffer("class_token_ids", class_token_ids.clone(), persistent=True)
        self.register_buffer("weight", w, persistent=False)
        self.lora_A = nn.Parameter(torch.empty(rank, w.shape[1], dtype=torch.float32))
        nn.init.kaiming_uniform_(self.lora_A, a=5**0.5)
        self.lora_B = nn.Parameter(torch.zeros(w.shape[0], rank, dtype=torch.float32))
        self.scaling = alpha / rank

    def forward(self, hidden: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """Class logits (rows, C) from last-position hidden states (rows, d)."""
        h = hidden.to(self.lora_A.dtype)
        base = h @ self.weight.to(h.dtype).T
        low = (h @ self.lora_A.T) * s  # (rows, r) * (r,) or (rows, r)
        return base + self.scaling * (low @ self.lora_B.T)


class SubspaceLoRA(LatentFamily):
    """peft LoRA adapters with an r-dimensional latent ``s`` per adapted layer.

    Owns the hooks of one peft model; two instances never share state. The
    prior is ``N(prior_loc, prior_scale^2 I_r)`` per site (``prior_loc`` 0 unless
    given; ``prior_scale=None`` is a flat prior, for maximum likelihood). Random
    initialisation (peft's draw of ``A``) runs under a local seed: the global
    generators are untouched.
    """

    #: Prefix of the Pyro site names (``s.<module path>``).
    site_prefix = SITE_PREFIX

    def __init__(
        self,
        base_model: nn.Module,
        *,
        rank: int = 8,
        alpha: float = 16.0,
        dropout: float = 0.0,
        target_modules: Sequence[str] = ("q_proj", "v_proj"),
        class_token_ids: torch.Tensor | None = None,
        adapt_head: bool = False,
        svd_init: bool = True,
        seed: int = 0,
        prior_scale: float | None = 1.0,
        peft_model: PeftModel | None = None,
    ) -> None:
        super().__init__()
        if rank < 1:
            raise ScalaBLError(f"LoRA rank must be >= 1, got {rank}")
        if prior_scale is not None and not prior_scale > 0:
            raise ScalaBLError(f"prior_scale must be > 0 (or None for no prior), got {prior_scale}")
        self.rank = rank
        self.alpha = float(alpha)
        self.prior_scale = prior_scale
        self.prior_loc: dict[str, torch.Tensor] = {}
        targets = [t for t in target_modules if t != "lm_head"]
        if "lm_head" in target_modules:
            adapt_head = True
        if not targets and not adapt_head:
            raise ScalaBLError("no target modules; name at least one, e.g. q_proj,v_proj")
        if adapt_head and class_token_ids is None:  # checked before peft is touched
            raise ScalaBLError(
                "lm_head adaptation needs the answer tokens; it is supported for the "
                "answer-letter format only (drop lm_head from targets for choice scoring)"
            )
        if not targets and peft_model is None:
            raise ScalaBLError(
                "lm_head alone cannot be adapted; add at least one linear target "
                "(e.g. q_proj,v_proj,lm_head)"
            )
        if peft_model is None:
            if any(isinstance(m, LoraLayer) for m in base_model.modules()):
                raise ScalaBLError(
                    "this base model already carries LoRA layers (peft adapts a model in "
                    "place); load a fresh base model for each ScalaBL instance"
                )
            self._check_targets(base_model, targets)
        self.target_modules = tuple(targets)
        self.layers: dict[str, nn.Module] = {}
        self.paths: dict[str, str] = {}  # site name -> module path in the peft model
        self.init_values: dict[str, torch.Tensor] = {}
        self._handles = []
        self.head: SubspaceClassHead | None = None
        with seeded(seed, model_devices(base_model)):
            if peft_model is None:
                config = LoraConfig(
                    r=rank,
                    lora_alpha=alpha,
                    lora_dropout=dropout,
                    target_modules=list(targets),
                    bias="none",
                    init_lora_weights=True,
                )
                with quiet_library_calls(log):  # peft's deprecation warnings, logged
                    peft_model = get_peft_model(base_model, config)
            self.peft_model: PeftModel = peft_model
            for path, module in peft_model.named_modules():
                if isinstance(module, LoraLayer) and "default" in getattr(module, "lora_A", {}):
                    name = site_name(path, self.site_prefix)
                    self.layers[name] = module
                    self.paths[name] = path
                    lora_a = module.lora_A["default"]
                    self.init_values[name] = _svd_init_(lora_a.weight) if svd_init else None
                    self._handles.append(lora_a.register_forward_hook(self._make_hook(name)))
            if adapt_head:
                assert class_token_ids is not None  # checked above
                head_w = base_model.get_output_embeddings().weight
                self.head = SubspaceClassHead(head_w, class_token_ids, rank, alpha)
                self.head.to(head_w.device)
                self.init_values[HEAD_SITE] = _svd_init_(self.head.lora_A) if svd_init else None
        if not self.init_values:
            raise ScalaBLError(
                f"no LoRA layer was created for targets {list(target_modules)}; "
                "check the module names of this model"
            )
        for name, v in self.init_values.items():
            if v is None:
                self.init_values[name] = torch.ones(rank)

    @staticmethod
    def _check_targets(model: nn.Module, targets: Sequence[str]) -> None:
        found: dict[str, list[nn.Module]] = {t: [] for t in targets}
        for path, module in model.named_modules():
            leaf = path.rsplit(".", 1)[-1]
            if leaf in found:
                found[leaf].append(module)
        names = sorted(
            {p.rsplit(".", 1)[-1] for p, m in model.named_modules() if isinstance(m, nn.Linear)}
        )
        for t, mods in found.items():
            if not mods:
                raise ScalaBLError(
                    f"target module {t!r} not found in {type(model).__name__}; "
                    f"its linear layers are: {', '.join(names)}"
                )
            bad = [type(m).__name__ for m in mods if not isinstance(m, nn.Linear)]
            if bad:
                raise ScalaBLError(
                    f"target module {t!r} is a {bad[0]}, not a linear layer; ScalaBL adapts "
                    f"nn.Linear layers only (choose from: {', '.join(names)})"
                )

    # ---------------------------------------------------------------- prior
    def prior(self, name: str) -> dist.Distribution:
        """``N(prior_loc, prior_scale^2 I_r)`` for one site, or flat without a prior."""
        r = self.rank
        device = self.init_values[name].device
        if self.prior_scale is None:
            return dist.ImproperUniform(constraints.real, (), (r,))
        loc = self.prior_loc.get(name)
        if loc is None:
            return dist.Normal(torch.zeros(r, device=device), self.prior_scale).to_event(1)
        loc = loc.to(device)
        return dist.Normal(loc, self.prior_scale * (1.0 + loc)).to_event(1)

    def set_reference_prior_quirk(self, initial_scales: Mapping[str, torch.Tensor]) -> None:
        """The official code's effective prior ``N(u, ((1 + u) sigma_p)^2)`` per site.

        In the official implementation the prior's mean buffer aliases the
        tensor that the posterior-scale initialisation later fills in place, so
        each layer's prior is centred on its own initial sigma draw ``u``
        (~0.04) with scale ``1 + u``. It moves the reverse KL by about 1 %;
        this switch reproduces it for exact comparisons.
        """
        self.prior_loc = {k: v.detach().clone().float() for k, v in initial_scales.items()}

    def initial_scales(self, high: float, seed: int) -> dict[str, torch.Tensor]:
        """Per-site initial posterior scales ``~ U[high / sqrt 2, high]`` (the official draw)."""
        gen = torch.Generator().manual_seed(int(seed) * 104_729 + 17)
        low = high / math.sqrt(2.0)
        return {
            name: low + (high - low) * torch.rand(self.rank, generator=gen)
            for name in self.site_names
        }

    # ---------------------------------------------------------------- hooks
    def _make_hook(self, name: str):
        def hook(module: nn.Module, inputs, output: torch.Tensor) -> torch.Tensor:
            s = self.current(name)
            if s.dim() == 2:  # one vector per row: (rows, r) -> (rows, 1, ..., r)
                s = s.view(s.shape[0], *([1] * (output.dim() - 2)), s.shape[1])
            return output * s.to(device=output.device, dtype=output.dtype)

        return hook

    # ---------------------------------------------------------- baselines
    @torch.no_grad()
    def reset_lora(self, seed: int, svd_init: bool = True) -> dict[str, torch.Tensor]:
        """Draw fresh LoRA factors (as peft does: Kaiming-uniform ``A``, ``B = 0``).

        With ``svd_init`` ``A`` becomes ``Vh`` of its thin SVD and the singular
        values are the new initial ``s`` (also stored in :attr:`init_values`).
        A deep ensemble gives each member such a draw, under its own local
        seed; the global generators are untouched.
        """
        with seeded(seed, model_devices(self.peft_model)):
            for name, layer in self.layers.items():
                a = layer.lora_A["default"].weight
                nn.init.kaiming_uniform_(a, a=math.sqrt(5))
                layer.lora_B["default"].weight.zero_()
                if svd_init:
                    self.init_values[name] = _svd_init_(a).to(self.init_values[name])
            if self.head is not None:
                nn.init.kaiming_uniform_(self.head.lora_A, a=math.sqrt(5))
                self.head.lora_B.zero_()
                if svd_init:
                    self.init_values[HEAD_SITE] = _svd_init_(self.head.lora_A)
        return dict(self.init_values)

    def lora_log_prior(self, point: Draws, scale: float) -> torch.Tensor:
        """``sum log N(theta; 0, scale^2)`` over the plain-LoRA factors ``B`` and ``diag(s) A``.

        The MAP baseline's Gaussian prior on LoRA's own factors. ``s`` is
        folded into ``A`` (``diag(s) A`` is peft's random ``A`` draw at
        initialisation), so the prior does not depend on how the output is
        split between ``s`` and ``A``: ``(c s, A / c)`` has the same prior.
        ``point`` holds one (r,) vector per site.
        """
        prior = dist.Normal(0.0, scale)
        terms = []
        for name, layer in self.layers.items():
            a = layer.lora_A["default"].weight
            b = layer.lora_B["default"].weight
            s = point[name].to(a)
            terms += [
                prior.log_prob(b.float()).sum(),
                prior.log_prob((s[:, None] * a).float()).sum(),
            ]
        if self.head is not None:
            s = point[HEAD_SITE].to(self.head.lora_A)
            terms += [
                prior.log_prob(self.head.lora_B).sum(),
                prior.log_prob(s[:, None] * self.head.lora_A).sum(),
            ]
        return torch.stack(terms).sum()

    # ----------------------------------------------------------- parameters
    def lora_parameters(self) -> list[nn.Parameter]:
        """Trainable LoRA factors (A and B of every layer, and of the head)."""
        params = [p for p in self.peft_model.parameters() if p.requires_grad]
        if self.head is not None:
            params += [self.head.lora_A, self.head.lora_B]
        return params

    def num_lora_parameters(self) -> int:
        """Number of point-estimated LoRA parameters."""
        return sum(p.numel() for p in self.lora_parameters())

    def lora_state(self) -> dict[str, torch.Tensor]:
        """The unfolded LoRA factors (peft's state-dict keys, plus ``head.lora_A/B``)."""
        state = dict(get_peft_model_state_dict(self.peft_model))
        if self.head is not None:
            state["head.lora_A"] = self.head.lora_A
            state["head.lora_B"] = self.head.lora_B
        return {k: v.detach() for k, v in state.items()}

    def lora_shapes(self) -> dict[str, list[int]]:
        """Shapes of :meth:`lora_state` (for compatibility checks before loading tensors)."""
        return {k: list(v.shape) for k, v in self.lora_state().items()}

    @torch.no_grad()
    def load_lora_state(self, state: Mapping[str, torch.Tensor]) -> None:
        """Copy factors saved by :meth:`lora_state` into this model (shapes must match)."""
        own = self._lora_tensors()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        if missing or unexpected:
            raise ScalaBLError(
                f"LoRA factors do not match this model (missing {missing[:2]}, unexpected "
                f"{unexpected[:2]}); load them on the base model and targets they were made for"
            )
        for k, dst in own.items():
            src = state[k]
            if tuple(src.shape) != tuple(dst.shape):
                raise ScalaBLError(
                    f"LoRA factor {k} has shape {tuple(src.shape)}, this model needs "
                    f"{tuple(dst.shape)}; load it on the base model it was trained on"
                )
            dst.copy_(src.to(device=dst.device, dtype=dst.dtype))

    def _lora_tensors(self) -> dict[str, torch.Tensor]:
        """The live parameter tensors behind :meth:`lora_state`, by the same keys."""
        out = {}
        for name, path in self.paths.items():
            layer = self.layers[name]
            out[f"{path}.lora_A.weight"] = layer.lora_A["default"].weight
            out[f"{path}.lora_B.weight"] = layer.lora_B["default"].weight
        if self.head is not None:
            out["head.lora_A"] = self.head.lora_A
            out["head.lora_B"] = self.head.lora_B
        return out

    # --------------------------------------------------------------- export
    @torch.no_grad()
    def adapter_state(self, point: Draws) -> tuple[dict[str, torch.Tensor], LoraConfig]:
        """A plain peft adapter equal to this model at ``point``: ``B' = B diag(s)``.

        The answer-token head becomes an ``lm_head`` LoRA with the full
        vocabulary's rows, zero outside the answer tokens. Returns peft's
        state-dict keys (as ``save_pretrained`` writes them) and the config.
        """
        state: dict[str, torch.Tensor] = {}
        for name, path in self.paths.items():
            layer = self.layers[name]
            s = point[name].detach().float().cpu()
            a = layer.lora_A["default"].weight.detach().float().cpu()
            b = layer.lora_B["default"].weight.detach().float().cpu()
            state[f"{path}.lora_A.weight"] = a.clone()
            state[f"{path}.lora_B.weight"] = b * s[None, :]
        config = copy.deepcopy(self.peft_model.peft_config["default"])
        if self.head is not None:
            s = point[HEAD_SITE].detach().float().cpu()
            vocab = self.peft_model.get_output_embeddings().weight.shape[0]
            full_b = torch.zeros(vocab, self.rank)
            full_b[self.head.class_token_ids.cpu()] = self.head.lora_B.detach().float().cpu() * s
            head_path = _head_path(self.peft_model)
            state[f"{head_path}.lora_A.weight"] = self.head.lora_A.detach().float().cpu().clone()
            state[f"{head_path}.lora_B.weight"] = full_b
            config.target_modules = {*config.target_modules, "lm_head"}
        # peft keeps a set, written in hash order: sorted, the file is the same in every process
        config.target_modules = sorted(config.target_modules)
        config.inference_mode = True
        return state, config

    @torch.no_grad()
    def merge_and_unload(self, point: Draws) -> nn.Module:
        """The base model with the point model merged into its weights.

        Like peft's ``merge_and_unload``, this consumes the adapters: the hooks
        are removed and the returned module is the base model itself (no
        copy, so a 7B model is not held twice). A tied output head is untied
        before the answer-row delta is added, so the input embeddings stay
        the base model's.
        """
        for name, layer in self.layers.items():
            b = layer.lora_B["default"].weight
            b.mul_(point[name].to(device=b.device, dtype=b.dtype)[None, :])
        self.remove_hooks()
        merged = self.peft_model.merge_and_unload()
        if self.head is not None:
            head = merged.get_output_embeddings()
            w = head.weight.detach().clone()
            s = point[HEAD_SITE].to(self.head.lora_B.device)
            delta = self.head.scaling * (self.head.lora_B * s) @ self.head.lora_A
            w[self.head.class_token_ids] += delta.to(w.dtype)
            head.weight = nn.Parameter(w, requires_grad=False)
            merged.config.tie_word_embeddings = False
            if hasattr(merged.config, "get_text_config"):
                merged.config.get_text_config().tie_word_embeddings = False
        return merged

    def remove_hooks(self) -> None:
        """Detach the hooks (the peft model then computes plain LoRA with s = 1)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()


def _svd_init_(weight: torch.Tensor) -> torch.Tensor:
    """Replace a random LoRA-A draw by ``Vh`` of its thin SVD; return the singular values."""
    with torch.no_grad():
        _, svals, vh = torch.linalg.svd(weight.float(), full_matrices=False)
        weight.copy_(vh.to(weight.dtype))
    return svals.detach().clone()


def _head_path(peft_model: PeftModel) -> str:
    """Module path of the output head inside the peft model (peft's state-dict prefix)."""
    head = peft_model.get_output_embeddings()
    for path, module in peft_model.named_modules():
        if module is head:
            return path
    raise ScalaBLError("the base model has no output head to export the answer-token head to")
