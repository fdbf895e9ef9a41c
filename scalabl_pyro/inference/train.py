"""The training loop: a plain torch optimizer over Pyro's ELBO module.

Under ``module_local_params=True`` (entered as a context, never set for the
process) the guide's variational parameters are ordinary ``nn.Parameter``s,
so ``loss_fn = elbo(model, guide)`` is an ``nn.Module`` and any torch
optimizer, scheduler, AMP context or distributed wrapper works. Two parameter
groups: the LoRA factors (``lr``) and the variational parameters (``var_lr``).

Gradient clipping is in **per-example units**: the ELBO is at data-set scale
(``N x`` mean NLL + KL), so its gradient norm grows with N; ``max_grad_norm``
bounds the norm of the gradient of ``loss / N`` (off by default, as in the
paper). Every step records that norm, so a threshold can be chosen from data.

The reference objective follows the official code: one AdamW (lr 1e-4, eps
1e-6, one learning rate for LoRA and variational parameters, no clipping) on
the batch's mean NLL, then an SGD step on ``pi_i KL(p || q)`` at learning rate
``reference_kl_lr (0.2) x`` the warm-up/decay factor. Its schedule is the
official one: ``int(0.06 T)`` warm-up steps; at step ``t`` AdamW runs at
``lr x t / WU`` (then ``(T - t) / (T - WU)``), the KL step at ``(t - 1) / WU``
(see ``objectives.reference_lr_factor``). The ELBO keeps
``get_linear_schedule_with_warmup`` with ``round(0.06 T)`` warm-up steps.
:meth:`TrainConfig.official` is the whole official recipe in one call
(the settings: ``train_config.py``, re-exported here).

Several processes: under an initialised ``torch.distributed`` group (e.g.
``accelerate launch``) the loss module is wrapped in DDP, each rank takes its
block of every global batch and rank 0 alone shows progress; the step is
the single-process step with a ``world_size`` times larger batch (see
``distributed.py``). ``batch_size`` is then the per-process batch.

Reproducibility and exact resume: the data order of each epoch is a
permutation drawn from ``seed + epoch``, and every step runs under a local
seed derived from ``(seed, step)`` (global generators are restored after);
so the state to resume is the parameters, the optimizer and scheduler states
and the step counter.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from pyro.infer.autoguide import AutoGuide
from tqdm.auto import tqdm

from scalabl_pyro.data.examples import MCDataset
from scalabl_pyro.errors import ScalaBLError
from scalabl_pyro.inference.distributed import DistributedContext, no_sync
from scalabl_pyro.inference.train_config import TrainConfig  # also imported from here
from scalabl_pyro.program.formats import TaskFormat
from scalabl_pyro.program.model import ScalaBLModel, pyro_settings
from scalabl_pyro.program.objectives import (
    KLSchedule,
    LikelihoodMonitor,
    StepTerms,
    reference_kl_lr_factor,
)
from scalabl_pyro.utils.rng import model_devices, seeded

log = logging.getLogger(__name__)


class NonFiniteError(ScalaBLError):
    """Training diverged: a non-finite loss or parameter, or a distribution Pyro refused.

    ``step`` is the step that failed, ``loss`` the last loss known (NaN if
    none). Raised before that step's update is checkpointed, so what is on
    disk is from an earlier, finite step.
    """

    def __init__(self, message: str, step: int, loss: float) -> None:
        super().__init__(message)
        self.step, self.loss = step, loss


def set_cpu_threads(threads: int | None) -> int:
    """Use ``threads`` intra-op CPU threads in this process (None: keep torch's); returns the count.

    On CPU, multi-threaded training is not bitwise reproducible run to run (and
    two jobs sharing cores each with all of them can run many times slower);
    one thread is both exact and robust under contention: ``docs/reliability.md``.
    """
    if threads is not None:
        if threads < 1:
            raise ScalaBLError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(int(threads))
    return torch.get_num_threads()


_INVALID = re.compile(
    r"Expected parameter (\w+) .*? of distribution (\w+)\(.*?constraint (.*?), "
    r"but found invalid values"
)


@dataclass
class StepRecord:
    """The ELBO terms of one optimizer step (per-example NLL, data-scaled KL)."""

    step: int
    loss: float  # negative ELBO (reference: NLL + weighted reverse KL)
    nll: float  # mean negative log-likelihood per training example
    kl: float  # KL term as optimised (weighted)
    kl_weight: float
    lr: float
    grad_norm: float = float("nan")  # per-example units, before clipping
    clipped: bool = False


@dataclass
class TrainHistory:
    """What happened during training: per-step terms and periodic validation."""

    steps: list[StepRecord] = field(default_factory=list)
    validation: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        """JSON-serialisable history."""
        return {"steps": [asdict(s) for s in self.steps], "validation": list(self.validation)}

    @classmethod
    def from_dict(cls, d: dict) -> TrainHistory:
        """Inverse of :meth:`to_dict`."""
        return cls([StepRecord(**s) for s in d.get("steps", [])], list(d.get("validation", [])))


def _epoch_order(num_data: int, seed: int, epoch: int) -> list[int]:
    gen = torch.Generator().manual_seed(seed * 7919 + epoch)
    return torch.randperm(num_data, generator=gen).tolist()


def batch_indices(
    num_data: int, batch_size: int, seed: int, micro: int, *, partial_last_batch: bool = False
) -> list[int]:
    """Indices of micro-batch number ``micro`` in the deterministic data stream.

    Epoch ``e`` visits the data in the order of a permutation seeded by
    ``seed * 7919 + e``; batches run across epoch boundaries, or with
    ``partial_last_batch`` each epoch is ``ceil(N / B)`` batches, its last one
    holding the remaining ``N mod B`` examples (``drop_last=False``).
    """
    if partial_last_batch:
        epoch, k = divmod(micro, -(-num_data // batch_size))
        return _epoch_order(num_data, seed, epoch)[k * batch_size : (k + 1) * batch_size]
    start = micro * batch_size
    out: list[int] = []
    while len(out) < batch_size:
        epoch, pos = divmod(start + len(out), num_data)
        take = min(batch_size - len(out), num_data - pos)
        out += _epoch_order(num_data, seed, epoch)[pos : pos + take]
    return out


class Trainer:
    """Optimises one ScalaBL model + guide on one training set."""

    def __init__(
        self,
        model: ScalaBLModel,
        guide: AutoGuide,
        family: str,
        fmt: TaskFormat,
        train_data: MCDataset,
        config: TrainConfig,
        device: torch.device,
        distributed: DistributedContext | None = None,
    ) -> None:
        """``distributed`` defaults to the initialised process group, if any (DDP)."""
        if len(train_data) == 0:
            raise ScalaBLError("the training split is empty; pass a split with examples")
        self.objective = config.objective_rules
        self.objective.check_family(family)
        self.model, self.guide, self.family = model, guide, family
        self.fmt, self.data, self.config, self.device = fmt, train_data, config, device
        self.distributed = distributed if distributed is not None else DistributedContext.detect()
        self.world_size = self.distributed.world_size if self.distributed else 1
        if config.partial_last_batch and self.world_size > 1:
            raise ScalaBLError(
                "partial_last_batch keeps a last batch that does not split over "
                f"{self.world_size} processes; set partial_last_batch=False or run one process"
            )
        #: The data plate's size N, passed to the model with every batch (global N on every rank).
        self.num_data = len(train_data)
        self.step_count = 0
        self.history = TrainHistory()
        self.bf16 = config.bf16 if config.bf16 is not None else device.type == "cuda"
        self._devices = model_devices(model.lm)
        if config.gradient_checkpointing:
            lm = model.lm
            lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            lm.enable_input_require_grads()
        with pyro_settings(), seeded(config.seed, self._devices):
            self.loss_fn = self.objective.loss_module(model, guide, family, config.num_particles)
            with torch.no_grad():
                guide()  # create the lazily built variational parameters
        self.guide.to(device)
        if self.distributed is not None:  # parameters exist: now wrap (Pyro's DDP recipe)
            self.loss_fn = self.distributed.wrap(self.loss_fn, device)
        self._build_optimizers()
        self.kl_schedule = KLSchedule(
            config.resolved_kl_schedule,
            config.kl_weight,
            config.kl_warmup_steps,
            num_data=len(train_data),
            batch_size=config.batch_size * config.grad_accum * self.world_size,
        )

    def _build_optimizers(self) -> None:
        """AdamW over two groups (LoRA factors, variational parameters), the objective's rest."""
        config = self.config
        lora = self.model.subspace.lora_parameters()
        lora_ids = {id(p) for p in lora}
        self.lora_params = lora
        self.variational_params = [p for p in self.guide.parameters() if id(p) not in lora_ids]
        self.warmup_steps = config.warmup_steps
        groups = [{"params": lora, "lr": config.lr, "weight_decay": config.weight_decay}]
        if self.variational_params:
            groups.append(
                {
                    "params": self.variational_params,
                    "lr": config.resolved_var_lr,
                    "weight_decay": 0.0,
                }
            )
        self.optimizer = torch.optim.AdamW(groups, eps=config.resolved_adam_eps)
        self.kl_optimizer = self.objective.kl_optimizer(
            self.variational_params, config.reference_kl_lr
        )
        self.scheduler = self.objective.scheduler(self.optimizer, self.warmup_steps, config.steps)

    # ------------------------------------------------------------------- data
    def _batch_indices(self, micro: int) -> list[int]:
        """This process's indices of micro-batch ``micro`` (its block of the global batch)."""
        size = self.config.batch_size * self.world_size
        idx = batch_indices(
            len(self.data),
            size,
            self.config.seed,
            micro,
            partial_last_batch=self.config.partial_last_batch,
        )
        return self.distributed.shard(idx) if self.distributed is not None else idx

    def _batch(self, micro: int):
        idx = self._batch_indices(micro)
        return self.fmt.encode([self.data[i] for i in idx], indices=idx).to(self.device)

    def _autocast(self):
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    @property
    def rank(self) -> int:
        """This process's rank (0 without a process group)."""
        return self.distributed.rank if self.distributed is not None else 0

    def schedule_factor(self) -> float:
        """The warm-up/decay factor of the coming step's AdamW update (lr now / base lr)."""
        return self.scheduler.get_last_lr()[0] / self.config.lr

    def kl_lr_factor(self) -> float:
        """The factor of the coming step's KL step (reference objective): ``(t - 1) / WU``, ..."""
        return reference_kl_lr_factor(self.step_count + 1, self.warmup_steps, self.config.steps)

    # ------------------------------------------------------------------- step
    def step(self) -> StepRecord:
        """One optimizer step (with gradient accumulation); returns its ELBO terms.

        Raises :class:`NonFiniteError` on a non-finite loss or parameter, and
        also when Pyro's validation refuses a distribution built from the
        parameters (a scale that underflowed to 0, NaN logits): the same
        divergence, seen one step later.
        """
        t = self.step_count + 1
        try:
            with pyro_settings(), seeded((self.config.seed * 1_000_003 + t) % 2**32, self._devices):
                rec = self._step(t)
        except ValueError as e:
            match = _INVALID.search(str(e))
            if isinstance(e, ScalaBLError) or match is None:
                raise
            param, dist, constraint = match.groups()
            last = self.history.steps[-1].loss if self.history.steps else float("nan")
            raise self._diverged(
                t,
                f"Pyro found invalid values in the {param} of a {dist} (it must satisfy "
                f"{constraint}), computed from the parameters of the update before; the last "
                f"loss was {last:.4g}",
                last,
            ) from e
        self.step_count = t
        self.history.steps.append(rec)
        return rec

    def _step(self, t: int) -> StepRecord:
        cfg = self.config
        n = self.num_data
        self.model.train()
        w = self.kl_schedule(t, elbo_scaled=self.objective.elbo_scaled)
        lr_now = self.scheduler.get_last_lr()[0]
        loss_sum = 0.0
        monitor = LikelihoodMonitor()
        self.optimizer.zero_grad(set_to_none=True)
        for k in range(cfg.grad_accum):
            batch = self._batch(self.step_count * cfg.grad_accum + k)
            last = k == cfg.grad_accum - 1
            with monitor, self.model.subspace.retained(), no_sync(self.loss_fn, skip=not last):
                with self._autocast():
                    loss = self.objective.batch_loss(self.loss_fn, batch, w, n)
                (loss / cfg.grad_accum).backward()
            loss_sum += float(loss.detach())
        nll = -monitor.mean_log_likelihood
        if self.distributed is not None:  # record the global batch's terms, not this rank's
            loss_sum, nll = self.distributed.mean(loss_sum, nll)
        self._check_finite(loss_sum / cfg.grad_accum, "loss")
        # the closed-form KL of the parameters this step's loss was computed with
        exact = self.objective.kl_before_update(self.model, self.guide)
        grad_norm, clipped = self._clip(self.objective.grad_scale(n))  # per-example units
        self.optimizer.step()
        terms = StepTerms(
            self.model,
            self.guide,
            kl_weight=w,
            mean_loss=loss_sum / cfg.grad_accum,
            nll=nll,
            num_data=n,
            exact_kl=exact,
            kl_optimizer=self.kl_optimizer,
            kl_lr=cfg.reference_kl_lr * self.kl_lr_factor(),
        )
        loss_value, kl_value = self.objective.finish_step(terms)
        self._check_parameters_finite(t, loss_value)
        self.scheduler.step()
        return StepRecord(t, loss_value, nll, kl_value, w, lr_now, grad_norm, clipped)

    def _clip(self, scale: float) -> tuple[float, bool]:
        """Norm of the gradient in per-example units; clip it at ``max_grad_norm`` if set."""
        params = [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
        if not params:
            return 0.0, False
        limit = self.config.max_grad_norm
        max_norm = float("inf") if limit is None else limit * scale
        norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm)) / scale
        return norm, limit is not None and norm > limit

    def _check_finite(self, loss: float, what: str) -> None:
        if not math.isfinite(loss):
            step = self.step_count + 1
            raise self._diverged(step, f"the {what} became {loss}", loss)

    def _check_parameters_finite(self, step: int, loss: float) -> None:
        """Refuse to go on (and so to save) once an update made a parameter non-finite."""
        for p in (*self.lora_params, *self.variational_params):
            if not bool(torch.isfinite(p).all()):
                raise self._diverged(
                    step, f"a parameter became non-finite in its update (loss {loss:.4g})", loss
                )

    def _diverged(self, step: int, what: str, loss: float) -> NonFiniteError:
        """The one-line message of a diverged run: step, loss, likely cause, the fix."""
        cfg = self.config
        setting = f"lr {cfg.lr:g}, var_lr {cfg.resolved_var_lr:g}"
        fixes = ["lower lr and var_lr (--lr, --var-lr)"]
        if cfg.max_grad_norm is None:
            setting += ", no gradient clipping"
            fixes.append("set max_grad_norm (--max-grad-norm)")
        if self.bf16:
            setting += ", bf16"
            fixes.append("train in float32 (bf16=False)")
        fix = ", ".join(fixes[:-1]) + " or " + fixes[-1] if len(fixes) > 1 else fixes[0]
        return NonFiniteError(
            f"training diverged at step {step}: {what}; likely cause: updates too large for "
            f"this model ({setting}); {fix}",
            step,
            loss,
        )

    # -------------------------------------------------------------------- run
    def run(
        self,
        evaluate: Callable[[int], dict] | None = None,
        checkpoint: Callable[[int], None] | None = None,
    ) -> TrainHistory:
        """Train until ``config.steps``; validate and checkpoint periodically."""
        cfg = self.config
        bar = tqdm(
            total=cfg.steps,
            initial=self.step_count,
            disable=not cfg.progress or (self.distributed is not None and self.rank != 0),
            desc=f"train {self.family}",
            dynamic_ncols=True,
        )
        try:
            while self.step_count < cfg.steps:
                rec = self.step()
                bar.update(1)
                bar.set_postfix(loss=f"{rec.loss:.4g}", nll=f"{rec.nll:.3f}", kl=f"{rec.kl:.3g}")
                if evaluate is not None and cfg.eval_every and rec.step % cfg.eval_every == 0:
                    result = {"step": rec.step, **evaluate(rec.step)}
                    self.history.validation.append(result)
                    log.info("validation at step %d: %s", rec.step, result)
                if (
                    checkpoint is not None
                    and cfg.checkpoint_every
                    and (rec.step % cfg.checkpoint_every == 0)
                ):
                    checkpoint(rec.step)
        finally:
            bar.close()
        return self.history

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        """Optimizer/scheduler states, step counter and history (parameters live elsewhere)."""
        state = {
            "step": self.step_count,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
        }
        if self.kl_optimizer is not None:
            state["kl_optimizer"] = self.kl_optimizer.state_dict()
        return state

    def load_state_dict(self, state: dict, history: TrainHistory | None = None) -> None:
        """Restore what :meth:`state_dict` saved, for exact resume.

        The coming step's learning rate is then computed afresh from this
        trainer's schedule (``config.steps`` may be a larger total than the
        saved run's): restored as saved, a finished run's last rate (0 at the
        end of the decay) would be used for its first extra step.
        """
        self.step_count = int(state["step"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        sched = self.scheduler  # LambdaLR: its own formula, as step() computes it
        pairs = zip(sched.lr_lambdas, sched.base_lrs, strict=True)
        lrs = [base * f(sched.last_epoch) for f, base in pairs]
        for group, lr in zip(self.optimizer.param_groups, lrs, strict=True):
            group["lr"] = lr
        sched._last_lr = lrs
        if self.kl_optimizer is not None and "kl_optimizer" in state:
            self.kl_optimizer.load_state_dict(state["kl_optimizer"])
        if history is not None:
            self.history = history
