"""Small helpers shared by the core correctness tests (tiny random models only)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import torch
from pyro.distributions.transforms import biject_to

from scalabl_pyro.api import ScalaBL
from scalabl_pyro.config import ScalaBLConfig
from scalabl_pyro.data.examples import MCDataset, MCExample
from scalabl_pyro.program.adapters import SubspaceLoRA
from scalabl_pyro.testing import tiny_model_and_tokenizer

COLORS = ("red", "blue", "green", "yellow")
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark_script(name: str) -> ModuleType:
    """Import ``benchmarks/<name>.py`` (scripts, not a package) as module ``name``."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses in a script look their module up
    spec.loader.exec_module(module)
    return module


def toy_dataset(
    n: int = 8,
    num_choices: int = 3,
    label: int | None = None,
    choices: tuple[str, ...] | None = None,
) -> MCDataset:
    """``n`` short questions over the same choices (label cycles unless fixed)."""
    choices = choices or COLORS[:num_choices]
    ex = [
        MCExample(
            f"q{i}",
            f"Which colour is item {i}?",
            choices,
            i % len(choices) if label is None else label,
        )
        for i in range(n)
    ]
    return MCDataset("toy", "train", ex)


def make_scalabl(arch: str = "llama", **config) -> ScalaBL:
    """A ScalaBL on a fresh tiny model (same seed -> same base weights)."""
    model, tok = tiny_model_and_tokenizer(arch)
    config.setdefault("rank", 4)
    return ScalaBL(ScalaBLConfig(base_model=f"tiny-{arch}", **config), model, tok)


@torch.no_grad()
def randomize_lora(sub: SubspaceLoRA, seed: int = 1, scale: float = 0.5) -> None:
    """Give every LoRA ``B`` (which starts at zero) random values so ``s`` matters."""
    gen = torch.Generator().manual_seed(seed)
    for layer in sub.layers.values():
        w = layer.lora_B["default"].weight
        w.copy_(scale * torch.randn(w.shape, generator=gen))
    if sub.head is not None:
        sub.head.lora_B.copy_(scale * torch.randn(sub.head.lora_B.shape, generator=gen))


def _owner_and_leaf(module: torch.nn.Module, name: str):
    path, leaf = name.rsplit(".", 1) if "." in name else ("", name)
    owner = module
    for part in filter(None, path.split(".")):
        owner = getattr(owner, part)
    return owner, leaf


@torch.no_grad()
def set_constrained(module: torch.nn.Module, name: str, value: torch.Tensor) -> None:
    """Set a (module-local) PyroParam ``name`` to a constrained ``value`` in place."""
    owner, leaf = _owner_and_leaf(module, name)
    constraint = owner._pyro_params[leaf][0]
    raw = owner._parameters[leaf + "_unconstrained"]
    raw.copy_(biject_to(constraint).inv(value.to(raw.dtype)))


def unconstrained(module: torch.nn.Module, name: str) -> torch.nn.Parameter:
    """The storage parameter behind the PyroParam ``name``."""
    owner, leaf = _owner_and_leaf(module, name)
    return owner._parameters[leaf + "_unconstrained"]


def lora_state(sbl: ScalaBL) -> dict[str, torch.Tensor]:
    """Copies of all LoRA factors (peft layers and the head)."""
    out = {
        k: v.detach().clone()
        for k, v in sbl.subspace.peft_model.state_dict().items()
        if "lora_" in k
    }
    if sbl.subspace.head is not None:
        out["head.lora_A"] = sbl.subspace.head.lora_A.detach().clone()
        out["head.lora_B"] = sbl.subspace.head.lora_B.detach().clone()
    return out


def guide_state(sbl: ScalaBL) -> dict[str, torch.Tensor]:
    """Copies of the guide's variational parameters."""
    return {k: v.detach().clone() for k, v in sbl.guide.state_dict().items()}
