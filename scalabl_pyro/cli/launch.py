"""Several processes: ``accelerate launch -m scalabl_pyro.cli train ...``.

A launcher (``accelerate launch``, ``torchrun``) starts the same command once per
process and sets ``WORLD_SIZE``, ``RANK`` and the rendezvous address. The commands ask
this module for the device of their process and whether it is the one that prints;
everything else (data shard, DDP wrap, KL counted once, rank-0 checkpoint) happens
inside ``ScalaBL.fit`` (:mod:`scalabl_pyro.inference.distributed`). torch is imported
only when a command calls these, after its cheap checks.
"""

from __future__ import annotations

from scalabl_pyro.errors import ScalaBLError


def process_device(device: str) -> str:
    """This process's device: under a launcher with several processes, the group's choice.

    ``accelerate launch`` (or ``torchrun``) sets ``WORLD_SIZE``; each process then
    starts the process group and takes the device of its rank, so ``--device``
    cannot choose one.
    """
    from scalabl_pyro.inference.distributed import launched_world_size, start_process_group

    if launched_world_size() < 2:
        return device
    if device != "auto":
        raise ScalaBLError(
            f"--device {device}: under accelerate launch every process takes the device of "
            "its rank; drop --device (give accelerate launch --cpu for CPU processes)"
        )
    return str(start_process_group())


def is_main_process() -> bool:
    """Rank 0, or the only process: the one that prints (and writes the checkpoint)."""
    from scalabl_pyro.inference.distributed import DistributedContext

    ctx = DistributedContext.detect()
    return ctx is None or ctx.is_main
