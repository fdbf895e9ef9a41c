"""The package's folders are layers: every import points down, and no import runs in a circle.

Each module is parsed with :mod:`ast` (imports inside functions count too, since they
run sooner or later) and each ``scalabl_pyro.X...`` import is mapped to the layer of
``X``. A layer may import itself and any layer below it, never one above.

Sizes are held too: no module over :data:`MODULE_LINES` lines and no function over
:data:`FUNCTION_LINES`, but for the explicit allow-lists below (``tools/size_report.py``
prints the same measures). ``scalabl --help`` and every subcommand's ``--help`` import no
torch.
"""

from __future__ import annotations

import argparse
import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "scalabl_pyro"

LAYERS: tuple[tuple[str, ...], ...] = (
    # the root holds only the version and a lazy export table (importlib strings)
    ("", "errors", "utils", "testing"),
    ("io",),
    ("data",),
    ("program",),
    ("evaluation",),
    ("inference",),
    ("methods",),
    ("diagnostics",),
    ("config",),
    ("api",),
    ("experiments",),
    ("cli",),
)
"""Bottom first: the first part of a module's name below ``scalabl_pyro`` -> its layer."""

RANK = {part: i for i, layer in enumerate(LAYERS) for part in layer}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """The package's modules that ``name`` imports, anywhere in its body."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base if is_package else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            for alias in node.names:  # ``from pkg import submodule`` imports the submodule
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in MODULES else target)
    return {m for m in found if m == "scalabl_pyro" or m.startswith("scalabl_pyro.")}


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _layer(module: str) -> int:
    part = module.split(".")[1] if "." in module else ""
    return RANK[part]


def test_every_module_has_a_layer():
    missing = sorted({m.split(".")[1] for m in MODULES if "." in m} - set(RANK))
    assert not missing, f"give these folders/modules a layer in LAYERS: {missing}"


def test_the_layering_is_checked_on_real_imports():
    """The parser sees imports inside functions and ``from pkg import submodule``."""
    assert "scalabl_pyro.api" in GRAPH["scalabl_pyro.cli.checks"]  # inside a function
    assert "scalabl_pyro.cli.train" in GRAPH["scalabl_pyro.cli.app"]
    assert "scalabl_pyro.data.normalize" in GRAPH["scalabl_pyro.data.hub"]


def test_imports_point_down():
    upward = [
        f"{src} (layer {_layer(src)}) imports {dst} (layer {_layer(dst)})"
        for src, targets in GRAPH.items()
        for dst in sorted(targets)
        if _layer(dst) > _layer(src)
    ]
    assert not upward, "\n".join(upward)


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` (a list of nodes, first repeated last), or None."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycle_between_modules():
    cycle = _cycle(GRAPH)
    assert cycle is None, " -> ".join(cycle)


def test_no_import_cycle_between_folders():
    folders: dict[str, set[str]] = {}
    for src, targets in GRAPH.items():
        a = src.split(".")[1] if "." in src else ""
        folders.setdefault(a, set()).update(
            b for b in (t.split(".")[1] if "." in t else "" for t in targets) if b != a
        )
    cycle = _cycle(folders)
    assert cycle is None, " -> ".join(cycle)


def test_the_cycle_finder_finds_one():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def _heavy_after(code: str) -> list[str]:
    """The heavy libraries in ``sys.modules`` after running ``code`` in a fresh interpreter."""
    report = (
        "\nimport sys\nprint('HEAVY:' + ','.join(m for m in "
        "('torch', 'pyro', 'transformers', 'peft') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code + report], capture_output=True, text=True, check=True
    )
    line = out.stdout.strip().splitlines()[-1]
    assert line.startswith("HEAVY:"), out.stdout
    return [m for m in line.removeprefix("HEAVY:").split(",") if m]


@pytest.mark.parametrize(
    "code",
    [
        "import scalabl_pyro.config",
        "from scalabl_pyro.config import ScalaBLConfig; ScalaBLConfig(guide='full_rank')",
        "from scalabl_pyro.cli import build_parser; build_parser()",
    ],
)
def test_light_modules_import_no_torch(code):
    assert _heavy_after(code) == []


def _subcommands() -> list[str]:
    from scalabl_pyro.cli import build_parser

    (sub,) = (a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sorted(sub.choices)


SUBCOMMANDS = _subcommands()


def test_every_subcommand_is_checked_for_light_help():
    assert {"train", "evaluate", "benchmark", "compare", "diagnose"} <= set(SUBCOMMANDS)


@pytest.mark.parametrize("command", [[]] + [[c] for c in SUBCOMMANDS], ids=lambda c: " ".join(c))
def test_help_imports_no_torch(command):
    code = (
        "import sys\nfrom scalabl_pyro.cli import main\n"
        f"try:\n    main({[*command, '--help']!r})\nexcept SystemExit:\n    pass"
    )
    assert _heavy_after(code) == []


# ------------------------------------------------------------------------------- sizes

MODULE_LINES = 500
FUNCTION_LINES = 80

#: Modules allowed over MODULE_LINES, with their size (lines) when this list was written.
#: Delete an entry once it is under the limit (test_size_allow_lists_are_not_stale says when).
LONG_MODULES: dict[str, int] = {}

#: Functions allowed over FUNCTION_LINES (``path:Qualified.name``), with their size.
LONG_FUNCTIONS: dict[str, int] = {
    # argument tables: one add_argument per option, nothing to split
    "scalabl_pyro/cli/train.py:register": 144,
    # peft injection, SVD initialisation and the answer-token head, in the order peft needs
    "scalabl_pyro/program/adapters.py:SubspaceLoRA.__init__": 87,
}


def _size_report():
    """``tools/size_report.py`` (not a package): the one place that measures sizes."""
    import importlib.util

    path = PACKAGE.parent / "tools" / "size_report.py"
    spec = importlib.util.spec_from_file_location("size_report", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SIZES = _size_report()
_function_sizes = SIZES._functions


MODULE_SIZES = SIZES.module_sizes(PACKAGE)
FUNCTION_SIZES = SIZES.function_sizes(PACKAGE)


def test_the_size_measures_count_what_they_should():
    tree = ast.parse(
        "class A:\n    def f(self):\n        def g():\n            pass\n\n        return 1\n"
    )
    assert _function_sizes(tree) == {"A.f": 5, "A.f.g": 2}
    assert (
        MODULE_SIZES["scalabl_pyro/api.py"] > 0 and "scalabl_pyro/cli/app.py:main" in FUNCTION_SIZES
    )


def test_no_module_is_over_500_lines():
    over = {m: n for m, n in MODULE_SIZES.items() if n > MODULE_LINES and m not in LONG_MODULES}
    assert not over, f"split these modules by concern (or allow-list them, with a reason): {over}"


def test_no_function_is_over_80_lines():
    over = {
        f: n for f, n in FUNCTION_SIZES.items() if n > FUNCTION_LINES and f not in LONG_FUNCTIONS
    }
    assert not over, f"cut these functions (or allow-list an argument table): {over}"


def test_size_allow_lists_are_not_stale():
    """An allow-listed module or function that is gone or now small: delete its entry."""
    stale = [m for m in LONG_MODULES if MODULE_SIZES.get(m, 0) <= MODULE_LINES]
    stale += [f for f in LONG_FUNCTIONS if FUNCTION_SIZES.get(f, 0) <= FUNCTION_LINES]
    assert not stale, f"remove from the allow-lists in tests/test_architecture.py: {stale}"
