"""The store: exactly-once pushes, sequence gaps, incremental pulls, spaces, refusals, durability, revocation."""

import shutil
from pathlib import Path

import numpy as np
import pytest

from fedrecon.proto.payloads import Deltas
from fedrecon.server.errors import InvalidPush, SeqReused, SequenceGap, UnknownClient, VersionAhead
from fedrecon.server.log import Log
from fedrecon.server.pending import Pending
from fedrecon.server.store import PrototypeStore


def _mean(value: float, dim: int = 4) -> np.ndarray:
    return np.full((1, dim), value)


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def store(request, tmp_path: Path):
    targets = {"memory": lambda: None, "sqlite": lambda: tmp_path / "store.db",
               "postgres": lambda: request.getfixturevalue("pg_url")}
    s = PrototypeStore(targets[request.param]())
    yield s
    s.close()


def snapshot(store: PrototypeStore) -> dict:
    """Everything observable: version, per-space tables, per-client contributions and seqs."""
    out = {"version": store.version, "clients": dict(store.tables.clients)}
    for space, table in store.tables.spaces.items():
        out[space] = {c: (table.get(c)[0].tolist(), table.get(c)[1], int(table.versions[table.index[c]]))
                      for c in table.class_ids}
    for client, spaces in store.tables.contributions.items():
        for space, table in spaces.items():
            out[(client, space)] = {c: (table.get(c)[0].tolist(), table.get(c)[1]) for c in table.class_ids}
    return out


def test_retry_returns_first_answer_and_changes_nothing(store) -> None:
    first = store.push("a", 1, "s", Deltas(["x"], [2], _mean(1.0)))
    before = snapshot(store)
    again = store.push("a", 1, "s", Deltas(["x"], [2], _mean(1.0)))
    assert (again.seq, again.version, again.classes, again.duplicate) == (1, first.version, 1, True)
    assert snapshot(store) == before


def test_reused_seq_with_other_content_is_refused_and_changes_nothing(store) -> None:
    store.push("a", 1, "s", Deltas(["x"], [50], _mean(1.0)))
    before = snapshot(store)
    for other in ((["x"], [10], _mean(1.0)), (["y"], [50], _mean(1.0)), (["x"], [50], _mean(2.0))):
        with pytest.raises(SeqReused, match="seq 1") as info:
            store.push("a", 1, "s", Deltas(*other))
        assert info.value.expected == 2
    with pytest.raises(SeqReused):
        store.push("a", 1, "other-space", Deltas(["x"], [50], _mean(1.0)))
    assert snapshot(store) == before
    assert store.push("a", 1, "s", Deltas(["x"], [50], _mean(1.0))).duplicate  # the real retry still gets its answer


@pytest.mark.parametrize("checkpoint_every", [1, 10**6])
def test_content_check_survives_restart(db_target, checkpoint_every: int) -> None:
    path = db_target
    with PrototypeStore(path, checkpoint_every=checkpoint_every) as first:  # from the checkpoint or the log
        first.push("a", 1, "s", Deltas(["x"], [3], np.full((1, 4), 0.1)))  # not exact in float32: logged as float64
        first.push("b", 1, "s", Deltas(["x"], [3], _mean(0.5)))
    with PrototypeStore(path) as again:
        assert again.push("a", 1, "s", Deltas(["x"], [3], np.full((1, 4), 0.1))).duplicate
        assert again.push("b", 1, "s", Deltas(["x"], [3], _mean(0.5))).duplicate
        with pytest.raises(SeqReused):
            again.push("a", 1, "s", Deltas(["x"], [4], np.full((1, 4), 0.1)))
        assert again.pull("s").counts.tolist() == [6]


def _pending(client: str, seq: int, ids: list[str], counts: list[int], means: np.ndarray) -> Pending:
    return Pending("push", client, "s", seq, Deltas(ids, np.asarray(counts, dtype=np.int64), np.asarray(means)))


