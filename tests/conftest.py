"""Shared fixtures: the real data directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _data_root() -> Path:
    return Path(os.environ.get("FEDRECON_DATA_DIR", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """`../shared/data` (or $FEDRECON_DATA_DIR); CI sets FEDRECON_REQUIRE_DATA=1 so it fails, not skips."""
    root = _data_root()
    if not (root / "omniglot" / "images_background.zip").exists():
        message = f"real data not found under {root} (set FEDRECON_DATA_DIR)"
        if os.environ.get("FEDRECON_REQUIRE_DATA") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return root

