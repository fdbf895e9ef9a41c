"""``scalabl train``'s options as one :class:`TrainSettings`, and their cross-checks.

:func:`_train_settings` takes the options typed, else (``--resume``) the
checkpoint's, else the defaults; the ``_check_*`` functions refuse, before
anything is loaded, a combination that is contradictory, ignored or a no-op.
Imports no torch (the command's parser and checks stay fast); the run itself:
:mod:`scalabl_pyro.cli.train`.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from scalabl_pyro.cli.options import (
    MEAN_FIELD_GUIDES,
    STEP_SEED_FACTOR,
    flag_list,
    given,
    them,
)
from scalabl_pyro.errors import ScalaBLError
from scalabl_pyro.methods import get_method, get_recipe


def _targets(text: str) -> tuple[str, ...]:
    names = [t.strip() for t in text.split(",")]
    if not all(names):
        raise ScalaBLError(
            f"--targets {text!r} has an empty module name; write e.g. --targets q_proj,v_proj"
        )
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ScalaBLError(f"--targets names {', '.join(dup)} twice; list each module once")
    return tuple(names)


def _check_resume_flags(args: argparse.Namespace) -> None:
    """``--resume`` keeps the saved model: refuse model flags (training ones: ``resume.py``)."""
    fixed = given(
        args,
        "model",
        "task_format",
        "normalization",
        "method",
        "guide",
        "targets",
        "rank",
        "alpha",
        "prior_scale",
        "init_scale",
        "ensemble_size",
        "dropout",
        "recipe",
        "quantization",
    )
    fixed = [f.replace("--task-format", "--format") for f in fixed]
    if fixed:
        raise ScalaBLError(
            f"--resume continues the model saved in --output, so {flag_list(fixed)} would be "
            f"ignored; drop {them(fixed)}, or train a new model into another --output"
        )


@dataclass
class TrainSettings:
    """Every option of ``scalabl train`` after defaults (and, with --resume, the checkpoint)."""

    model: str = "smollm2-135m"
    task_format: str = "choice"
    normalization: str = "mean"
    method: str = "scalabl"
    guide: str = "mean_field"
    ensemble_size: int = 5
    dropout: float | None = None
    targets: tuple[str, ...] = ("q_proj", "v_proj")
    rank: int = 8
    alpha: float = 16.0
    prior_scale: float = 1.0
    init_scale: float | None = None  # None: the method's default (ScalaBLConfig.initial_scale)
    steps: int = 200
    batch_size: int = 4
    lr: float = 1e-3
    var_lr: float | None = None
    grad_accum: int = 1
    max_grad_norm: float | None = None
    particles: int = 1
    objective: str = "elbo"
    kl_schedule: str | None = None  # None: the objective's own (constant; reference: cyclic)
    kl_weight: float = 1.0
    kl_warmup_steps: int = 0
    checkpoint_every: int = 0
    seed: int = 0
    num_classes: int | None = None  # letter format of a resumed checkpoint
    recipe: str | None = None  # "official": ScalaBLConfig.official + TrainConfig.official


_SAVED_TRAIN_KEYS = {  # TrainSettings field -> TrainConfig field saved in a checkpoint
    "lr": "lr",
    "var_lr": "var_lr",
    "steps": "steps",
    "batch_size": "batch_size",
    "grad_accum": "grad_accum",
    "max_grad_norm": "max_grad_norm",
    "particles": "num_particles",
    "objective": "objective",
    "kl_schedule": "kl_schedule",
    "kl_weight": "kl_weight",
    "kl_warmup_steps": "kl_warmup_steps",
    "checkpoint_every": "checkpoint_every",
    "seed": "seed",
}


def _train_settings(args: argparse.Namespace, meta: dict | None) -> TrainSettings:
    """The options typed, else (with --resume) the checkpoint's, else the defaults."""
    s = TrainSettings()
    if meta is not None:
        cfg = meta.get("config", {})
        s.model = cfg.get("base_model", s.model)
        s.task_format = cfg.get("task_format", s.task_format)
        s.guide = cfg.get("guide", s.guide)
        s.method = cfg.get("method", s.method)
        s.num_classes = cfg.get("num_classes")
        saved = meta.get("train_config") or {}
        for ours, theirs in _SAVED_TRAIN_KEYS.items():
            if saved.get(theirs) is not None:
                setattr(s, ours, saved[theirs])
    for name in vars(s):
        value = getattr(args, name, None)
        if value is not None and name != "targets":
            setattr(s, name, value)
    if args.targets is not None:
        s.targets = _targets(args.targets)
    if meta is None and args.guide is None and s.objective == "reference":
        s.guide = "log_mean_field"  # the official code's parameters (log mu, log sigma)
    if meta is None and s.recipe is not None:  # what ScalaBLConfig/TrainConfig.official set
        recipe = get_recipe(s.recipe)
        s.guide = recipe.model["guide"]
        s.task_format = recipe.model["task_format"]
        s.objective = recipe.objective
        s.alpha = 2.0 * s.rank
        if args.targets is None:
            s.targets = recipe.target_modules
        if args.lr is None:  # the official code's rate (TrainConfig.official's default)
            s.lr = recipe.lr
    return s


#: Flags whose value --recipe official sets itself (dest names).
_RECIPE_SETS = (
    "method",
    "guide",
    "objective",
    "task_format",
    "normalization",
    "alpha",
    "prior_scale",
    "init_scale",
    "dropout",
    "kl_schedule",
    "kl_weight",
    "kl_warmup_steps",
    "particles",
)


