"""Training objectives: the ELBO, KL weight schedules, and the paper's reference recipe.

**ELBO (default).** ``E_q[log p(y | s)] * N/B - KL(q || p)``, computed by Pyro:
``TraceMeanField_ELBO`` (analytic KL) for the mean-field family, ``Trace_ELBO``
(Monte-Carlo KL) for the others. ``num_particles > 1`` is vectorised, and the
model folds the particles into the batch.

**KL weight.** :class:`KLScale` multiplies the log-density of every
*unobserved* sample site by ``w``: the latent sites of the model (prior) and
all sites of the guide, so the analytic or sampled KL is scaled by ``w`` while
the likelihood is not. Schedules: ``constant``, ``linear`` (warm-up from 0 to
the weight) and ``cyclic`` (BLoB's weight, see :func:`blob_cyclic_weight`).

**Reference objective.** What the official ScalaBL code optimises (for
comparison with the paper, not one ELBO): per batch, an AdamW step on the
*mean* NLL of the batch with one posterior sample, then an SGD step on
``pi_i * KL(p || q)`` with learning rate ``0.2 x`` the warm-up/decay factor
— the reverse KL, which for a Gaussian is minimised at
``sigma^2 = sigma_p^2 + mu^2`` and so gives wide, mass-covering posteriors.
``pi_i`` is BLoB's raw cyclic weight; its only schedule. The warm-up lasts
``int(0.06 T)`` steps (:func:`reference_warmup_steps`); at step ``t`` AdamW
takes the factor ``t / WU`` (:func:`reference_lr_factor`), the KL step
``(t - 1) / WU`` (:func:`reference_kl_lr_factor`), as in the official code.
See ``train.py`` for the optimizers and ``guides.AutoLogMeanField`` for the
parameters.

**Observing the terms.** The trainer reads the likelihood term off the
program with :class:`LikelihoodMonitor` (a messenger on the ``obs`` site),
and the KL in closed form where it exists.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from pyro import poutine
from pyro.infer import ELBO, Trace_ELBO, TraceMeanField_ELBO
from pyro.infer.autoguide import AutoGuide, AutoNormal
from pyro.poutine.messenger import Messenger

from scalabl_pyro.errors import ScalaBLError
from scalabl_pyro.program.families import MEAN_FIELD_FAMILIES
from scalabl_pyro.program.formats import TaskBatch
from scalabl_pyro.program.guides import AutoLogMeanField
from scalabl_pyro.program.model import ScalaBLModel

_MEAN_FIELD_GUIDES = (AutoNormal, AutoLogMeanField)

KL_SCHEDULES = ("constant", "linear", "cyclic")
OBJECTIVES = ("elbo", "reference")


class LikelihoodMonitor(Messenger):
    """Record the per-example log-likelihood of the observed ``obs`` site (detached).

    Used around the loss so that training logs what the program computed,
    not a side channel on the model. Particles and examples are averaged.
    """

    def __init__(self) -> None:
        super().__init__()
        self._values: list[torch.Tensor] = []

    def _postprocess_message(self, msg: dict) -> None:
        if msg["type"] == "sample" and msg["is_observed"] and msg["name"] == "obs":
            self._values.append(msg["fn"].log_prob(msg["value"]).detach().float().mean())

    @property
    def mean_log_likelihood(self) -> float:
        """Mean log p(y | x, s) per example over everything recorded (NaN if nothing)."""
        if not self._values:
            return float("nan")
        return float(torch.stack(self._values).mean())


class KLScale(Messenger):
    """Scale the log-density of unobserved sample sites (model priors and guide) by ``w``."""

    def __init__(self, weight: float) -> None:
        super().__init__()
        if weight < 0:
            raise ScalaBLError(f"KL weight must be >= 0, got {weight}")
        self.weight = float(weight)

    def _process_message(self, msg: dict) -> None:
        if msg["type"] == "sample" and not msg["is_observed"]:
            msg["scale"] = self.weight * msg["scale"]


def blob_cycle_length(num_data: int, batch_size: int) -> int:
    """BLoB's cycle length ``M = floor(100 N^(pi/8) / b)`` (at least 1)."""
    return max(1, math.floor(100 * num_data ** (math.pi / 8) / batch_size))


