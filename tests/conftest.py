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



def _required() -> bool:
    """CI (CI=true or FEDRECON_REQUIRE_DATA=1): a missing PostgreSQL fails the tests that need it, never skips."""
    return os.environ.get("CI", "").lower() == "true" or os.environ.get("FEDRECON_REQUIRE_DATA") == "1"


@pytest.fixture(scope="session")
def pg_cluster():
    """One throwaway PostgreSQL cluster for the session (started on first use, stopped by its own handle)."""
    from fedrecon.benchmarks.pg_cluster import PgCluster, find_bin_dir

    bin_dir = find_bin_dir()
    if bin_dir is None:
        message = "PostgreSQL (initdb, postgres) not found on PATH or under /usr/lib/postgresql/*/bin"
        if _required():
            pytest.fail(message)
        pytest.skip(message)
    cluster = PgCluster(bin_dir).start()
    yield cluster
    cluster.stop()


@pytest.fixture
def pg_url(pg_cluster) -> str:
    """The URL of a new, empty database of the session's cluster."""
    return pg_cluster.create_database()


@pytest.fixture(params=["sqlite", "postgres"])
def db_target(request, tmp_path: Path) -> str | Path:
    """A fresh durable store target on each backend: an SQLite file path, or a PostgreSQL URL."""
    if request.param == "sqlite":
        return tmp_path / "store.db"
    return request.getfixturevalue("pg_url")