def _check_recipe(s: TrainSettings, args: argparse.Namespace) -> None:
    """--recipe official sets these options itself: a typed one would contradict or be ignored."""
    if s.recipe is None or args.resume:
        return
    typed = [f.replace("--task-format", "--format") for f in given(args, *_RECIPE_SETS)]
    if typed:
        raise ScalaBLError(
            f"--recipe official sets {flag_list(typed)} itself (docs/method.md); drop "
            f"{them(typed)}, or drop --recipe and set each option yourself"
        )
    if "lm_head" not in s.targets:
        raise ScalaBLError(
            "--recipe official adapts lm_head, as the official code does; add lm_head to "
            "--targets, or drop --recipe"
        )


def _check_method_settings(s: TrainSettings, args: argparse.Namespace) -> None:
    """Options that the chosen --method does not use."""
    if args.resume:
        return
    ignored = []
    method = get_method(s.method)
    if method.implied_guide is not None and args.guide is not None:
        ignored.append("--guide")
    if not method.uses_prior_scale and args.prior_scale is not None:
        ignored.append("--prior-scale")
    if not method.uses_ensemble_size and args.ensemble_size is not None:
        ignored.append("--ensemble-size")
    if ignored:
        raise ScalaBLError(
            f"--method {s.method} does not use {flag_list(ignored)}; drop {them(ignored)} "
            "(--guide and --prior-scale shape --method scalabl, --ensemble-size --method ensemble)"
        )
    if s.objective not in method.objectives:
        raise ScalaBLError(
            f"--objective {s.objective} is the official ScalaBL recipe; --method {s.method} "
            "trains with --objective elbo, so drop --objective"
        )
    if not method.adapts_lm_head and "lm_head" in s.targets:
        raise ScalaBLError(
            f"--method {s.method} does not adapt lm_head; drop lm_head from --targets"
        )


def _check_train_settings(s: TrainSettings, args: argparse.Namespace) -> None:
    """Combinations that are contradictory, ignored or no-ops."""
    _check_recipe(s, args)
    _check_method_settings(s, args)
    method = get_method(s.method)
    if method.point_s:
        s.guide = method.resolve_guide("mean_field")  # what ScalaBLConfig sets: mle
    point_mass = method.trains_a_point(s.guide)
    if s.guide == "mle":
        extra = given(args, "prior_scale", "kl_warmup_steps", "kl_weight")
        if args.kl_schedule is not None:
            extra.append("--kl-schedule")
        if extra:
            raise ScalaBLError(
                f"--guide mle is plain LoRA with no prior and no KL term, so {flag_list(extra)} "
                f"would be ignored; drop {them(extra)}, or pick a Bayesian --guide such as "
                "mean_field"
            )
    what = method.label(s.guide, flags=True)
    if point_mass and args.init_scale is not None and not args.resume:
        raise ScalaBLError(
            f"{what} starts from a point, not a Gaussian, so --init-scale would be ignored; "
            "drop --init-scale or pick a Gaussian --guide such as mean_field"
        )
    if point_mass and s.particles > 1:
        raise ScalaBLError(
            f"{what} is a point mass, so its --particles {s.particles} samples "
            "would all be the same; drop --particles"
        )
    schedule = s.kl_schedule or ("cyclic" if s.objective == "reference" else "constant")
    if s.objective == "reference":
        if s.guide not in MEAN_FIELD_GUIDES:
            raise ScalaBLError(
                "--objective reference reproduces the official mean-field recipe; use "
                f"--guide log_mean_field or mean_field (not {s.guide}), or --objective elbo"
            )
        if s.particles > 1:
            raise ScalaBLError(
                "--objective reference draws one posterior sample per step, so --particles "
                f"{s.particles} would be ignored; drop --particles or use --objective elbo"
            )
        if schedule != "cyclic":
            raise ScalaBLError(
                f"--objective reference uses BLoB's cyclic KL weight only, so --kl-schedule "
                f"{schedule} cannot apply; drop --kl-schedule or use --objective elbo"
            )
    if schedule == "linear" and s.kl_warmup_steps < 1:
        raise ScalaBLError(
            "--kl-schedule linear without --kl-warmup-steps is the constant schedule; "
            "pass --kl-warmup-steps N (N >= 1) or drop --kl-schedule"
        )
    if schedule != "linear" and s.kl_warmup_steps > 0:
        raise ScalaBLError(
            f"--kl-warmup-steps only applies to --kl-schedule linear (this run uses "
            f"{schedule}); add --kl-schedule linear or drop --kl-warmup-steps"
        )
    if s.checkpoint_every and s.checkpoint_every >= s.steps:
        raise ScalaBLError(
            f"--checkpoint-every {s.checkpoint_every} is not below --steps {s.steps}, so it "
            "saves nothing beyond the final checkpoint (always written); lower it or drop it"
        )
    if s.seed * STEP_SEED_FACTOR + s.steps >= 2**32:
        raise ScalaBLError(
            f"--seed {s.seed} with --steps {s.steps} overflows the per-step seeds "
            f"(seed x {STEP_SEED_FACTOR:,} + step must stay below 2^32); use a smaller --seed"
        )
    if "lm_head" in s.targets and s.task_format != "letter":
        raise ScalaBLError(
            "--targets lm_head adapts the answer-token rows, which only the letter format "
            "scores; add --format letter or drop lm_head from --targets"
        )
    if args.normalization is not None and s.task_format != "choice":
        raise ScalaBLError(
            "--normalization sets how answer texts are scored, which only the choice format "
            "does; drop --normalization or use --format choice"
        )
