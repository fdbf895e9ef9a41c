"""The training settings: :class:`TrainConfig`, and the official recipe as one call.

Optimiser, schedule, batching, KL weighting, precision and checkpointing
settings of one run, checked when built; fields left at ``None`` take the
objective's default (``program/objectives.py``). The loop that uses them:
:mod:`scalabl_pyro.inference.train`, which re-exports :class:`TrainConfig`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from scalabl_pyro.errors import ScalaBLError
from scalabl_pyro.program.objectives import OBJECTIVES, ELBOObjective, get_objective


@dataclass
class TrainConfig:
    """Optimisation settings (paper defaults where they apply).

    The defaults are the recipe behind the measured results (docs/calibration.md,
    docs/guides.md): ``lr`` 1e-3 for the LoRA factors and 10 x that for the
    variational parameters, 6 % warm-up then linear decay, batches of 4. The
    paper trains 7B models for 5,000 steps at ``lr`` 1e-4 (:meth:`official`);
    for a run that long, or a model that large, start from the paper's value.
    Fields left at ``None`` take the objective's default:

    ==================  =======================  ==========================
    field               ``elbo``                 ``reference`` (official)
    ==================  =======================  ==========================
    ``var_lr``          10 x ``lr``              ``lr`` (one AdamW rate)
    ``adam_eps``        1e-8                     1e-6
    ``kl_schedule``     ``constant``             ``cyclic`` (its only one)
    ==================  =======================  ==========================

    ``max_grad_norm`` is in per-example units (the norm of the gradient of
    the loss divided by the data-set size N); ``None`` (default) is no clipping.

    The warm-up lasts ``round(warmup_ratio x steps)`` steps for the ELBO and
    ``int(warmup_ratio x steps)`` for the reference objective (the official
    code's), whose AdamW factor also runs one step ahead (``train.py``).

    ``partial_last_batch=True`` visits the data epoch by epoch, each epoch
    ending with its partial batch of ``N mod batch_size`` examples (a
    ``DataLoader`` with ``drop_last=False``, as the official code); the default
    lets batches run across epoch boundaries, so every batch is full.

    :meth:`official` gives the official code's training recipe.
    """

    steps: int = 200
    batch_size: int = 4
    lr: float = 1e-3
    var_lr: float | None = None
    weight_decay: float = 0.0
    warmup_ratio: float = 0.06
    grad_accum: int = 1
    max_grad_norm: float | None = None
    adam_eps: float | None = None
    num_particles: int = 1
    objective: str = "elbo"  # "elbo" | "reference"
    kl_schedule: str | None = None  # "constant" | "linear" | "cyclic"
    kl_weight: float = 1.0
    kl_warmup_steps: int = 0
    reference_kl_lr: float = 0.2
    seed: int = 0
    bf16: bool | None = None  # None: on for CUDA, off on CPU
    gradient_checkpointing: bool = False
    eval_every: int = 0
    checkpoint_every: int = 0
    progress: bool = True
    partial_last_batch: bool = False

    #: What :meth:`official` sets (its fields may not be overridden with other values).
    OFFICIAL: ClassVar[dict[str, Any]] = {
        "objective": "reference",
        "partial_last_batch": True,
        "bf16": False,
    }

    #: The official code's learning rate: the recipe's default (``lr=...`` may change it;
    #: ``methods/official.py`` states it too, for the command line, which imports no torch).
    OFFICIAL_LR: ClassVar[float] = 1e-4

    @classmethod
    def official(cls, **overrides: Any) -> TrainConfig:
        """The official ScalaBL code's training recipe (``docs/method.md``).

        ``objective="reference"`` (AdamW lr 1e-4, eps 1e-6, one rate, no
        clipping, on the mean NLL; SGD at ``0.2 x`` the schedule's factor on
        BLoB's cyclic ``pi_i x KL(p || q)``; ``int(0.06 T)`` warm-up steps),
        each epoch's partial last batch kept, and float32 for the LoRA path
        (``bf16=False``: no autocast, the adapters and guide stay float32
        over a bf16 base). Other fields (``steps``, ``batch_size``, ``lr``,
        ``seed``, ...) may be set; one that contradicts the recipe is refused.
        Pair it with :meth:`ScalaBLConfig.official`.
        """
        clash = sorted(k for k, v in overrides.items() if cls.OFFICIAL.get(k, v) != v)
        if clash:
            sets = ", ".join(f"{k}={cls.OFFICIAL[k]!r}" for k in clash)
            raise ScalaBLError(
                f"TrainConfig.official() sets {sets} itself; drop {', '.join(clash)} "
                "or build TrainConfig(...) directly"
            )
        return cls(**{"lr": cls.OFFICIAL_LR, **cls.OFFICIAL, **overrides})

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "grad_accum", "num_particles"):
            if getattr(self, name) < 1:
                raise ScalaBLError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.objective not in OBJECTIVES:
            get_objective(self.objective)  # the one-line error naming the objectives
        if not self.lr > 0:
            raise ScalaBLError(f"lr must be > 0, got {self.lr}")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ScalaBLError(
                f"max_grad_norm must be > 0 (per-example units) or None, got {self.max_grad_norm}"
            )
        self.objective_rules.check_settings(
            kl_schedule=self.kl_schedule, num_particles=self.num_particles
        )

    @property
    def objective_rules(self) -> ELBOObjective:
        """The objective object (``program.objectives.get_objective``) that ``objective`` names."""
        return get_objective(self.objective)

    @property
    def warmup_steps(self) -> int:
        """Warm-up steps: ``int(ratio x steps)`` (reference, the official code), else rounded."""
        return self.objective_rules.warmup_steps(self.steps, self.warmup_ratio)

    @property
    def resolved_var_lr(self) -> float:
        """Learning rate of the variational parameters (objective default if unset)."""
        if self.var_lr is not None:
            return self.var_lr
        return self.objective_rules.default_var_lr(self.lr)

    @property
    def resolved_adam_eps(self) -> float:
        """AdamW's eps (1e-6 for the reference objective, 1e-8 otherwise, unless set)."""
        if self.adam_eps is not None:
            return self.adam_eps
        return self.objective_rules.default_adam_eps

    @property
    def resolved_kl_schedule(self) -> str:
        """The KL schedule (cyclic for the reference objective, constant otherwise, unless set)."""
        if self.kl_schedule is not None:
            return self.kl_schedule
        return self.objective_rules.default_kl_schedule

    def to_dict(self) -> dict:
        """JSON-serialisable settings."""
        return asdict(self)