def test_one_batch_refuses_exactly_the_pushes_at_fault() -> None:
    """The writer checks the values of a whole batch at once; a batch that fails the quick bound is checked
    push by push, so good pushes beside bad ones (or beside a huge but legal one) are all merged."""
    store = PrototypeStore()
    batch = [
        _pending("a", 1, ["x"], [1], np.full((1, 4), 1e20)),  # |count * mean| = 1e20: legal
        _pending("b", 1, ["x"], [2**40], np.full((1, 4), -1.0)),  # the largest count, a small mean: legal
        _pending("c", 1, ["x"], [3], np.full((1, 4), np.nan)),
        _pending("d", 1, ["x"], [0], np.zeros((1, 4))),
        _pending("e", 1, ["x"], [2**40], np.full((1, 4), 1e19)),  # 1.1e31 > 1e30
        _pending("f", 1, ["y", "x"], [5, 1], np.full((2, 4), 2.0)),
    ]
    store._process(batch)  # one batch, as the durable writer takes it
    errors = [str(r.error) if r.error else "" for r in batch]
    assert errors[:2] == ["", ""] and errors[5] == ""
    assert "finite" in errors[2] and ">= 1" in errors[3] and "<= 1e+30" in errors[4]
    pulled = store.pull("s")
    assert dict(zip(pulled.class_ids, pulled.counts.tolist(), strict=True)) == {"x": 1 + 2**40 + 1, "y": 5}
    assert store.client_record("c").last_seq == 0 and store.client_record("b").last_seq == 1


def test_retries_are_checked_against_their_push_within_a_batch_and_after_it(store) -> None:
    """Only each client's last push of a batch keeps a digest; retries of it, in the batch or later, are still
    checked against its content, also when a later push of the same batch was refused."""
    same, other = np.full((1, 4), 1.0), np.full((1, 4), 3.0)
    batch = [_pending("a", 1, ["x"], [1], same), _pending("a", 2, ["y"], [1], same),
             _pending("a", 2, ["y"], [1], other), _pending("a", 2, ["y"], [1], same),
             _pending("a", 5, ["z"], [1], same)]
    if store._log is None:
        store._process(batch)
    else:  # queued at once, under the queue's lock: the durable writer takes them as one batch
        with store._queue_cond:
            store._queue.extend(batch)
            store._queue_cond.notify()
        assert all(request.done.wait(10) for request in batch)
    assert [type(r.error).__name__ for r in batch] == ["NoneType", "NoneType", "SeqReused", "NoneType", "SequenceGap"]
    assert batch[3].result is not None and batch[3].result.duplicate
    with pytest.raises(SeqReused):
        store.push("a", 2, "s", Deltas(["y"], [1], other))
    assert store.push("a", 2, "s", Deltas(["y"], [1], same)).duplicate
    assert store.push("a", 3, "s", Deltas(["z"], [1], same)).seq == 3


def test_gap_is_refused_with_expected_seq(store) -> None:
    store.push("a", 1, "s", Deltas(["x"], [1], _mean(1.0)))
    before = snapshot(store)
    for bad in (3, 7):
        with pytest.raises(SequenceGap) as info:
            store.push("a", bad, "s", Deltas(["x"], [1], _mean(1.0)))
        assert info.value.expected == 2 and "expected seq 2" in str(info.value)
    with pytest.raises(SequenceGap):
        store.push("b", 2, "s", Deltas(["x"], [1], _mean(1.0)))  # a new client starts at 1
    assert snapshot(store) == before


def test_pull_returns_only_changes_since_version(store) -> None:
    v1 = store.push("a", 1, "s", Deltas(["x", "y"], [1, 1], np.zeros((2, 4)))).version
    v2 = store.push("b", 1, "s", Deltas(["y", "z"], [1, 1], np.ones((2, 4)))).version
    assert sorted(store.pull("s", 0).class_ids) == ["x", "y", "z"]
    assert sorted(store.pull("s", v1).class_ids) == ["y", "z"]
    assert store.pull("s", v2).class_ids == []
    assert store.pull("s", v2).version == v2
    with pytest.raises(VersionAhead, match="since=99"):
        store.pull("s", 99)


