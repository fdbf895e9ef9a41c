"""The registry of methods: every module of ``scalabl_pyro.methods`` that defines ``METHOD``.

``get_method(name)`` is what the facade, the trainer's caller, ``ScalaBLConfig``,
the CLI and the benchmark ask; none of them compares method names. A module
that defines ``RECIPE`` registers a recipe (a method with fixed settings and
another objective, e.g. ``official``). Modules are found on first use
(``pkgutil``), so adding a method is adding its module: nothing else lists it.
The order of :func:`method_names` is each method's ``order``.

Importing the registry imports no torch: method modules keep their heavy
imports inside the functions that use them.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from scalabl_pyro.errors import ScalaBLError
from scalabl_pyro.methods.base import BenchmarkEntry, Method

_PACKAGE = "scalabl_pyro.methods"
_METHODS: dict[str, Method] = {}
_RECIPES: dict[str, Any] = {}


def _load() -> None:
    if _METHODS:
        return
    package = importlib.import_module(_PACKAGE)
    found: list[Method] = []
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{_PACKAGE}.{info.name}")
        if isinstance(getattr(module, "METHOD", None), Method):
            found.append(module.METHOD)
        if getattr(module, "RECIPE", None) is not None:
            _RECIPES[module.RECIPE.name] = module.RECIPE
    for method in sorted(found, key=lambda m: m.order):
        if method.name in _METHODS:
            raise ScalaBLError(f"two methods are named {method.name!r}")
        _METHODS[method.name] = method


def method_names() -> tuple[str, ...]:
    """The registered methods' names, in the documented order."""
    _load()
    return tuple(_METHODS)


def get_method(name: str) -> Method:
    """The method object of ``name`` (a one-line error naming the known ones)."""
    _load()
    if name not in _METHODS:
        raise ScalaBLError(f"unknown method {name!r}; choose one of {', '.join(_METHODS)}")
    return _METHODS[name]


def recipe_names() -> tuple[str, ...]:
    """The registered recipes (``--recipe``)."""
    _load()
    return tuple(_RECIPES)


def get_recipe(name: str) -> Any:
    """The recipe object of ``name``."""
    _load()
    if name not in _RECIPES:
        raise ScalaBLError(f"unknown recipe {name!r}; choose one of {', '.join(_RECIPES)}")
    return _RECIPES[name]


def benchmark_entries() -> dict[str, tuple[BenchmarkEntry, Any]]:
    """Benchmark grid names -> ((model, train overrides, BMA samples), the method or recipe)."""
    _load()
    out: dict[str, tuple[BenchmarkEntry, Any]] = {}
    for owner in (*_METHODS.values(), *_RECIPES.values()):
        for name, entry in owner.benchmark.items():
            out[name] = (entry, owner)
    return out
