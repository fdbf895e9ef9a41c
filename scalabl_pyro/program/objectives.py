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

**Objective objects.** :class:`ELBOObjective` and :class:`ReferenceObjective`
(:func:`get_objective`) each state, for the trainer, what differs between
the two: the defaults of ``TrainConfig`` (``var_lr``, ``adam_eps``, KL schedule,
warm-up length), the module whose output is the batch's loss (the one DDP
wraps), the learning-rate schedule, a second optimizer, and how a step's
reported loss and KL are computed. The trainer never names an objective.

**Observing the terms.** The trainer reads the likelihood term off the
program with :class:`LikelihoodMonitor` (a messenger on the ``obs`` site),
and the KL in closed form where it exists.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
from pyro import poutine
from pyro.infer import ELBO, Trace_ELBO, TraceMeanField_ELBO
from pyro.infer.autoguide import AutoGuide, AutoNormal
from pyro.poutine.messenger import Messenger
from transformers import get_linear_schedule_with_warmup

from scalabl_pyro.errors import ScalaBLError
from scalabl_pyro.program.families import MEAN_FIELD_FAMILIES
from scalabl_pyro.program.formats import TaskBatch
from scalabl_pyro.program.guides import AutoLogMeanField
from scalabl_pyro.program.model import ScalaBLModel

_MEAN_FIELD_GUIDES = (AutoNormal, AutoLogMeanField)

KL_SCHEDULES = ("constant", "linear", "cyclic")


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


def elbo_loss(
    loss_fn, batch: TaskBatch, kl_weight: float, *, num_data: int | None = None
) -> torch.Tensor:
    """Negative ELBO of one batch with the KL scaled by ``kl_weight``.

    ``num_data`` is the size N of the data plate (the training set); None keeps
    the model's own (:class:`~scalabl_pyro.program.model.ScalaBLModel`).
    """
    kwargs = {} if num_data is None else {"num_data": num_data}
    with KLScale(kl_weight):
        return loss_fn(batch, batch.labels, **kwargs)


class ELBOObjective:
    """The default objective: one AdamW step per batch on the negative ELBO (data-set scale).

    The loss is ``-ELBO = -(N/B) sum log p(y | s) + w KL(q || p)`` (:func:`elbo_loss`),
    its gradient is clipped in per-example units (``/ N``), the schedule is
    ``get_linear_schedule_with_warmup`` over ``round(ratio T)`` warm-up steps,
    and the step's KL is reported in closed form where it exists.
    """

    name = "elbo"
    default_kl_schedule = "constant"
    default_adam_eps = 1e-8
    #: Whether the cyclic KL weight is scaled to the ELBO's convention (``M pi_i``).
    elbo_scaled = True

    def default_var_lr(self, lr: float) -> float:
        """The variational parameters' learning rate when ``var_lr`` is unset: ``10 x lr``."""
        return 10 * lr

    def warmup_steps(self, total: int, ratio: float) -> int:
        """Warm-up steps of the schedule: ``round(ratio x total)``."""
        return int(round(ratio * total))

    def check_settings(self, *, kl_schedule: str | None, num_particles: int) -> None:
        """Refuse ``TrainConfig`` settings this objective cannot honour (none for the ELBO)."""

    def check_family(self, family: str) -> None:
        """Refuse a guide family this objective cannot train (none for the ELBO)."""

    def loss_module(
        self, model: ScalaBLModel, guide: AutoGuide, family: str, num_particles: int
    ) -> torch.nn.Module:
        """The module whose output is a batch's loss (what DDP wraps): Pyro's ELBO module."""
        return make_elbo(family, num_particles)(model, guide)

    def batch_loss(
        self, module: torch.nn.Module, batch: TaskBatch, kl_weight: float, num_data: int
    ) -> torch.Tensor:
        """The loss of one micro-batch (its gradient is accumulated)."""
        return elbo_loss(module, batch, kl_weight, num_data=num_data)

    def grad_scale(self, num_data: int) -> float:
        """What divides the gradient to give per-example units (the ELBO is at data-set scale)."""
        return float(num_data)

    def scheduler(self, optimizer: torch.optim.Optimizer, warmup: int, total: int):
        """The learning-rate schedule of the AdamW step."""
        return get_linear_schedule_with_warmup(optimizer, warmup, total)

    def kl_optimizer(self, variational_params: list, lr: float) -> torch.optim.Optimizer | None:
        """A second optimizer for a separate KL step (None: the KL is in the loss)."""
        return None

    def kl_before_update(self, model: ScalaBLModel, guide: AutoGuide) -> torch.Tensor | None:
        """The closed-form KL of the parameters the step's loss was computed with (or None)."""
        return analytic_kl(model, guide)

    def finish_step(self, step: StepTerms) -> tuple[float, float]:
        """After the AdamW update: the step's reported (loss, KL as optimised)."""
        loss = step.mean_loss
        if step.exact_kl is not None:
            return loss, step.kl_weight * float(step.exact_kl.detach())
        if step.model.prior_scale is None:
            return loss, 0.0  # no prior and a point mass: there is no KL term
        # Monte-Carlo estimate: what the loss holds beyond the likelihood
        return loss, loss - step.nll * step.num_data


