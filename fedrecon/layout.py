"""fedrecon's source folders laid out as they import: `package-dir` of pyproject.toml as a symlink tree.

setuptools maps server/, client/, proto/, ... onto `fedrecon.<name>`. Tools that walk a package's folder
(import-linter) or that run another checkout side by side (`benchmarks/merge_ab.py`) need that layout.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

RUNNER = """import runpy, sys
sys.meta_path = [f for f in sys.meta_path if "editable" not in repr(f).lower()]  # not this venv's checkout
sys.path.insert(0, {tree!r})
runpy.run_module("fedrecon", run_name="__main__", alter_sys=True)
"""


def import_tree(root: Path, into: Path) -> None:
    """Symlink every `package-dir` folder of `root`/pyproject.toml where its package name puts it under `into`."""
    mapping = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    for name, folder in sorted(mapping.items(), key=lambda item: item[0].count(".")):
        if name.count(".") > 1:  # would land inside a symlinked source folder
            raise ValueError(f"package-dir {name!r} is nested deeper than fedrecon.<name>")
        target = into.joinpath(*name.split("."))
        if name.count("."):  # a subpackage: its folder as a whole
            target.symlink_to(root / folder, target_is_directory=True)
            continue
        target.mkdir()  # the root package: its own files (its subpackages come from the mapping)
        for entry in (root / folder).iterdir():
            if entry.name != "__pycache__":
                (target / entry.name).symlink_to(entry)


def checkout_runner(root: Path, into: Path) -> Path:
    """A script that runs `python -m fedrecon` from the checkout at `root` instead of the installed one."""
    tree = into / "tree"
    tree.mkdir()
    import_tree(root.resolve(), tree)
    runner = into / "run_checkout.py"
    runner.write_text(RUNNER.format(tree=str(tree)))
    return runner
