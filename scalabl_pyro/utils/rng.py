"""Seeded randomness without global side effects.

Library calls never reseed the process: a user's own ``torch.manual_seed`` or
``pyro.set_rng_seed`` must mean the same thing after ``fit`` or ``predict``
as before. :func:`seeded` runs a block with the torch (CPU and the given CUDA
devices), Python ``random`` and numpy generators seeded, and restores all of
them on exit — Pyro's ``poutine.seed`` does the same but restores neither
CUDA generators nor anything on an exception path it does not reach.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterable, Iterator

import numpy as np
import pyro
import torch


def _cuda_indices(devices: Iterable[torch.device | str | int]) -> list[int]:
    out = []
    for d in devices:
        d = torch.device(d) if not isinstance(d, int) else torch.device("cuda", d)
        if d.type == "cuda":
            out.append(d.index if d.index is not None else torch.cuda.current_device())
    return sorted(set(out))


@contextlib.contextmanager
def seeded(seed: int | None, devices: Iterable[torch.device | str | int] = ()) -> Iterator[None]:
    """Run the block with all generators seeded from ``seed``; restore them afterwards.

    ``seed=None`` runs the block on the current global state (and restores
    nothing), for callers that want fresh randomness.
    """
    if seed is None:
        yield
        return
    py_state = random.getstate()
    np_state = np.random.get_state()
    with torch.random.fork_rng(devices=_cuda_indices(devices)):
        try:
            pyro.set_rng_seed(int(seed))
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def model_devices(module: torch.nn.Module) -> list[torch.device]:
    """The distinct devices of a module's parameters (for :func:`seeded`)."""
    return sorted({p.device for p in module.parameters()}, key=str)
