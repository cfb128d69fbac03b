"""The product's code stays small: no module in server/, client/ or proto/ over 450 lines, no function over 60.

Generated protobuf stubs (`proto/v1/*_pb2*.py`, written by `fedrecon.proto.generate`) are not ours to shape
and are left out.
"""

from __future__ import annotations

import ast
from pathlib import Path

from fedrecon.proto.generate import GENERATED_SUFFIXES

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("server", "client", "proto")
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 60


def product_modules() -> list[Path]:
    """Every hand-written Python module of the product packages."""
    return sorted(path for package in PACKAGES for path in (ROOT / package).rglob("*.py")
                  if "__pycache__" not in path.parts and not path.name.endswith(GENERATED_SUFFIXES))


def function_lengths(path: Path) -> list[tuple[str, int, int]]:
    """(qualified name, first line, lines) of every function and method in a module, nested ones included."""
    found: list[tuple[str, int, int]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            name = prefix
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                name = f"{prefix}{child.name}."
                if not isinstance(child, ast.ClassDef):
                    found.append((f"{prefix}{child.name}", child.lineno, child.end_lineno - child.lineno + 1))
            visit(child, name)

    visit(ast.parse(path.read_text(), filename=str(path)), "")
    return found


def test_the_product_packages_are_found() -> None:
    modules = {path.relative_to(ROOT).as_posix() for path in product_modules()}
    assert {"server/serve.py", "client/cli.py", "proto/codec.py"} <= modules
    assert not any(name.endswith("_pb2.py") for name in modules)


def test_no_module_is_over_450_lines() -> None:
    sizes = {path: len(path.read_text().splitlines()) for path in product_modules()}
    over = [f"{path.relative_to(ROOT)}: {lines} lines" for path, lines in sorted(sizes.items())
            if lines > MAX_MODULE_LINES]
    assert not over, f"modules over {MAX_MODULE_LINES} lines (split them by concept):\n" + "\n".join(over)


def test_no_function_is_over_60_lines() -> None:
    over = [f"{path.relative_to(ROOT)}:{line} {name}: {lines} lines" for path in product_modules()
            for name, line, lines in function_lengths(path) if lines > MAX_FUNCTION_LINES]
    assert not over, f"functions over {MAX_FUNCTION_LINES} lines (split them):\n" + "\n".join(over)
