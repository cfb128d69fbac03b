"""Check the layer contracts (`[tool.importlinter]` in pyproject.toml) with import-linter.

import-linter finds a package's modules by walking its folder, but fedrecon's folders are mapped onto the
`fedrecon` namespace by setuptools' `package-dir`. This lays them out as they import
(`fedrecon.layout.import_tree`: symlinks in a temporary folder, first on PYTHONPATH) and runs
`lint-imports` on that tree.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from fedrecon.layout import import_tree

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    """Run lint-imports (the venv's, beside this Python) on the laid-out tree; its exit status."""
    with tempfile.TemporaryDirectory(prefix="fedrecon-imports-") as tmp:
        import_tree(ROOT, Path(tmp))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (tmp, os.environ.get("PYTHONPATH")) if p)}
        command = [str(Path(sys.executable).parent / "lint-imports"), "--no-cache", "--config",
                   str(ROOT / "pyproject.toml")]
        return subprocess.call(command, env=env, cwd=tmp)  # not ROOT: its fedrecon/ folder holds only the root package


if __name__ == "__main__":
    raise SystemExit(main())