def blob_cyclic_weight(
    step: int, num_data: int, batch_size: int, *, elbo_scaled: bool = True
) -> float:
    """BLoB's cyclic KL weight for optimizer step ``step`` (1-based).

    BLoB weights the KL at step ``t`` by ``pi_i = 2^i / (2^(M+1) - 1)`` with
    ``i = ((t-1) mod M) + 1`` and ``M = floor(100 N^(pi/8) / b)``: the weights
    of one cycle sum to ~1, and almost all of it falls on the last few steps.
    That raw ``pi_i`` is what the reference objective uses
    (``elbo_scaled=False``). Our ELBO scales the likelihood by N/B so the
    whole-data KL has weight 1 every step; there the equivalent weight is
    ``M * pi_i`` (average ~1 over a cycle), the default.
    """
    m = blob_cycle_length(num_data, batch_size)
    i = ((step - 1) % m) + 1 if step >= 1 else 1
    # 2^i / (2^(M+1) - 1) computed in log space (M is in the hundreds)
    log_pi = (i - (m + 1)) * math.log(2.0) - math.log1p(-(2.0 ** -(m + 1)))
    return (m if elbo_scaled else 1) * math.exp(log_pi)


@dataclass(frozen=True)
class KLSchedule:
    """KL weight per optimizer step (1-based)."""

    kind: str = "constant"
    weight: float = 1.0
    warmup_steps: int = 0
    num_data: int = 1
    batch_size: int = 1

    def __post_init__(self) -> None:
        if self.kind not in KL_SCHEDULES:
            raise ScalaBLError(
                f"unknown KL schedule {self.kind!r}; choose one of {', '.join(KL_SCHEDULES)}"
            )

    def __call__(self, step: int, *, elbo_scaled: bool = True) -> float:
        """Weight at ``step``; ``elbo_scaled=False`` gives BLoB's raw cyclic pi (reference)."""
        if self.kind == "constant":
            return self.weight
        if self.kind == "linear":
            if self.warmup_steps <= 0:
                return self.weight
            return self.weight * min(1.0, step / self.warmup_steps)
        return self.weight * blob_cyclic_weight(
            step, self.num_data, self.batch_size, elbo_scaled=elbo_scaled
        )


def linear_warmup_decay(step: int, warmup: int, total: int) -> float:
    """Warm-up then decay: ``step / warmup``, then ``(total - step) / (total - warmup)``.

    The factor of ``transformers.get_linear_schedule_with_warmup`` at scheduler
    step ``step`` (0 before any step; floored at 0; a zero ``warmup`` or
    ``total - warmup`` counts as 1).
    """
    if step < warmup:
        return step / max(1, warmup)
    return max(0.0, (total - step) / max(1, total - warmup))


def reference_warmup_steps(total: int, ratio: float = 0.06) -> int:
    """The official code's warm-up length ``int(ratio * total)`` (truncated, not rounded)."""
    return int(ratio * total)


def reference_lr_factor(step: int, warmup: int, total: int) -> float:
    """The official AdamW learning-rate factor at optimizer step ``step`` (1-based).

    ``t / WU`` during warm-up, then ``(T - t) / (T - WU)``: the first step
    already updates at ``1 / WU``. (An HF scheduler stepped after the
    optimizer gives ``(t - 1) / WU``, one step behind.)
    """
    return linear_warmup_decay(step, warmup, total)


def reference_kl_lr_factor(step: int, warmup: int, total: int) -> float:
    """The official KL step's factor at optimizer step ``step`` (1-based): ``(t - 1) / WU``, ...

    Unlike the AdamW factor it is the schedule's value *before* this step's
    update, as in the official code (its SGD learning rate is
    ``0.2 x`` this ``x pi_i``).
    """
    return linear_warmup_decay(step - 1, warmup, total)


def make_elbo(family: str, num_particles: int = 1) -> ELBO:
    """The ELBO estimator for a guide family (analytic KL for mean-field)."""
    if num_particles < 1:
        raise ScalaBLError(f"num_particles must be >= 1, got {num_particles}")
    cls = TraceMeanField_ELBO if family in MEAN_FIELD_FAMILIES else Trace_ELBO
    return cls(
        num_particles=num_particles, vectorize_particles=num_particles > 1, max_plate_nesting=1
    )


