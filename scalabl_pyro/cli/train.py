"""``scalabl train``: fine-tune a model with ScalaBL or a baseline, or resume a run.

The same command trains on several processes (DDP) when a launcher starts it::

    accelerate launch --multi_gpu --num_processes 2 -m scalabl_pyro.cli train \\
        --data arc_easy --steps 200 --batch-size 4 --output runs/ddp

``--batch-size`` is then per process (the global batch is ``num_processes x`` that).
Each process starts the launcher's process group and takes its own device
(:mod:`scalabl_pyro.cli.launch`); the data shard, the DDP wrap, the plate size, the KL
counted once and the rank-0 checkpoint happen inside ``ScalaBL.fit``
(:mod:`scalabl_pyro.inference.distributed`). On a machine without a GPU the same
command runs the processes on the CPU over gloo.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from scalabl_pyro.cli.checks import (
    check_device,
    check_letter_classes,
    load_data,
    scalabl_class,
)
from scalabl_pyro.cli.launch import is_main_process, process_device
from scalabl_pyro.cli.options import (
    DATA_DEFAULTS,
    GUIDES,
    MEAN_FIELD_GUIDES,
    METHODS,
    NO_PROGRESS,
    NORMALIZATIONS,
    RECIPES,
    STEP_SEED_FACTOR,
    add_data_args,
    add_model_args,
    flag_list,
    given,
    num_option,
    them,
    verbose_flag,
)
from scalabl_pyro.errors import ScalaBLError
from scalabl_pyro.methods import get_method, get_recipe


def register(sub: Any) -> None:
    """Add ``scalabl train`` to the subcommands."""
    p = sub.add_parser(
        "train",
        help="fine-tune a model with ScalaBL (or a baseline guide)",
        description="Fine-tune a model with ScalaBL or a baseline, or resume a run. Several "
        "processes (DDP): accelerate launch --multi_gpu --num_processes K -m scalabl_pyro.cli "
        "train ...; --batch-size is then per process.",
    )
    verbose_flag(p, top=False)
    add_model_args(p)
    add_data_args(p, "train", resumable=True)
    p.add_argument("--output", required=True, help="checkpoint directory (new or empty)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--resume",
        action="store_true",
        help="continue the checkpoint in --output (training options default to its own)",
    )
    mode.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the checkpoint in --output (only a scalabl-pyro checkpoint, "
        "and only if it holds nothing else)",
    )
    p.add_argument(
        "--format",
        dest="task_format",
        default=None,
        choices=("choice", "letter"),
        help="choice scoring (default) or the lettered format",
    )
    p.add_argument(
        "--normalization",
        default=None,
        choices=NORMALIZATIONS,
        help="choice scoring: an answer's log-likelihood per token (mean, the default), "
        "in total (sum) or per UTF-8 byte of its text (byte)",
    )
    p.add_argument(
        "--method",
        default=None,
        choices=METHODS,
        help="scalabl (default) or a baseline (docs/baselines.md)",
    )
    p.add_argument(
        "--guide",
        default=None,
        choices=GUIDES,
        help="guide family of --method scalabl (default mean_field; log_mean_field with "
        "--objective reference)",
    )
    num_option(p, "--ensemble-size", "adapters K of --method ensemble", 5)
    num_option(
        p,
        "--dropout",
        "LoRA dropout p, kept on at test time by mc_dropout",
        "0.1 for mc_dropout, else 0",
    )
    p.add_argument(
        "--targets", default=None, help="comma-separated module names (default q_proj,v_proj)"
    )
    num_option(p, "--rank", "LoRA rank", 8)
    num_option(p, "--alpha", "LoRA alpha", 16.0)
    num_option(p, "--prior-scale", "prior standard deviation, not with --guide mle", 1.0)
    num_option(
        p,
        "--init-scale",
        "initial posterior std of s (docs/calibration.md), not with a point-mass method",
        "0.4; 0.05 for log_mean_field and blob",
    )
    num_option(p, "--steps", "total optimizer steps, with --resume the new total", 200)
    num_option(
        p, "--batch-size", "examples per micro-batch (per process under accelerate launch)", 4
    )
    num_option(p, "--lr", "learning rate of the LoRA factors", 1e-3)
    num_option(
        p,
        "--var-lr",
        "learning rate of the variational parameters",
        "10 x --lr; --lr with --objective reference",
    )
    num_option(p, "--grad-accum", "micro-batches per step", 1)
    num_option(
        p,
        "--max-grad-norm",
        "clip the gradient norm, in per-example units (gradient of loss / N)",
        "off",
    )
    num_option(p, "--particles", "posterior samples per step, not with a point-mass guide", 1)
    p.add_argument(
        "--objective",
        default=None,
        choices=("elbo", "reference"),
        help="elbo (default) or reference, the official code's recipe",
    )
    p.add_argument(
        "--kl-schedule",
        default=None,
        choices=("constant", "linear", "cyclic"),
        help="KL weight schedule (default constant; cyclic with --objective reference)",
    )
    num_option(p, "--kl-warmup-steps", "steps of the warm-up of --kl-schedule linear", 0)
    num_option(
        p,
        "--kl-weight",
        "multiplier of the KL term (1: the proper ELBO; > 1 a tempered, wider posterior, "
        "see docs/calibration.md)",
        1.0,
    )
    num_option(p, "--checkpoint-every", "also save every N steps, 0 only at the end", 0)
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument(
        "--calibrate-on",
        default=None,
        metavar="SPLIT|FILE",
        help="the recommended recipe: after training, fit the BMA's temperature on this "
        "validation split of --data (a file when --data is a local file); evaluate and "
        "predict then use it (docs/calibration.md)",
    )
    num_option(p, "--calibrate-limit", "random subset of --calibrate-on's examples", None)
    p.add_argument(
        "--quantization",
        default=None,
        choices=("4bit", "8bit"),
        help="load the frozen base quantised (QLoRA style; needs scalabl-pyro[quantization])",
    )
    p.add_argument(
        "--recipe",
        default=None,
        choices=RECIPES,
        help="official: the official ScalaBL code's recipe in one switch (docs/method.md): "
        "--guide log_mean_field, --objective reference, its N(u, (1 + u)^2) prior, "
        "alpha = 2 x rank, lm_head with q_proj,v_proj (so --format letter), each epoch's "
        "partial last batch kept, float32 LoRA path",
    )
    num_option(
        p,
        "--threads",
        "CPU threads of this process (docs/reliability.md)",
        "$OMP_NUM_THREADS, else all cores",
    )
    num_option(p, "--seed", "seed of the data order and the posterior draws", 0)
    p.add_argument("--no-progress", action="store_true", help=NO_PROGRESS)


def _train_data_args(args: argparse.Namespace, meta: dict | None) -> None:
    """Fill train's --data/--split/--limit/--source: given, else (--resume) saved, else default."""
    if meta is None:
        args.data = args.data if args.data is not None else DATA_DEFAULTS["data"]
        args.split = args.split if args.split is not None else "train"
        args.source = args.source if args.source is not None else DATA_DEFAULTS["source"]
        args.subset_seed = 0
        return
    from scalabl_pyro.io.checkpoint import TRAIN_DATA_KEY, resume_data_settings

    given = {"data": args.data, "split": args.split, "limit": args.limit, "source": args.source}
    chosen = resume_data_settings(meta.get(TRAIN_DATA_KEY), given)
    args.data, args.split, args.limit = chosen["data"], chosen["split"], chosen["limit"]
    args.source, args.subset_seed = chosen["source"], chosen["seed"]


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


