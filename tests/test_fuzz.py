"""Hostile input: hypothesis over every request field, raw message bytes and socket garbage; the server answers each
with a status, never fails internally, and every refused request leaves the store unchanged."""

import grpc
import pytest
from hypothesis import HealthCheck, given, settings

from fedrecon.benchmarks.hostile import (
    Target,
    push_actions,
    raw_actions,
    read_actions,
    socket_actions,
    stream_actions,
)
from fedrecon.server.serve import ServerConfig, serve
from fedrecon.server.store import PrototypeStore

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None)


@pytest.fixture(scope="module")
def target():
    server = serve(ServerConfig(insecure=True), PrototypeStore(None))
    t = Target(server.address, timeout=30)
    yield t
    t.close()
    server.stop(grace=1)


def _check(target: Target, action: dict) -> None:
    outcome = target.send(action)
    assert not outcome.bug, (action, outcome)
    target.digest()  # raises unless Stats and every page of every table still answer


@FUZZ
@given(action=push_actions())
def test_hostile_pushes(target, action) -> None:
    _check(target, action)


@FUZZ
@given(action=read_actions())
def test_hostile_reads(target, action) -> None:
    _check(target, action)


@FUZZ
@given(action=raw_actions)
def test_raw_message_bytes(target, action) -> None:
    _check(target, action)


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(action=socket_actions)
def test_socket_garbage(target, action) -> None:
    _check(target, action)


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(action=stream_actions)
def test_push_streams_cancelled_or_closed_at_any_point(target, action) -> None:
    """Hole 2 of issue #25 as a property: whatever a stream's client does, the server answers the next call."""
    _check(target, action)


def _push(**fields) -> dict:
    # "named": a space the random tests never create, so its dim is 4
    action = {"kind": "push", "client": "alice", "space": "named", "seq": "next", "ids": ["a", "b"], "counts": [1, 2],
              "values": [0.5] * 8, "dim": 4, "dtype": 1, "corrupt": "none", "extra": b""}
    action.update(fields)
    return action


NAN, INF = float("nan"), float("inf")
REFUSED = {
    "nan": _push(values=[NAN] + [0.0] * 7),
    "inf": _push(values=[INF] + [0.0] * 7, dtype=4),
    "float16_overflow": _push(values=[70000.0] + [0.0] * 7, dtype=2),
    "count_overflow": _push(counts=[2**64 - 1, 1]),
    "sum_overflow": _push(counts=[2**40, 1], values=[1e300] + [0.0] * 7, dtype=4),
    "zero_count": _push(counts=[0, 1]),
    "dim_mismatch": _push(dim=3, values=[0.0] * 6),
    "unknown_dtype": _push(dtype=99),
    "rows_mismatch": _push(corrupt="rows"),
    "bytes_mismatch": _push(corrupt="bytes", extra=b"\x01"),
    "counts_mismatch": _push(corrupt="counts"),
    "duplicate_ids": _push(ids=["a", "a"]),
    "nul_id": _push(ids=["\x00" * 300, "b"]),
    "empty_space": _push(space=""),
    "wrong_dim_for_space": _push(dim=8, values=[0.0] * 16),
    "seq_gap": _push(seq="gap"),
    "seq_zero": _push(seq="zero"),
    "seq_huge": _push(seq="huge"),
}


def test_named_attacks_are_refused_and_change_nothing(target) -> None:
    assert target.send(_push(ids=["seed"], counts=[1], values=[1.0] * 4)).code == grpc.StatusCode.OK
    for name, action in REFUSED.items():
        outcome = target.send(action)
        assert outcome.code not in (None, grpc.StatusCode.OK) and not outcome.changed and not outcome.bug, name
    replay = target.send(_push(seq="last", ids=["other"], counts=[5], values=[9.0] * 4))
    assert replay.code == grpc.StatusCode.ALREADY_EXISTS and not replay.changed  # other content under a used seq
    retry = target.send(_push(seq="last", ids=["seed"], counts=[1], values=[1.0] * 4))
    assert retry.code == grpc.StatusCode.OK and not retry.changed  # a true retry is answered, not applied
    wrong_space = target.send(_push(space="named-other", dim=8, values=[0.0] * 16))
    assert wrong_space.code == grpc.StatusCode.OK and wrong_space.changed  # a new space is its own table


@pytest.mark.slow
def test_million_class_pushes_are_refused(target) -> None:
    for dim in (1, 20):  # over the class limit; over the message size limit
        outcome = target.send({"kind": "million", "dim": dim})
        assert outcome.code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED)
        assert not outcome.changed
