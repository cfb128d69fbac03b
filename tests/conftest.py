"""Shared fixtures: the real data directory, free loopback ports, a fresh repository root."""

from __future__ import annotations

import os
import socket
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


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
