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

The options after defaults, and their cross-checks: :mod:`scalabl_pyro.cli.train_settings`.
"""

from __future__ import annotations

import argparse
from typing import Any

from scalabl_pyro.cli.checks import (
    check_device,
    check_letter_classes,
    held_out_examples,
    load_data,
    scalabl_class,
)
from scalabl_pyro.cli.launch import is_main_process, process_device
from scalabl_pyro.cli.options import (
    DATA_DEFAULTS,
    GUIDES,
    METHODS,
    NO_PROGRESS,
    NORMALIZATIONS,
    RECIPES,
    add_data_args,
    add_model_args,
    num_option,
    verbose_flag,
)
from scalabl_pyro.cli.train_settings import (
    _SAVED_TRAIN_KEYS,
    TrainSettings,
    _check_resume_flags,
    _check_train_settings,
    _train_settings,
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


def _calibration_set(args: argparse.Namespace) -> Any:
    """The validation examples ``--calibrate-on`` names (a split of --data, or a file), or None."""
    if args.calibrate_on is None:
        if args.calibrate_limit is not None:
            raise ScalaBLError(
                "--calibrate-limit subsets --calibrate-on's examples, so it would be ignored "
                "without it; drop it or pass --calibrate-on validation"
            )
        return None
    return held_out_examples(
        args.calibrate_on,
        args,
        flag="--calibrate-on",
        taken="the training split",
        limit=args.calibrate_limit,
    )


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
