"""``scalabl diagnose``: k-hat of q, training PSIS-LOO, held-out elpd and ArviZ figures."""

from __future__ import annotations

import argparse
from typing import Any

from scalabl_pyro.cli.checks import (
    check_device,
    check_report_dir,
    read_checkpoint_meta,
    scalabl_class,
)
from scalabl_pyro.cli.options import (
    NO_PROGRESS,
    num_option,
    parse_device,
    verbose_flag,
)
from scalabl_pyro.errors import ScalaBLError
from scalabl_pyro.methods import get_method


def register(sub: Any) -> None:
    """Add ``scalabl diagnose`` to the subcommands."""
    p = sub.add_parser(
        "diagnose",
        help="k-hat of q, PSIS-LOO on the training questions, held-out elpd and ArviZ figures",
    )
    verbose_flag(p, top=False)
    p.add_argument("--checkpoint", required=True, help="directory written by `scalabl train`")
    p.add_argument("--output", required=True, help="directory for PNGs and summary files")
    p.add_argument(
        "--data",
        default=None,
        help="the questions the posterior was fitted to (default: the checkpoint's own "
        "training set); k-hat of q and PSIS-LOO are computed on them",
    )
    p.add_argument("--split", default=None, help="split of --data (default train)")
    num_option(p, "--limit", "random subset of --data (default: the checkpoint's)", None)
    p.add_argument(
        "--heldout",
        default=None,
        help="split of the same data set for the held-out elpd, e.g. validation (default none)",
    )
    num_option(p, "--heldout-limit", "random subset of --heldout", 200)
    num_option(p, "--samples", "draws of q", 100)
    num_option(p, "--exact-limit", "largest training set scored exactly under every draw", 512)
    num_option(p, "--subsample", "residual subsample of the difference estimator", 128)
    p.add_argument(
        "--device", type=parse_device, default="auto", help="auto, cpu, cuda, cuda:N, mps"
    )
    p.add_argument("--no-progress", action="store_true", help=NO_PROGRESS)


def _check_has_posterior(meta: dict) -> None:
    """diagnose plots the posterior over s: a point estimate of s has none to show."""
    guide = meta["config"].get("guide")
    method = get_method(meta["config"].get("method", "scalabl"))
    if method.point_latents(guide):
        what = method.label(guide)
        raise ScalaBLError(
            f"the checkpoint's {what} is a point estimate of s, with no posterior spread, so "
            "scalabl diagnose would plot standard deviations of 0; diagnose a checkpoint with a "
            "posterior over s (--method scalabl with a Gaussian --guide, or --method laplace)"
        )


def _data_sets(args: argparse.Namespace, meta: dict) -> tuple[Any, Any]:
    """The training questions (given, else the checkpoint's own) and the held-out ones (or None)."""
    from scalabl_pyro.data import load_task
    from scalabl_pyro.io.checkpoint import TRAIN_DATA_KEY, resume_data_settings

    given = {"data": args.data, "split": args.split, "limit": args.limit, "source": None}
    if args.data is None and meta.get(TRAIN_DATA_KEY) is None:
        raise ScalaBLError(
            "the checkpoint does not record its training set (an older scalabl-pyro); pass the "
            "--data (and --split, --limit) it was trained on"
        )
    if args.data is not None:
        chosen = {**given, "split": args.split or "train", "source": "auto", "seed": 0}
    else:
        chosen = resume_data_settings(meta.get(TRAIN_DATA_KEY), given)
    train = load_task(
        chosen["data"],
        chosen["split"],
        source=chosen["source"],
        limit=chosen["limit"],
        seed=chosen["seed"],
    )
    heldout = None
    if args.heldout is not None:
        heldout = load_task(chosen["data"], args.heldout, limit=args.heldout_limit or 200)
    return train, heldout


def run(args: argparse.Namespace) -> None:
    """Score the checkpoint's posterior and write the figures and summaries."""
    meta = read_checkpoint_meta(args.checkpoint, "--checkpoint")
    _check_has_posterior(meta)
    out = check_report_dir(args.output, "posterior_scales.png")
    train, heldout = _data_sets(args, meta)
    check_device(args.device)
    ScalaBL = scalabl_class()
    from scalabl_pyro.diagnostics.khat import diagnose

    sbl = ScalaBL.from_pretrained(args.checkpoint, device=args.device)
    num = args.samples if args.samples is not None else 100
    diag = diagnose(
        sbl,
        train,
        heldout,
        num_samples=num,
        exact_limit=args.exact_limit or 512,
        subsample_size=args.subsample or 128,
        progress=args.progress,
    )
    files = _write_reports(sbl, diag, train, heldout, out, num)
    _print_summary(diag, train, heldout, num)
    print("wrote " + ", ".join(sorted(files.values())))


def _write_reports(
    sbl: Any, diag: Any, train: Any, heldout: Any, out: Any, num: int
) -> dict[str, str]:
    """The ArviZ figures, the training LOO k-hat panel, ``summary.csv`` and ``diagnostics.json``."""
    import arviz as az

    from scalabl_pyro.diagnostics.fits import layer_names, prior_draws
    from scalabl_pyro.diagnostics.plots import loo_khat_panels, write_diagnostics
    from scalabl_pyro.diagnostics.posterior import history_arrays, inference_data_from_arrays
    from scalabl_pyro.io.checkpoint import write_json
    from scalabl_pyro.utils.atomic import write_text_atomic

    prior = prior_draws(sbl.model, num, 7919)
    idata = inference_data_from_arrays(
        diag.draws[None],
        layer_names(sbl.model),
        prior=None if prior is None else prior[None],
        log_likelihood=diag.train_log_lik[None],
        histories=[history_arrays(sbl.history)],
        log_weights=diag.khat.log_weights[None],
    )
    out.mkdir(parents=True, exist_ok=True)
    files = write_diagnostics(idata, out)
    files["loo_khat"] = str(out / "loo_khat.png")
    loo_khat_panels({"training LOO": diag.loo.pareto_k}, files["loo_khat"])
    summary = az.summary(idata, var_names=["s"], kind="stats")
    write_text_atomic(out / "summary.csv", summary.to_csv())
    files["summary"] = str(out / "summary.csv")
    report = {
        "train": f"{train.name}/{train.split}",
        "num_train": len(train),
        "heldout": None if heldout is None else f"{heldout.name}/{heldout.split}",
        **diag.to_dict(),
    }
    write_json(out / "diagnostics.json", report)
    files["diagnostics"] = str(out / "diagnostics.json")
    return files


def _print_summary(diag: Any, train: Any, heldout: Any, num: int) -> None:
    """k-hat of q, the training PSIS-LOO and the held-out elpd, one line each."""
    k = diag.khat
    shown = "constant weights" if k.to_dict()["khat"] is None else f"{k.khat:.2f}"
    print(
        f"k-hat of q: {shown} ({k.estimator} likelihood of {len(train)} training questions, "
        f"{num} draws; < 0.7 usable)"
    )
    c = diag.loo.k_counts() or {}
    print(
        f"training PSIS-LOO elpd: {diag.loo.elpd:.2f} ± {diag.loo.se:.2f} (p_loo "
        f"{diag.loo.p_loo:.2f}; Pareto k good/ok/bad/very bad: {c.get('good')}/{c.get('ok')}/"
        f"{c.get('bad')}/{c.get('very_bad')})"
    )
    if diag.heldout is not None:
        print(
            f"held-out elpd ({len(heldout)} questions, BMA of {diag.heldout.num_draws} draws): "
            f"{diag.heldout.elpd:.2f} ± {diag.heldout.se:.2f}"
        )
