"""Print the package's largest modules and functions, in lines.

A module's size is its line count; a function's is the span of its ``def`` (decorators
excluded, docstring and nested functions included), as :mod:`ast` reports it. The same
measure is what ``tests/test_architecture.py`` holds to 500 lines per module and 80
per function. Run ``python tools/size_report.py [--top N]`` from the repository root.
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "scalabl_pyro"
MODULE_LIMIT = 500
FUNCTION_LIMIT = 80


def module_sizes(package: Path = PACKAGE) -> dict[str, int]:
    """``{path relative to the package's parent: line count}`` of every module."""
    return {
        p.relative_to(package.parent).as_posix(): len(p.read_text(encoding="utf-8").splitlines())
        for p in sorted(package.rglob("*.py"))
    }


def _functions(node: ast.AST, prefix: str = "") -> dict[str, int]:
    """``{qualified name: lines}`` of the functions and methods under ``node``."""
    sizes: dict[str, int] = {}
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            name = f"{prefix}{child.name}"
            if not isinstance(child, ast.ClassDef):
                sizes[name] = child.end_lineno - child.lineno + 1
            sizes.update(_functions(child, name + "."))
        else:
            sizes.update(_functions(child, prefix))
    return sizes


def function_sizes(package: Path = PACKAGE) -> dict[str, int]:
    """``{"path:qualified.name": lines}`` of every function and method."""
    sizes: dict[str, int] = {}
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package.parent).as_posix()
        tree = ast.parse(path.read_text(encoding="utf-8"))
        sizes.update({f"{rel}:{name}": n for name, n in _functions(tree).items()})
    return sizes


def _table(title: str, sizes: dict[str, int], limit: int, top: int) -> list[str]:
    ranked = sorted(sizes.items(), key=lambda kv: (-kv[1], kv[0]))
    over = sum(n > limit for n in sizes.values())
    lines = [f"{title} ({len(sizes)} in all, {over} over {limit} lines):"]
    lines += [f"  {n:5d}  {name}{'  *' if n > limit else ''}" for name, n in ranked[:top]]
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--top", type=int, default=15, help="rows per table (default 15)")
    args = parser.parse_args(argv)
    modules = module_sizes()
    print(f"scalabl_pyro: {sum(modules.values())} lines in {len(modules)} modules")
    print("\n".join(_table("Largest modules", modules, MODULE_LIMIT, args.top)))
    print("\n".join(_table("Largest functions", function_sizes(), FUNCTION_LIMIT, args.top)))
    print("(* over the limit)")


if __name__ == "__main__":
    main()