def _calibration_set(args: argparse.Namespace) -> Any:
    """The validation examples ``--calibrate-on`` names (a split of --data, or a file), or None."""
    if args.calibrate_on is None:
        if args.calibrate_limit is not None:
            raise ScalaBLError(
                "--calibrate-limit subsets --calibrate-on's examples, so it would be ignored "
                "without it; drop it or pass --calibrate-on validation"
            )
        return None
    from scalabl_pyro.data import load_local, load_task
    from scalabl_pyro.data.local import is_local_path
    from scalabl_pyro.data.registry import KNOWN_TASKS, canonical_name

    value, limit = args.calibrate_on, args.calibrate_limit
    if is_local_path(value):
        data = load_local(value, split="validation")
        return data.subset(limit, seed=0) if limit is not None and limit < len(data) else data
    if canonical_name(str(args.data)) not in KNOWN_TASKS:
        raise ScalaBLError(
            f"--calibrate-on {value} names a split, but --data {args.data} is one local file; "
            "pass the path of a validation file instead"
        )
    if value == args.split:
        raise ScalaBLError(
            f"--calibrate-on {value} is the training split; fit the temperature on held-out "
            "questions (e.g. --calibrate-on validation)"
        )
    return load_task(args.data, value, source=args.source, limit=limit, seed=0)


def _resume_spelling():
    """How ``inference/resume.py`` names this command's options in its refusals."""
    from scalabl_pyro.inference.resume import Spelling

    flags = {theirs: "--" + ours.replace("_", "-") for ours, theirs in _SAVED_TRAIN_KEYS.items()}
    return Spelling(output="--output", resume="--resume", flags=flags)


