"""Run the scalabl CLI with one fault injected from outside the library (fault tests only).

    python fault_runner.py TARGET K WHEN ACTION -- <scalabl arguments>

wraps the function ``TARGET`` (``os.replace``, ``safetensors.torch.save_file``,
``torch.save``, ``torch.optim.AdamW.step``) so that its ``K``-th call
(counting from 1) does ``ACTION`` ``WHEN`` (``before`` or ``after`` the real
call):

* ``kill``: SIGKILL this process (a power cut, the OOM killer, ``kill -9``);
* ``enospc``: raise ``OSError(ENOSPC)`` (a full disk);
* ``nan``: fill the first LoRA factor with NaN (a diverging update);
* ``huge``: set the LoRA factors to +-1e19, finite but overflowing the logits of the
  next forward pass, which Pyro's validation (turned on) refuses.

The library has no hook for this: the wrapper replaces the attribute in this
process only, the way a debugger would.
"""

from __future__ import annotations

import errno
import functools
import importlib
import os
import signal
import sys


def _owner(target: str):
    module, _, attr = target.rpartition(".")
    try:
        return importlib.import_module(module), attr
    except ModuleNotFoundError:  # a class attribute: torch.optim.AdamW.step
        mod, _, cls = module.rpartition(".")
        return getattr(importlib.import_module(mod), cls), attr


def _nan(optimizer) -> None:
    import torch

    with torch.no_grad():
        optimizer.param_groups[0]["params"][0].fill_(float("nan"))


def _huge(optimizer) -> None:
    import torch

    with torch.no_grad():
        for p in optimizer.param_groups[0]["params"]:  # the LoRA factors
            p.copy_(torch.sign(p) * 1e19)  # what an AdamW step at lr 1e19 does


def main() -> None:
    target, k, when, action = sys.argv[1:5]
    assert sys.argv[5] == "--"
    k = int(k)
    owner, attr = _owner(target)
    real = getattr(owner, attr)
    calls = 0

    def act(args) -> None:
        if action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif action == "enospc":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(args[-1]))
        elif action == "nan":
            _nan(args[0])
        elif action == "huge":
            _huge(args[0])

    @functools.wraps(real)
    def wrapper(*args, **kwargs):
        nonlocal calls
        calls += 1
        if calls == k and when == "before":
            act(args)
        out = real(*args, **kwargs)
        if calls == k and when == "after":
            act(args)
        return out

    setattr(owner, attr, wrapper)
    if action == "huge":
        import pyro

        pyro.enable_validation(True)
    from scalabl_pyro.cli import main as cli_main

    sys.exit(cli_main(sys.argv[6:]))


if __name__ == "__main__":
    main()