def test_spaces_never_mix(store) -> None:
    store.push("a", 1, "enc-1", Deltas(["x"], [1], _mean(1.0)))
    store.push("a", 2, "enc-2", Deltas(["x"], [1], _mean(5.0, dim=8)))
    np.testing.assert_allclose(store.pull("enc-1").means, _mean(1.0))
    np.testing.assert_allclose(store.pull("enc-2").means, _mean(5.0, dim=8))
    assert store.pull("unknown").class_ids == []


@pytest.mark.parametrize(
    "args,match",
    [
        (("a", "s", 2, ["x"], [1], np.zeros((1, 8))), "dim 4"),
        (("a", "s", 2, [], [], np.zeros((0, 4))), "at least one class"),
        (("a", "s", 2, ["x"], [0], np.zeros((1, 4))), ">= 1"),
        (("a", "s", 2, ["x", "x"], [1, 1], np.zeros((2, 4))), "more than once"),
        (("a", "s", 2, ["x"], [1], np.full((1, 4), np.nan)), "finite"),
        (("a", "s", 2, ["x"], [2**40], np.full((1, 4), 1e25)), "finite"),
        (("a", "", 2, ["x"], [1], np.zeros((1, 4))), "space"),
        (("", "s", 1, ["x"], [1], np.zeros((1, 4))), "client_id"),
        (("a", "s", 2, ["y", "x\x00"], [1, 1], np.zeros((2, 4))), "class_id must not contain NUL"),
        (("a", "s\x00", 2, ["x"], [1], np.zeros((1, 4))), "space must not contain NUL"),
        (("a\x00", "s", 1, ["x"], [1], np.zeros((1, 4))), "client_id must not contain NUL"),
    ],
)
def test_bad_push_changes_nothing(store, args, match) -> None:
    store.push("a", 1, "s", Deltas(["x"], [1], _mean(1.0)))
    before = snapshot(store)
    with pytest.raises(InvalidPush, match=match):
        client_id, space, seq, *deltas = args
        store.push(client_id, seq, space, Deltas(*deltas))
    assert snapshot(store) == before
    store.push("a", 2, "s", Deltas(["y"], [1], _mean(2.0)))  # the refused push did not consume seq 2


@pytest.mark.parametrize("args,match", [
    (("a", "s", 2, ["x" * 10_000], [1], np.zeros((1, 4))), "longer than 256 bytes"),
    (("a", "s", 2, ["x"], [2**50], np.zeros((1, 4))), "<= 1099511627776"),
    (("a", "s", 2, ["x"], [2**70], np.zeros((1, 4))), "counts must be integers"),
    (("a", "wide", 2, ["x"], [1], np.zeros((1, 20_000))), "dim 20000 exceeds the limit 16384"),
    (("a", "s", 2, [f"c{i}" for i in range(65_537)], [1] * 65_537, np.zeros((65_537, 4))), "limit is 65536"),
    (("a" * 300, "s", 1, ["x"], [1], np.zeros((1, 4))), "client_id is longer"),
    (("a", "s" * 300, 2, ["x"], [1], np.zeros((1, 4))), "space is longer"),
    (("a", "s", 0, ["x"], [1], np.zeros((1, 4))), "seq must start at 1"),
])
def test_direct_callers_get_the_same_limits_as_grpc(store, args, match) -> None:
    store.push("a", 1, "s", Deltas(["x"], [1], _mean(1.0)))
    before = snapshot(store)
    with pytest.raises(InvalidPush, match=match):
        client_id, space, seq, *deltas = args
        store.push(client_id, seq, space, Deltas(*deltas))
    assert snapshot(store) == before


def test_space_total_is_bounded_so_sums_never_overflow(store, monkeypatch) -> None:
    from fedrecon.server import staging

    monkeypatch.setattr(staging, "MAX_SPACE_EXAMPLES", 100)
    store.push("a", 1, "s", Deltas(["x", "y"], [40, 50], np.zeros((2, 4))))
    with pytest.raises(InvalidPush, match="more than 100 examples"):
        store.push("b", 1, "s", Deltas(["z"], [11], np.zeros((1, 4))))
    store.push("b", 1, "s", Deltas(["z"], [10], np.zeros((1, 4))))  # exactly at the bound
    store.push("b", 2, "other", Deltas(["z"], [100], np.zeros((1, 4))))  # each space has its own bound
    store.revoke("a")
    store.push("c", 1, "s", Deltas(["x"], [90], np.zeros((1, 4))))  # a revocation frees its share
    assert store.info()["spaces"][1]["examples"] == 100


