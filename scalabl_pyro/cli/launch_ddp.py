"""Train ScalaBL on several processes (DDP) with accelerate.

    accelerate launch --multi_gpu --num_processes 2 -m scalabl_pyro.cli.launch_ddp \\
        --task arc_easy --steps 200 --batch-size 4 --output runs/ddp

``--batch-size`` is per process: the global batch is ``num_processes x``
that. Run it with plain ``python`` for one process. On a machine without a
GPU the same command runs K CPU processes over gloo (``--tiny`` uses a tiny
random model and a toy data set, for a check in seconds). The process group
is set up by ``accelerate.PartialState``; everything else (data shard, DDP
wrap, plate size, KL counted once, rank-0 checkpoint) happens inside
``ScalaBL.fit`` (``scalabl_pyro/inference/distributed.py``).
"""

from __future__ import annotations

import argparse
import json
import os

from scalabl_pyro.api import ScalaBL
from scalabl_pyro.config import ScalaBLConfig
from scalabl_pyro.data import load_task
from scalabl_pyro.data.examples import MCDataset, MCExample
from scalabl_pyro.inference.train import TrainConfig


def toy_task(n: int = 16) -> MCDataset:
    """A learnable toy task for ``--tiny`` (the label is the item number mod 3)."""
    choices = ("red", "blue", "green")
    items = [MCExample(f"q{i}", f"Which colour is item {i}?", choices, i % 3) for i in range(n)]
    return MCDataset("toy", "train", items)


def build(args: argparse.Namespace, device: str) -> tuple[ScalaBL, MCDataset]:
    """The model and training set named on the command line."""
    config = ScalaBLConfig(
        base_model=args.base_model,
        guide=args.guide,
        rank=args.rank,
        dtype=args.dtype,
        device=device,
        quantization=args.quantization,
        seed=args.seed,
    )
    if args.tiny:
        from scalabl_pyro.io.loading import resolve_device
        from scalabl_pyro.testing import tiny_model_and_tokenizer

        model, tok = tiny_model_and_tokenizer()
        return ScalaBL(config, model.to(resolve_device(device)), tok), toy_task()
    return ScalaBL.from_base(config), load_task(args.task, "train", limit=args.limit)


def main(argv: list[str] | None = None) -> dict:
    """Parse, train, and (rank 0) save; returns the last step's terms."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="arc_easy")
    p.add_argument("--limit", type=int, default=None, help="first N training examples")
    p.add_argument("--base-model", default="smollm2-135m")
    p.add_argument("--guide", default="mean_field")
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--dtype", default="auto")
    p.add_argument("--quantization", choices=["4bit", "8bit"], default=None)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=4, help="per process")
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default=None)
    p.add_argument("--tiny", action="store_true", help="tiny random model + toy data")
    args = p.parse_args(argv)
    if args.tiny:
        args.base_model, args.rank = "tiny-llama", 4

    device = "auto"
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from accelerate import PartialState

        device = str(PartialState().device)  # initialises the process group (NCCL / gloo)
    sbl, train = build(args, device)
    cfg = TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        lr=args.lr,
        seed=args.seed,
        progress=False,
    )
    history = sbl.fit(train, cfg, output_dir=args.output)
    last = vars(history.steps[-1])
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(last))
    return last


if __name__ == "__main__":
    main()
