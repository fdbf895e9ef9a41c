"""Subspace LoRA: peft LoRA adapters whose rank-r bottleneck is scaled by ``s``.

Every adapted linear layer computes

    h = W0 x + (alpha / r) * B diag(s) A x

where ``A`` (r x d_in) and ``B`` (d_out x r) are peft's LoRA factors and ``s``
(r,) is the layer's latent subspace variable, supplied for each forward pass
by the Pyro model. ``s`` enters through a forward hook on peft's ``lora_A``
module (its output ``A x`` is multiplied by ``s``); nothing in peft or
transformers is patched. ``s`` may be one vector per layer (shared by the
batch) or one vector per input row, which is how posterior samples are folded
into the batch dimension.

Initialisation follows the reference code: peft draws a random ``A``; its thin
SVD ``U S Vh`` gives ``A = Vh`` (orthonormal rows) and the initial posterior
location ``s = S``, so that ``diag(S) Vh`` spans the same row space as the
random draw; ``B = 0``.

The output head (``lm_head``) can be adapted too, restricted to the rows of
the answer tokens (:class:`SubspaceClassHead`), so that no full-vocabulary
delta is ever built.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from torch import nn

from scalabl_pyro.errors import ScalaBLError

SITE_PREFIX = "s."
HEAD_SITE = "s.lm_head"


def site_name(module_path: str) -> str:
    """Stable Pyro site name for the LoRA layer at ``module_path``."""
    for prefix in ("base_model.model.",):
        if module_path.startswith(prefix):
            module_path = module_path[len(prefix) :]
    return SITE_PREFIX + module_path


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


class SubspaceLoRA:
    """peft LoRA adapters with an r-dimensional latent ``s`` per adapted layer.

    Owns the hooks of one peft model; two instances never share state. Use
    :meth:`set_latents` (or the :meth:`use` context) before a forward pass.
    """

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
        peft_model: PeftModel | None = None,
    ) -> None:
        if rank < 1:
            raise ScalaBLError(f"LoRA rank must be >= 1, got {rank}")
        self.rank = rank
        self.alpha = float(alpha)
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
        torch.manual_seed(seed)
        if peft_model is None:
            if any(isinstance(m, LoraLayer) for m in base_model.modules()):
                raise ScalaBLError(
                    "this base model already carries LoRA layers (peft adapts a model in "
                    "place); load a fresh base model for each ScalaBL instance"
                )
            self._check_targets(base_model, targets)
            config = LoraConfig(
                r=rank,
                lora_alpha=alpha,
                lora_dropout=dropout,
                target_modules=list(targets),
                bias="none",
                init_lora_weights=True,
            )
            peft_model = get_peft_model(base_model, config)
        self.peft_model: PeftModel = peft_model
        self.target_modules = tuple(targets)
        self.layers: dict[str, nn.Module] = {}
        self.init_values: dict[str, torch.Tensor] = {}
        self._latents: Mapping[str, torch.Tensor] | None = None
        self._handles = []
        for path, module in peft_model.named_modules():
            if isinstance(module, LoraLayer) and "default" in getattr(module, "lora_A", {}):
                name = site_name(path)
                self.layers[name] = module
                lora_a = module.lora_A["default"]
                if svd_init:
                    with torch.no_grad():
                        w = lora_a.weight.float()
                        _, svals, vh = torch.linalg.svd(w, full_matrices=False)
                        lora_a.weight.copy_(vh.to(lora_a.weight.dtype))
                    self.init_values[name] = svals.detach().clone()
                else:
                    self.init_values[name] = torch.ones(rank)
                self._handles.append(lora_a.register_forward_hook(self._make_hook(name)))
        self.head: SubspaceClassHead | None = None
        if adapt_head:
            assert class_token_ids is not None  # checked above
            head_w = base_model.get_output_embeddings().weight
            self.head = SubspaceClassHead(head_w, class_token_ids, rank, alpha)
            self.head.to(head_w.device)
            if svd_init:
                with torch.no_grad():
                    _, svals, vh = torch.linalg.svd(self.head.lora_A, full_matrices=False)
                    self.head.lora_A.copy_(vh)
                self.init_values[HEAD_SITE] = svals.detach().clone()
            else:
                self.init_values[HEAD_SITE] = torch.ones(rank)
        if not self.init_values:
            raise ScalaBLError(
                f"no LoRA layer was created for targets {list(target_modules)}; "
                "check the module names of this model"
            )

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

    # ------------------------------------------------------------------ latents
    @property
    def site_names(self) -> list[str]:
        """Pyro site names, one per adapted layer (head last)."""
        return list(self.init_values)

    @property
    def num_latents(self) -> int:
        """Total latent dimension D = r * number of adapted layers."""
        return self.rank * len(self.init_values)

    def _make_hook(self, name: str):
        def hook(module: nn.Module, inputs, output: torch.Tensor) -> torch.Tensor:
            if self._latents is None:
                raise RuntimeError(
                    "subspace latents are not set; run the model through ScalaBLModel or "
                    "inside SubspaceLoRA.use(latents)"
                )
            s = self._latents[name]
            if s.dim() == 2:  # one vector per row: (rows, r) -> (rows, 1, ..., r)
                s = s.view(s.shape[0], *([1] * (output.dim() - 2)), s.shape[1])
            return output * s.to(output.dtype)

        return hook

    def set_latents(self, latents: Mapping[str, torch.Tensor] | None) -> None:
        """Set ``s`` for every layer: each (r,) or (rows, r). Stays set (for
        gradient-checkpoint recomputation) until replaced."""
        if latents is not None:
            missing = [n for n in self.layers if n not in latents]
            if missing:
                raise ScalaBLError(f"latents missing for sites {missing[:3]}...")
        self._latents = latents

    def latent(self, name: str) -> torch.Tensor:
        """The currently set ``s`` of one site."""
        if self._latents is None:
            raise RuntimeError("subspace latents are not set")
        return self._latents[name]

    @contextlib.contextmanager
    def use(self, latents: Mapping[str, torch.Tensor]) -> Iterator[None]:
        """Temporarily set the latents (restores the previous ones on exit)."""
        previous = self._latents
        self.set_latents(latents)
        try:
            yield
        finally:
            self._latents = previous

    # --------------------------------------------------------------- parameters
    def lora_parameters(self) -> list[nn.Parameter]:
        """Trainable LoRA factors (A and B of every layer, and of the head)."""
        params = [p for p in self.peft_model.parameters() if p.requires_grad]
        if self.head is not None:
            params += [self.head.lora_A, self.head.lora_B]
        return params

    def num_lora_parameters(self) -> int:
        """Number of point-estimated LoRA parameters."""
        return sum(p.numel() for p in self.lora_parameters())

    def remove_hooks(self) -> None:
        """Detach the hooks (the peft model then computes plain LoRA with s = 1)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
