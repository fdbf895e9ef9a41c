"""``scalabl evaluate``: accuracy, ECE, NLL and Brier of a checkpoint or a zero-shot model."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from scalabl_pyro.cli.checks import (
    check_checkpoint_files,
    check_device,
    check_letter_classes,
    held_out_examples,
    load_data,
    read_checkpoint_meta,
    scalabl_class,
)
from scalabl_pyro.cli.options import (
    NO_PROGRESS,
    NORMALIZATIONS,
    add_data_args,
    flag_list,
    given,
    num_option,
    parse_device,
    them,
    verbose_flag,
)
from scalabl_pyro.errors import ScalaBLError
from scalabl_pyro.methods import get_method

_PLOT_SUFFIXES = (".png", ".pdf", ".svg")


def register(sub: Any) -> None:
    """Add ``scalabl evaluate`` to the subcommands."""
    p = sub.add_parser("evaluate", help="ACC/ECE/NLL/Brier of a checkpoint or a zero-shot model")
    verbose_flag(p, top=False)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="directory written by `scalabl train`")
    src.add_argument("--model", help="zero-shot: embedded alias, local directory or hub id")
    p.add_argument(
        "--format",
        dest="task_format",
        default=None,
        choices=("choice", "letter"),
        help="zero-shot scoring format (default choice; a checkpoint keeps its own)",
    )
    p.add_argument(
        "--normalization",
        default=None,
        choices=NORMALIZATIONS,
        help="zero-shot choice scoring: log-likelihood per token (mean, the default), in total "
        "(sum) or per byte (byte); a checkpoint keeps its own",
    )
    add_data_args(p, "validation")
    p.add_argument(
        "--temperature-from",
        default=None,
        metavar="SPLIT|FILE",
        help="fit a temperature on this split of --data (never the reported --split), or on "
        "a held-out file, and report the tempered predictive; a BMA is tempered per draw, "
        "so MI survives",
    )
    p.add_argument(
        "--no-calibration",
        action="store_true",
        help="report the plain BMA even when the checkpoint carries a temperature "
        "(scalabl train --calibrate-on)",
    )
    num_option(p, "--samples", "posterior samples for BMA, --checkpoint only", 10)
    num_option(
        p,
        "--width",
        "multiply the posterior's std around its mean for the BMA (scalabl and laplace "
        "checkpoints; choose it on validation data, docs/calibration.md)",
        1.0,
    )
    p.add_argument(
        "--mode",
        default=None,
        choices=("bma", "mean"),
        help="bma (default) averages --samples draws; mean uses the posterior mean",
    )
    p.add_argument("--output", default=None, help="write metrics JSON here")
    p.add_argument("--plot", default=None, help="write a reliability diagram (.png/.pdf/.svg)")
    p.add_argument(
        "--device", type=parse_device, default="auto", help="auto, cpu, cuda, cuda:N, mps"
    )
    p.add_argument("--no-progress", action="store_true", help=NO_PROGRESS)


def _check_evaluate_flags(args: argparse.Namespace) -> None:
    """Options that zero-shot evaluation, a checkpoint or --mode mean would ignore."""
    if args.normalization is not None and (args.checkpoint or args.task_format == "letter"):
        raise ScalaBLError(
            "--normalization applies to zero-shot choice scoring (--model without --format "
            "letter); a checkpoint keeps the scoring it was trained with, so drop --normalization"
        )
    if args.no_calibration and args.temperature_from is not None:
        raise ScalaBLError(
            "--temperature-from fits a new temperature and --no-calibration reports none; "
            "pass one of them"
        )
    if args.model is not None:
        ignored = given(args, "samples", "mode", "width")
        if ignored:
            raise ScalaBLError(
                f"--model evaluates the base model zero-shot, with no posterior to sample, so "
                f"{flag_list(ignored)} would be ignored; drop {them(ignored)} or pass --checkpoint"
            )
        return
    if args.task_format is not None:
        raise ScalaBLError(
            "--format is fixed by the checkpoint (it scores with the format it was trained "
            "with), so it would be ignored; drop --format"
        )
    if args.mode == "mean" and args.samples is not None:
        raise ScalaBLError(
            "--mode mean predicts with the posterior mean, so --samples would be ignored; "
            "drop --samples, or use --mode bma"
        )
    if args.mode == "mean" and args.width is not None:
        raise ScalaBLError(
            "--mode mean predicts with the posterior mean, so --width would be ignored; "
            "drop --width, or use --mode bma"
        )


def _check_point_mass(args: argparse.Namespace, meta: dict) -> None:
    """A point-mass checkpoint has nothing to sample: --samples and --mode change nothing."""
    guide = meta["config"].get("guide")
    name = meta["config"].get("method", "scalabl")
    method = get_method(name)
    if args.width is not None and not method.gaussian_over_s(guide):
        raise ScalaBLError(
            f"--width scales a Gaussian posterior over s, which the checkpoint's method {name} "
            f"(guide {guide}) does not have; drop --width"
        )
    ignored = given(args, "samples", "mode")
    if not ignored:
        return
    why = method.fixed_predictive(guide, meta)
    if why is not None:
        raise ScalaBLError(f"{why} {flag_list(ignored)} would be ignored; drop {them(ignored)}")


def _is_metrics_file(path: Path) -> bool:
    """Whether ``path`` is a metrics JSON that ``scalabl evaluate`` wrote."""
    try:
        if path.stat().st_size > 1_000_000:  # ours are a few hundred bytes
            return False
        obj = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(obj, dict) and {"data", "split", "acc"} <= set(obj)


def _is_plot_file(path: Path) -> bool:
    """Whether ``path`` is an image this library wrote (its metadata mark, not its type)."""
    from scalabl_pyro.io.image_mark import is_marked_image

    return is_marked_image(path)


def _check_evaluate_outputs(args: argparse.Namespace) -> None:
    """--output/--plot: creatable, and never a file this command did not write."""
    targets = {"--output": args.output, "--plot": args.plot}
    if args.output and args.plot and Path(args.output).resolve() == Path(args.plot).resolve():
        raise ScalaBLError("--output and --plot name the same file; give each its own path")
    if args.plot and Path(args.plot).suffix.lower() not in _PLOT_SUFFIXES:
        raise ScalaBLError(f"--plot {args.plot} has no image suffix; end it in .png, .pdf or .svg")
    from scalabl_pyro.io.checkpoint import CHECKPOINT_ENTRIES, CONFIG_FILE, check_writable

    data = Path(args.data).expanduser()
    for flag, value in targets.items():
        if not value:
            continue
        path = Path(value).expanduser()
        ours = _is_metrics_file if flag == "--output" else _is_plot_file
        if data.exists() and path.resolve() == data.resolve():
            raise ScalaBLError(f"{flag} {value} is the --data file; write the result elsewhere")
        if path.is_dir():
            raise ScalaBLError(f"{flag} {value} is a directory; give a file path inside it")
        if (path.parent / CONFIG_FILE).is_file() and path.name in CHECKPOINT_ENTRIES:
            raise ScalaBLError(
                f"{flag} {value} is a file of the checkpoint in {path.parent}; "
                "write the result elsewhere"
            )
        if path.exists() and not ours(path):
            kind = "metrics JSON" if flag == "--output" else "plot image"
            raise ScalaBLError(
                f"{flag} {value} exists and is not a {kind} written by scalabl evaluate, "
                "so it is not replaced; choose another path or move the file"
            )
        check_writable(path, flag=flag)


def _temperature_split(args: argparse.Namespace) -> Any:
    """The questions ``--temperature-from`` names (a split of --data with its limit, or a
    file), or None."""
    split = getattr(args, "temperature_from", None)
    if split is None:
        return None
    return held_out_examples(
        split, args, flag="--temperature-from", taken="the split being reported", limit=args.limit
    )


def run(args: argparse.Namespace) -> None:
    """Check the options and files, then predict and report the metrics."""
    _check_evaluate_flags(args)
    _check_evaluate_outputs(args)
    meta = read_checkpoint_meta(args.checkpoint, "--checkpoint") if args.checkpoint else None
    if meta is not None:
        _check_point_mass(args, meta)
    data = load_data(args)
    fit_split = _temperature_split(args)
    if meta is not None:
        cfg = meta["config"]
        check_letter_classes(data, cfg.get("task_format", "choice"), cfg.get("num_classes"))
    else:
        check_letter_classes(data, args.task_format or "choice", None)
    check_device(args.device)

    if args.checkpoint:
        check_checkpoint_files(args.checkpoint)
    ScalaBL = scalabl_class()
    from scalabl_pyro.config import ScalaBLConfig
    from scalabl_pyro.io.checkpoint import write_json

    if args.checkpoint:
        sbl = ScalaBL.from_pretrained(args.checkpoint, device=args.device)
    else:
        sbl = ScalaBL.from_base(
            ScalaBLConfig(
                base_model=args.model,
                guide="mle",
                task_format=args.task_format or "choice",
                normalization=args.normalization or "mean",
                num_classes=max(data.num_classes, 2),
                device=args.device,
            )
        )
    predict_kw = dict(
        num_samples=args.samples if args.samples is not None else 10,
        mode=args.mode or "bma",
        width=args.width if args.width is not None else 1.0,
        progress=args.progress,
    )
    stored = None if (args.no_calibration or fit_split is not None) else sbl.temperature
    pred = sbl.predict(data, **predict_kw, temperature=1.0 if stored is None else stored)
    extra: dict[str, Any] = {}
    if stored is not None:  # the checkpoint's own (scalabl train --calibrate-on)
        extra = {"temperature": stored, "temperature_from": sbl.temperature_from}
    if fit_split is not None:
        from scalabl_pyro.inference.temperature import fit_bma_temperature

        sel = sbl.predict(fit_split, **predict_kw, temperature=1.0)
        temp = fit_bma_temperature(sel.sample_log_probs, sel.labels)
        pred = pred.tempered(temp)
        extra = {"temperature": temp, "temperature_from": f"{fit_split.name}/{fit_split.split}"}
    metrics = {**pred.metrics(), **extra}
    print(json.dumps({"data": f"{data.name}/{data.split}", **metrics}, indent=2))
    if args.output:
        out = Path(args.output).expanduser()
        out.parent.mkdir(parents=True, exist_ok=True)
        write_json(out, {"data": data.name, "split": data.split, **metrics})
    if args.plot:
        from scalabl_pyro.evaluation.plots import reliability_diagram

        name = Path(args.checkpoint).name if args.checkpoint else args.model
        reliability_diagram({name: (pred.probs, pred.labels)}, args.plot)
