"""The PostgreSQL Log: clear one-line errors for unusable URLs, foreign databases, a moved head, a lost connection.

The store's contract on PostgreSQL (exactly-once, gaps, restart, revoke, a real server process) runs in
test_store, test_database, test_admin and test_integration through the `db_target` fixture.
"""

import subprocess
from pathlib import Path

import numpy as np
import psycopg
import pytest
from helpers import FEDRECON, free_port, wait_until

from fedrecon.proto.payloads import Deltas
from fedrecon.server.durable import DatabaseError, Operation
from fedrecon.server.errors import StoreUnavailable
from fedrecon.server.log import is_url, location, redact
from fedrecon.server.pglog import PostgresLog
from fedrecon.server.store import PrototypeStore

SECRET = "sekrit-xyz"


def test_db_values_pick_the_backend() -> None:
    assert is_url("postgresql://u@h/db") and is_url("POSTGRES://u@h/db")
    assert not is_url("fedrecon.db") and not is_url(Path("postgresql://x"))
    assert redact(f"postgresql://u:{SECRET}@h:5/db?sslmode=require") == "postgresql://u:***@h:5/db?sslmode=require"
    assert redact("postgresql://u@h/db") == "postgresql://u@h/db"
    assert location("x.db") == Path("x.db")


def _cases(cluster) -> list[tuple[str, str]]:
    return [
        (cluster.url("postgres", password=SECRET), "wrong user or password"),
        (f"postgresql://postgres:{SECRET}@127.0.0.1:{free_port()}/x", "cannot reach the PostgreSQL server"),
        (cluster.url("no_such_db"), 'database "no_such_db" does not exist'),
        (f"postgresql://u:{SECRET}@[::1/db", "not a valid PostgreSQL URL"),
        (f"postgresql://u:{SECRET}@nonexistent.invalid/db", "cannot reach the PostgreSQL server"),
    ]


def test_unusable_urls_give_one_clear_error_without_the_password(pg_cluster) -> None:
    for url, match in _cases(pg_cluster):
        with pytest.raises(DatabaseError, match=match) as info:
            PrototypeStore(url)
        assert SECRET not in str(info.value) and "\n" not in str(info.value)


def test_server_process_says_one_line_and_exits_2(pg_cluster) -> None:
    for url, match in _cases(pg_cluster)[:2]:
        out = subprocess.run([*FEDRECON, "server", "--insecure", "--port", "0", "--db", url], capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 2 and out.stdout == "" and SECRET not in out.stderr
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and "cannot open database postgresql://" in lines[0] and match in lines[0]


def test_database_of_something_else_is_left_untouched(pg_url: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE users (name TEXT)")
    with pytest.raises(DatabaseError, match="PostgreSQL database of something else"):
        PrototypeStore(pg_url)
    with psycopg.connect(pg_url) as conn:
        tables = [r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
    assert tables == ["users"]


def test_a_head_ahead_of_the_log_refuses_the_commit_and_acknowledges_nothing(pg_url: str) -> None:
    """The counter row moved without its log rows (damage): nothing is appended after it, nothing answered."""
    with PrototypeStore(pg_url) as store:
        store.push("a", 1, "s", Deltas(["x"], [1], np.ones((1, 2))))
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute("UPDATE head SET version = version + 1")
        with pytest.raises(StoreUnavailable, match="the log is at version 2 but operations 2..2 are missing"):
            store.push("a", 2, "s", Deltas(["y"], [1], np.ones((1, 2))))
        assert store.version == 1 and store.client_record("a").last_seq == 1
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT count(*) FROM log WHERE version > 1").fetchone()[0] == 0


def test_log_rows_gone_missing_are_damage_not_a_shorter_history(pg_url: str) -> None:
    log = PostgresLog(pg_url)  # as a server killed before its checkpoint leaves it: two pushes, only in the log
    log.append([Operation(v, "push", "a", "s", v, Deltas([c], np.ones(1, np.int64), np.ones((1, 2))))
                for v, c in ((1, "x"), (2, "y"))], {"s": 2})
    log.close()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("DELETE FROM log WHERE version = 2")
    with pytest.raises(DatabaseError, match="damaged contents.*log ends at version 1 but its head says 2"):
        PrototypeStore(pg_url)


def test_a_lost_connection_is_opened_again_and_the_retry_is_exactly_once(pg_url: str) -> None:
    store = PrototypeStore(pg_url, checkpoint_every=10**6, checkpoint_seconds=10**6)
    try:
        store.push("a", 1, "s", Deltas(["x"], [2], np.ones((1, 2))))
        with psycopg.connect(pg_url, autocommit=True) as conn:  # as a database restart or a proxy would
            conn.execute("SELECT pg_terminate_backend(%s)", (store._log.conn.info.backend_pid,))
        ack = None
        for _ in range(3):  # the first commit on the dead connection is refused; a retry reconnects
            try:
                ack = store.push("a", 2, "s", Deltas(["y"], [3], np.ones((1, 2))))
                break
            except StoreUnavailable:
                continue
        assert ack is not None and (ack.seq, ack.version) == (2, 2)
        assert store.push("a", 2, "s", Deltas(["y"], [3], np.ones((1, 2)))).duplicate
    finally:
        store.close()
    with PrototypeStore(pg_url) as again:
        assert again.version == 2 and again.pull("s").counts.tolist() == [2, 3]


def test_a_url_without_password_takes_it_from_the_environment(pg_url: str, monkeypatch) -> None:
    from fedrecon.benchmarks.pg_cluster import PASSWORD

    monkeypatch.setenv("PGPASSWORD", PASSWORD)  # libpq's own ways (PGPASSWORD, ~/.pgpass) keep it off the command line
    with PrototypeStore(pg_url.replace(f":{PASSWORD}@", "@")) as store:
        assert store.push("a", 1, "s", Deltas(["x"], [1], np.ones((1, 2)))).version == 1


def test_synchronous_off_sets_synchronous_commit(pg_url: str) -> None:
    with PrototypeStore(pg_url, synchronous="OFF") as store:
        assert store._log.conn.execute("SHOW synchronous_commit").fetchone()[0] == "off"
        assert store.push("a", 1, "s", Deltas(["x"], [1], np.ones((1, 2)))).version == 1


def test_checkpoint_replaces_rows_and_keeps_their_first_order(pg_url: str) -> None:
    with PrototypeStore(pg_url, checkpoint_every=1) as store:
        store.push("a", 1, "s", Deltas(["p", "q"], [1, 1], np.ones((2, 2))))
        store.push("a", 2, "s", Deltas(["r", "p"], [1, 1], np.full((2, 2), 3.0)))
        assert wait_until(lambda: store._checkpoint_version == 2)
        order = store.pull("s").class_ids
    with psycopg.connect(pg_url) as conn:  # log rows younger than the retention window stay, for replicas
        assert conn.execute("SELECT count(*) FROM log").fetchone()[0] == 2
        assert conn.execute("SELECT value FROM meta WHERE key = 'checkpoint_version'").fetchone()[0] == "2"
        assert [r[0] for r in conn.execute("SELECT class_id FROM classes ORDER BY pos")] == ["p", "q", "r"]
    with PrototypeStore(pg_url) as again:
        assert again.pull("s").class_ids == order == ["p", "q", "r"]
        np.testing.assert_array_equal(again.pull("s").means[0], [2.0, 2.0])