def gaussian_kl(mu_q, sigma_q, mu_p, sigma_p) -> torch.Tensor:
    """KL(N(mu_q, sigma_q^2) || N(mu_p, sigma_p^2)), elementwise."""
    return torch.log(sigma_p / sigma_q) + (sigma_q**2 + (mu_q - mu_p) ** 2) / (2 * sigma_p**2) - 0.5


def is_mean_field(guide: AutoGuide) -> bool:
    """Whether a guide is a diagonal Gaussian per site with ``_get_loc_and_scale`` (analytic KL)."""
    return isinstance(guide, _MEAN_FIELD_GUIDES) or bool(getattr(guide, "mean_field", False))


def mean_field_params(guide: AutoGuide, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Location and scale of one site of a mean-field guide."""
    # AutoNormal's per-site accessor (stable since Pyro 1.5); AutoLogMeanField mirrors it.
    return guide._get_loc_and_scale(name)


def reverse_kl(model: ScalaBLModel, guide: AutoGuide) -> torch.Tensor:
    """KL(p || q) summed over sites, as the official code computes (mean-field only)."""
    if not is_mean_field(guide):
        raise ScalaBLError(
            "the reference objective needs a mean-field guide (log_mean_field or mean_field; "
            "it uses the closed-form reverse KL); use objective='elbo' for other families"
        )
    if model.prior_scale is None:
        raise ScalaBLError("the reference objective needs a prior; set prior_scale > 0")
    return _sum_site_kl(model, guide, reverse=True)


def mean_nll(model: ScalaBLModel, guide: AutoGuide, batch: TaskBatch) -> torch.Tensor:
    """Mean negative log-likelihood of the batch under one posterior sample."""
    guide_tr = poutine.trace(guide).get_trace(batch, batch.labels)
    model_tr = poutine.trace(poutine.replay(model, trace=guide_tr)).get_trace(batch, batch.labels)
    site = model_tr.nodes["obs"]
    return -site["fn"].log_prob(site["value"]).mean()


class MeanNLL(torch.nn.Module):
    """:func:`mean_nll` as a module, so the reference objective's NLL step can be DDP-wrapped."""

    def __init__(self, model: ScalaBLModel, guide: AutoGuide) -> None:
        super().__init__()
        self.model, self.guide = model, guide

    def forward(self, batch: TaskBatch) -> torch.Tensor:
        """Mean NLL of ``batch`` under one posterior draw."""
        return mean_nll(self.model, self.guide, batch)


def analytic_kl(model: ScalaBLModel, guide: AutoGuide) -> torch.Tensor | None:
    """KL(q || p) in closed form for a mean-field guide with a prior, else None."""
    if not is_mean_field(guide) or model.prior_scale is None:
        return None
    return _sum_site_kl(model, guide, reverse=False)


def _sum_site_kl(model: ScalaBLModel, guide: AutoGuide, *, reverse: bool) -> torch.Tensor:
    """Sum over sites of KL(q || p) (KL(p || q) with ``reverse``); diagonal Gaussian priors."""
    terms = []
    for name in model.site_names:
        mu, sigma = mean_field_params(guide, name)
        prior = model.prior(name).base_dist
        mp = prior.loc.to(mu).expand_as(mu)
        sp = prior.scale.to(sigma).expand_as(sigma)
        kl = gaussian_kl(mp, sp, mu, sigma) if reverse else gaussian_kl(mu, sigma, mp, sp)
        terms.append(kl.sum())
    return torch.stack(terms).sum()


def elbo_loss(loss_fn, batch: TaskBatch, kl_weight: float) -> torch.Tensor:
    """Negative ELBO of one batch with the KL scaled by ``kl_weight``."""
    with KLScale(kl_weight):
        return loss_fn(batch, batch.labels)


__all__ = [
    "KLScale",
    "KLSchedule",
    "KL_SCHEDULES",
    "LikelihoodMonitor",
    "MeanNLL",
    "OBJECTIVES",
    "analytic_kl",
    "blob_cycle_length",
    "blob_cyclic_weight",
    "elbo_loss",
    "gaussian_kl",
    "linear_warmup_decay",
    "make_elbo",
    "mean_nll",
    "reference_kl_lr_factor",
    "reference_lr_factor",
    "reference_warmup_steps",
    "reverse_kl",
]