class ReferenceObjective(ELBOObjective):
    """The official code's recipe: AdamW on the batch's mean NLL, then SGD on ``pi_i KL(p || q)``.

    One learning rate for LoRA and variational parameters, AdamW eps 1e-6,
    ``int(ratio T)`` warm-up steps with the AdamW factor one step ahead
    (:func:`reference_lr_factor`), BLoB's raw cyclic weight, one posterior
    sample per step, a mean-field guide (closed-form reverse KL).
    """

    name = "reference"
    default_kl_schedule = "cyclic"
    default_adam_eps = 1e-6
    elbo_scaled = False

    def default_var_lr(self, lr: float) -> float:
        """One AdamW learning rate for LoRA and variational parameters alike."""
        return lr

    def warmup_steps(self, total: int, ratio: float) -> int:
        """The official code's ``int(ratio x total)`` (truncated, not rounded)."""
        return reference_warmup_steps(total, ratio)

    def check_settings(self, *, kl_schedule: str | None, num_particles: int) -> None:
        if kl_schedule not in (None, "cyclic"):
            raise ScalaBLError(
                f"objective='reference' uses BLoB's cyclic KL weight only (got kl_schedule="
                f"{kl_schedule!r}); drop kl_schedule or use objective='elbo'"
            )
        if num_particles > 1:
            raise ScalaBLError(
                f"objective='reference' draws one posterior sample per step, so num_particles="
                f"{num_particles} would be ignored; use num_particles=1 or objective='elbo'"
            )

    def check_family(self, family: str) -> None:
        if family not in MEAN_FIELD_FAMILIES:
            raise ScalaBLError(
                "objective='reference' reproduces the official mean-field recipe; "
                "use guide='log_mean_field' (or 'mean_field'), or objective='elbo'"
            )

    def loss_module(
        self, model: ScalaBLModel, guide: AutoGuide, family: str, num_particles: int
    ) -> torch.nn.Module:
        return MeanNLL(model, guide)

    def batch_loss(
        self, module: torch.nn.Module, batch: TaskBatch, kl_weight: float, num_data: int
    ) -> torch.Tensor:
        return module(batch)  # the mean NLL: the KL has its own step

    def grad_scale(self, num_data: int) -> float:
        return 1.0  # already a mean

    def scheduler(self, optimizer: torch.optim.Optimizer, warmup: int, total: int):
        # scheduler step k sets the factor of step k + 1 (the official AdamW runs one ahead)
        factor = functools.partial(_official_factor, warmup=warmup, total=total)
        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

    def kl_optimizer(self, variational_params: list, lr: float) -> torch.optim.Optimizer | None:
        return torch.optim.SGD(variational_params, lr=lr)

    def kl_before_update(self, model: ScalaBLModel, guide: AutoGuide) -> torch.Tensor | None:
        return None

    def finish_step(self, step: StepTerms) -> tuple[float, float]:
        """The SGD step on ``w KL(p || q)`` at ``reference_kl_lr x (t - 1) / WU ...``."""
        opt = step.kl_optimizer
        assert opt is not None
        for group in opt.param_groups:
            group["lr"] = step.kl_lr
        opt.zero_grad(set_to_none=True)
        kl = step.kl_weight * reverse_kl(step.model, step.guide)
        kl.backward()
        opt.step()
        kl_value = float(kl.detach())
        return step.nll + kl_value, kl_value


@dataclass
class StepTerms:
    """What one step computed, handed to :meth:`ELBOObjective.finish_step`."""

    model: ScalaBLModel
    guide: AutoGuide
    kl_weight: float
    mean_loss: float  # the loss averaged over the accumulated micro-batches
    nll: float  # mean negative log-likelihood per example
    num_data: int
    exact_kl: torch.Tensor | None
    kl_optimizer: torch.optim.Optimizer | None
    kl_lr: float  # the KL step's learning rate now (reference objective)


def _official_factor(k: int, *, warmup: int, total: int) -> float:
    """LambdaLR factor after ``k`` scheduler steps: the official factor of step ``k + 1``."""
    return reference_lr_factor(k + 1, warmup, total)


_OBJECTIVES: dict[str, ELBOObjective] = {o.name: o for o in (ELBOObjective(), ReferenceObjective())}
#: The objectives' names (``TrainConfig.objective``).
OBJECTIVES = tuple(_OBJECTIVES)


def get_objective(name: str) -> ELBOObjective:
    """The objective object of a name (a one-line error naming the known ones)."""
    if name not in _OBJECTIVES:
        raise ScalaBLError(
            f"unknown objective {name!r}; use {' or '.join(repr(n) for n in OBJECTIVES)}"
        )
    return _OBJECTIVES[name]


__all__ = [
    "ELBOObjective",
    "ReferenceObjective",
    "StepTerms",
    "get_objective",
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
