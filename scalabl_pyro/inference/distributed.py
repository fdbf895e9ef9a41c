"""Several processes (DDP): how one ELBO step is split across ranks without changing it.

Launched with ``accelerate launch --multi_gpu --num_processes K -m scalabl_pyro.cli train
...`` (or ``torchrun``), each process holds the whole model and a share of every batch;
:func:`start_process_group` sets up the group from the launcher's environment.
The training loop is the single-process one (``train.py``); this module only
decides the three things that make the K-process step equal the 1-process
step with a K times larger batch:

* **Data** (the distributed sampler): micro-batch ``m`` of the global,
  deterministic data stream has ``K B`` indices; rank ``k`` takes the
  contiguous block ``[k B, (k + 1) B)``. ``TrainConfig.batch_size`` is the
  per-process batch ``B``.
* **Scale**: the data plate keeps the global size ``N``; rank ``k``'s
  likelihood is scaled by ``N / B`` over its own ``B`` examples, and its loss
  holds the **whole** KL. DDP averages gradients over ranks, so the gradient
  applied is that of ``(1/K) sum_k [N/B sum_{i in k} log p(y_i | s) - KL]
  = N/(K B) sum_{i in batch} log p(y_i | s) - KL``: the ELBO estimate of the
  global batch, with the KL counted once (not K times, and not divided by K).
* **Noise**: every rank runs the step under the same per-step seed, so the
  ranks share the step's latent draw ``s``, exactly as the examples of one
  process's batch share it. Hence two processes with batch 2 reach the same
  parameters as one with batch 4, to round-off (``tests/test_distributed.py``).

Following Pyro's Lightning/DDP example, the loss module
(``elbo(model, guide)`` under ``module_local_params``) is wrapped in
``DistributedDataParallel`` only after one call has created the guide's
parameters. The frozen base weights are excluded from DDP's start-up
broadcast (every rank loaded the same checkpoint), so a 7B base is not sent
over the wire; only the LoRA factors and variational parameters are
synchronised. Only rank 0 writes checkpoints.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class DistributedContext:
    """This process's place in a torch.distributed group (``world_size`` >= 2)."""

    rank: int
    world_size: int

    @classmethod
    def detect(cls) -> DistributedContext | None:
        """The initialised process group with more than one process, else None."""
        if not (dist.is_available() and dist.is_initialized()):
            return None
        world = dist.get_world_size()
        return cls(dist.get_rank(), world) if world > 1 else None

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that logs and writes checkpoints."""
        return self.rank == 0

    def shard(self, global_indices: list[int]) -> list[int]:
        """This rank's contiguous block of a global batch of ``world_size * B`` indices."""
        per_rank, rest = divmod(len(global_indices), self.world_size)
        if rest:
            raise ValueError(
                f"a global batch of {len(global_indices)} does not split over "
                f"{self.world_size} processes"
            )
        return global_indices[self.rank * per_rank : (self.rank + 1) * per_rank]

    def wrap(self, module: nn.Module, device: torch.device) -> DistributedDataParallel:
        """``module`` in DDP, synchronising only its trainable parameters.

        Frozen parameters and all buffers are left out of DDP's broadcast and
        bookkeeping (identical on every rank by construction).
        """
        frozen = [n for n, p in module.named_parameters() if not p.requires_grad]
        frozen += [n for n, _ in module.named_buffers()]
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(module, frozen)
        device_ids = [device.index] if device.type == "cuda" and device.index is not None else None
        return DistributedDataParallel(module, device_ids=device_ids, broadcast_buffers=False)

    def mean(self, *values: float) -> list[float]:
        """The average of each scalar over ranks (the global batch's loss terms)."""
        t = torch.tensor(values, dtype=torch.float64)
        if dist.get_backend() == "nccl":
            t = t.cuda()
        dist.all_reduce(t)
        return (t / self.world_size).tolist()

    def barrier(self) -> None:
        """Wait for every rank (e.g. until rank 0 has written a checkpoint)."""
        dist.barrier()


def launched_world_size() -> int:
    """How many processes the launcher started (``WORLD_SIZE``; 1 without a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def start_process_group() -> torch.device:
    """Initialise the launcher's process group (NCCL on GPUs, else gloo); this process's device.

    Call it once per process, before the model is loaded, when
    :func:`launched_world_size` is above 1. ``accelerate.PartialState`` reads the
    launcher's environment (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``...) and picks
    the device of this rank (``cuda:<local rank>``, or the CPU).
    """
    from accelerate import PartialState

    return PartialState().device


@contextlib.contextmanager
def no_sync(module: nn.Module, skip: bool) -> Iterator[None]:
    """DDP's ``no_sync`` when ``skip`` (a gradient-accumulation micro-step that is not the last)."""
    if skip and isinstance(module, DistributedDataParallel):
        with module.no_sync():
            yield
    else:
        yield


__all__ = ["DistributedContext", "launched_world_size", "no_sync", "start_process_group"]
