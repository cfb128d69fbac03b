"""The database: one writer at a time (SQLite; PostgreSQL takes replicas), clean start-up errors for damaged, read-only
or foreign files, disk full."""

import logging
import os
import shutil
import signal
import sqlite3
import subprocess
from pathlib import Path

import numpy as np
import pytest
from helpers import FEDRECON, start_server

from fedrecon.proto.payloads import Deltas
from fedrecon.server.durable import DatabaseError, DatabaseLocked
from fedrecon.server.errors import StoreUnavailable
from fedrecon.server.store import PrototypeStore


def _server_argv(db: Path | str) -> list[str]:
    return [*FEDRECON, "server", "--host", "127.0.0.1", "--port", "0", "--db", str(db), "--insecure"]


def test_second_store_on_the_same_database_is_refused(tmp_path: Path) -> None:
    """SQLite has one writer (PostgreSQL takes replicas: tests/test_replicas.py)."""
    db = tmp_path / "store.db"
    first = PrototypeStore(db)
    first.push("a", 1, "s", Deltas(["x"], [1], np.ones((1, 2))))
    with pytest.raises(DatabaseLocked, match="in use by another fedrecon server"):
        PrototypeStore(db)
    first.close()
    with PrototypeStore(db) as again:  # the lock goes with the store that held it
        assert again.version == 1


def test_second_server_process_refuses_to_start_and_a_killed_one_leaves_no_lock(tmp_path: Path) -> None:
    db = tmp_path / "store.db"
    process, _ = start_server(db)
    try:
        second = subprocess.run(_server_argv(db), capture_output=True, text=True, timeout=60)
        assert second.returncode == 2 and second.stdout == ""
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and "in use by another fedrecon server" in lines[0], second.stderr
    finally:
        os.kill(process.pid, signal.SIGKILL)  # no shutdown code runs: nothing like a pid file is cleaned up
        process.wait()
    again, address = start_server(db)  # raises unless it printed its address: it took the lock
    again.kill()
    again.wait()
    assert address


def test_foreign_sqlite_file_is_left_untouched(tmp_path: Path) -> None:
    db = tmp_path / "other.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE users (name TEXT)")
    with pytest.raises(DatabaseError, match="something else"):
        PrototypeStore(db)
    with sqlite3.connect(db) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    assert tables == ["users"]


def test_first_start_cut_short_after_creating_tables_still_opens(tmp_path: Path) -> None:
    from fedrecon.server.durable import SCHEMA

    db = tmp_path / "s.db"
    with sqlite3.connect(db) as conn:  # the tables exist, the schema row was never written
        conn.executescript(SCHEMA)
    with PrototypeStore(db) as store:
        assert store.push("a", 1, "s", Deltas(["x"], [1], np.ones((1, 2)))).version == 1


def test_file_that_is_not_a_database(tmp_path: Path) -> None:
    db = tmp_path / "junk.db"
    db.write_bytes(os.urandom(8192))
    with pytest.raises(DatabaseError, match="not a readable SQLite database"):
        PrototypeStore(db)


def _damaged(tmp_path: Path, statement: str) -> Path:
    db = tmp_path / "s.db"
    with PrototypeStore(db, checkpoint_every=1) as store:
        store.push("a", 1, "s", Deltas(["x"], [1], np.ones((1, 2))))
        store.push("a", 2, "s", Deltas(["y"], [1], np.ones((1, 2))))
    with sqlite3.connect(db) as conn:
        conn.execute(statement)
    return db


ONE = np.array([1], "<i8").tobytes().hex()
MEANS = np.ones(2, "<f4").tobytes().hex()


@pytest.mark.parametrize("statement", [
    "UPDATE classes SET sum = x'0102'",
    f"INSERT INTO log VALUES (3, 'push', 'a', 's', 3, '[\"z\"', x'{ONE}', x'{MEANS}', 2, '', 0, -1)",  # bad JSON
    f"INSERT INTO log VALUES (3, 'push', 'a', 's', 3, '[\"z\"]', x'{ONE}', x'00', 2, '', 0, -1)",  # bad blob
])
def test_damaged_contents_give_one_clear_error(tmp_path: Path, statement: str) -> None:
    db = _damaged(tmp_path, statement)
    with pytest.raises(DatabaseError, match="damaged contents"):
        PrototypeStore(db)
    out = subprocess.run(_server_argv(db), capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "damaged contents" in out.stderr


def test_read_only_database_is_refused_before_serving(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    with PrototypeStore(db) as store:
        store.push("a", 1, "s", Deltas(["x"], [1], np.ones((1, 2))))
    immutable = os.geteuid() == 0  # root ignores file modes: make the file immutable instead
    if immutable:
        if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(db)]).returncode != 0:
            pytest.skip("running as root and cannot make the file immutable")
    else:
        db.chmod(0o444)
    try:
        with pytest.raises(DatabaseError, match="read-only|readonly|unable to open"):
            PrototypeStore(db)
        out = subprocess.run(_server_argv(db), capture_output=True, text=True, timeout=60)
        assert out.returncode == 2 and out.stdout == "" and "Traceback" not in out.stderr
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(db)])


def test_full_disk_is_reported_once_and_refuses_pushes(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = PrototypeStore(tmp_path / "s.db", checkpoint_every=10**9, checkpoint_seconds=10**9)
    try:
        pages = store._log.conn.execute("PRAGMA page_count").fetchone()[0]
        store._log.conn.execute(f"PRAGMA max_page_count = {pages + 2}")  # SQLite answers SQLITE_FULL beyond this
        rng = np.random.default_rng(0)
        refused = 0
        with caplog.at_level(logging.DEBUG, logger="fedrecon.store"):
            for seq in range(1, 40):
                try:
                    store.push("a", seq - refused, "s", Deltas([f"c{seq}"], [1], rng.normal(size=(1, 512))))
                except StoreUnavailable as error:
                    assert "full" in str(error)
                    refused += 1
        assert refused > 1
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1 and "full" in errors[0].getMessage()
        assert not any("rollback" in r.getMessage() for r in caplog.records)
        accepted = 39 - refused
        assert store.version == accepted and store.client_record("a").last_seq == accepted
    finally:
        store.close()
