"""Check the layer contracts (`[tool.importlinter]` in pyproject.toml) with import-linter.

import-linter finds a package's modules by walking its folder, but fedrecon's folders are mapped onto the
`fedrecon` namespace by setuptools' `package-dir`. This lays them out as they import (symlinks in a
temporary folder, first on PYTHONPATH) and runs `lint-imports` on that tree.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def import_tree(into: Path) -> None:
    """Symlink every `package-dir` folder of pyproject.toml where its package name puts it under `into`."""
    mapping = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    for name, folder in sorted(mapping.items(), key=lambda item: item[0].count(".")):
        if name.count(".") > 1:  # would land inside a symlinked source folder
            raise SystemExit(f"lint_imports: package-dir {name!r} is nested deeper than fedrecon.<name>")
        target = into.joinpath(*name.split("."))
        if name.count("."):  # a subpackage: its folder as a whole
            target.symlink_to(ROOT / folder, target_is_directory=True)
            continue
        target.mkdir()  # the root package: its own files (its subpackages come from the mapping)
        for entry in (ROOT / folder).iterdir():
            if entry.name != "__pycache__":
                (target / entry.name).symlink_to(entry)


def main() -> int:
    """Run lint-imports (the venv's, beside this Python) on the laid-out tree; its exit status."""
    with tempfile.TemporaryDirectory(prefix="fedrecon-imports-") as tmp:
        import_tree(Path(tmp))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (tmp, os.environ.get("PYTHONPATH")) if p)}
        command = [str(Path(sys.executable).parent / "lint-imports"), "--no-cache", "--config",
                   str(ROOT / "pyproject.toml")]
        return subprocess.call(command, env=env, cwd=tmp)  # not ROOT: its fedrecon/ folder holds only the root package


if __name__ == "__main__":
    raise SystemExit(main())