def test_restart_restores_exactly(tmp_path: Path, db_target) -> None:
    """Close and reopen on the same database (both backends); SQLite also from a copy taken while open."""
    path = db_target
    rng = np.random.default_rng(3)
    store = PrototypeStore(path, checkpoint_every=7)  # some state checkpointed, the rest only in the log
    for seq in range(1, 21):
        for client in ("a", "b"):
            ids = [f"c{i}" for i in rng.choice(30, size=5, replace=False)]
            store.push(client, seq, "s", Deltas(ids, rng.integers(1, 9, 5), rng.normal(size=(5, 4))))
    before = snapshot(store)
    crashed = tmp_path / "crashed.db"  # copy the files while the store is open: what a SIGKILL leaves behind
    for suffix in ("", "-wal", "-shm"):
        if isinstance(path, Path) and Path(f"{path}{suffix}").exists():
            shutil.copy(f"{path}{suffix}", f"{crashed}{suffix}")
    store.close()
    for db in (path, crashed) if isinstance(path, Path) else (path,):  # PostgreSQL: SIGKILL in test_postgres
        reopened = PrototypeStore(db)
        assert snapshot(reopened) == before
        reopened.close()


def test_revoke_is_exact_unlearning(store) -> None:
    rng = np.random.default_rng(4)
    reference = PrototypeStore()
    for seq in range(1, 6):
        for client in ("a", "b", "c"):
            ids = [f"c{i}" for i in rng.choice(8, size=3, replace=False)]
            counts, means = rng.integers(1, 5, 3), rng.normal(size=(3, 4))
            store.push(client, seq, "s", Deltas(ids, counts, means))
            if client != "b":
                reference.push(client, seq, "s", Deltas(ids, counts, means))
    version = store.version
    result = store.revoke("b", actor="admin")
    assert result.version == version + 1
    got, want = store.pull("s"), reference.pull("s")
    order = np.argsort(got.class_ids)
    assert sorted(got.class_ids) == sorted(want.class_ids)
    want_order = np.argsort(want.class_ids)
    np.testing.assert_array_equal(got.counts[order], want.counts[want_order])
    np.testing.assert_allclose(got.means[order], want.means[want_order], atol=1e-9)
    assert len(store.pull("s", version).class_ids) > 0  # the changes are visible to incremental pulls
    with pytest.raises(UnknownClient):
        store.revoke("nobody")


@pytest.mark.parametrize("checkpoint_every", [1, 10**6])
def test_revoke_and_audit_survive_restart(db_target, checkpoint_every: int) -> None:
    """A revocation replays from the log, or loads from the checkpoint, to the same table and audit trail."""
    with PrototypeStore(db_target, checkpoint_every=checkpoint_every) as first:
        assert isinstance(first._log, Log)  # SqliteLog or PostgresLog, behind the same seam
        first.push("a", 1, "s", Deltas(["x", "y"], [2, 3], np.full((2, 4), 0.1)))
        first.push("b", 1, "s", Deltas(["x"], [5], _mean(2.0)))
        first.revoke("a", actor="root")
        before, audit = snapshot(first), first.audit()
    assert [row[:4] for row in audit] == [(3, "revoke", "a", "root")]
    with PrototypeStore(db_target) as again:
        assert snapshot(again) == before and again.audit() == audit
        assert again.pull("s").counts.tolist() == [5]  # class y went to 0: a revoked class is not live


def test_wait_for_change(store) -> None:
    assert not store.wait_for_change(0, timeout=0.01)
    store.push("a", 1, "s", Deltas(["x"], [1], _mean(1.0)))
    assert store.wait_for_change(0, timeout=0.01)


def test_every_in_memory_store_has_its_own_id() -> None:
    first, second = PrototypeStore(), PrototypeStore()
    assert first.store_id != second.store_id and first.store_id.startswith("memory-")