def _train_config(s: TrainSettings, args: argparse.Namespace, meta: dict | None) -> Any:
    """The TrainConfig of the run: with --resume every saved setting, then the options given."""
    from dataclasses import fields

    from scalabl_pyro.inference.train import TrainConfig

    # a resumed run keeps every saved setting, also those the CLI has no flag for
    known = {f.name for f in fields(TrainConfig)}
    saved = (meta or {}).get("train_config") or {}
    settings = {k: v for k, v in saved.items() if k in known}
    settings.update({theirs: getattr(s, ours) for ours, theirs in _SAVED_TRAIN_KEYS.items()})
    settings["gradient_checkpointing"] = args.gradient_checkpointing or bool(
        settings.get("gradient_checkpointing")
    )
    settings["progress"] = args.progress
    if s.recipe is not None and not args.resume:
        settings.update(TrainConfig.OFFICIAL)  # partial last batch, float32 LoRA path
    return TrainConfig(**settings)


def _model_config(s: TrainSettings, args: argparse.Namespace, train: Any) -> Any:
    """The ScalaBLConfig of a new run, from the options (and the official recipe's fixed parts)."""
    from scalabl_pyro.config import ScalaBLConfig

    method_args: dict[str, Any] = {"method": s.method, "ensemble_size": s.ensemble_size}
    if s.dropout is not None:
        method_args["dropout"] = s.dropout
    if s.init_scale is not None:
        method_args["init_scale"] = s.init_scale
    if s.recipe is not None:  # the rest of ScalaBLConfig.official(): prior, init, dropout
        official = get_recipe(s.recipe).model
        method_args.update({k: official[k] for k in ("reference_prior_quirk", "init_scale")})
        method_args["dropout"] = official["dropout"]
    mcfg = ScalaBLConfig(
        **method_args,
        base_model=s.model,
        task_format=s.task_format,
        normalization=s.normalization,
        guide=s.guide if get_method(s.method).implied_guide is None else "mean_field",
        target_modules=s.targets,
        rank=s.rank,
        alpha=s.alpha,
        prior_scale=None if s.guide == "mle" else s.prior_scale,
        num_classes=max(train.num_classes, 2),
        device=args.device,
        dtype=args.dtype,
        quantization=args.quantization,
        seed=s.seed,
    )
    return mcfg


def run(args: argparse.Namespace) -> None:
    """Check every option, then train (and save) or resume.

    With --resume the decision is the library's (``inference/resume.py``, as
    ``fit(resume=True)``): the options not given take the saved values, then
    :func:`decide_resume` refuses a change exact resume cannot honour, and
    ``fit`` gets the plan, so the checkpoint is checked once and its
    parameters read once.
    """
    if args.threads is not None:
        from scalabl_pyro.inference.train import set_cpu_threads

        set_cpu_threads(args.threads)
    meta, plan = None, None
    if args.resume:
        from scalabl_pyro.inference.resume import decide_resume, read_saved_run

        _check_resume_flags(args)
        saved = read_saved_run(args.output, _resume_spelling())
        meta = saved.meta
        s = _train_settings(args, meta)
        _check_train_settings(s, args)
        plan = decide_resume(saved, _train_config(s, args, meta))
    else:
        from scalabl_pyro.io.checkpoint import check_output_dir

        s = _train_settings(args, None)
        _check_train_settings(s, args)
        check_output_dir(args.output, resume=False, overwrite=args.overwrite)
    given_data = args.data
    _train_data_args(args, meta)
    train = load_data(args)
    check_letter_classes(train, s.task_format, s.num_classes)
    if plan is not None:
        flag = f"--data {given_data}" if given_data is not None else "--data"
        plan.check_data(train, flag=flag)
    calibration = _calibration_set(args)

    args.device = process_device(args.device)
    check_device(args.device)
    main_process = is_main_process()
    ScalaBL = scalabl_class()
    from scalabl_pyro.config import ScalaBLConfig

    if plan is not None:  # the saved model, unloaded: fit(resume=plan) reads its parameters
        saved_config = ScalaBLConfig.from_dict(plan.checkpoint.meta["config"])
        sbl = ScalaBL.from_base(saved_config, device=args.device, dtype=args.dtype)
        tcfg = plan.config
    else:
        tcfg = _train_config(s, args, None)
        sbl = ScalaBL.from_base(_model_config(s, args, train))
    if main_process:
        print(sbl.summary())
    sbl.fit(
        train,
        tcfg,
        output_dir=args.output,
        resume=plan or False,
        overwrite=args.overwrite,
        calibrate_on=calibration,
    )
    if main_process:
        if sbl.temperature is not None:
            print(f"temperature {sbl.temperature:.3f}, fitted on {sbl.temperature_from}")
        print(f"saved {args.output}")
