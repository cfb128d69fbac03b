"""Hostile input for the merge server: hypothesis strategies over every request field, and a target that checks answers.

Actions cover pushes with NaN/Inf, overflowing counts, dim/dtype/length mismatches, odd Unicode ids,
wrong spaces and sequence games (replays, other content under a used seq, gaps, zero, 2**64-1),
pulls/watches/info/admin calls with odd fields, raw undecodable message bytes to every method, raw
garbage at the TCP socket, PushStream calls cancelled or closed at any point (after which a call must
be answered within a second), (rarely) a push of a million classes, and pushes up to a space's count
bound. `Target.send` performs one action and reports its status and whether the store changed; a
refused request must leave the store exactly as it was.
"""

from __future__ import annotations

import hashlib
import queue
import socket
from dataclasses import dataclass, field

import grpc
import numpy as np
from hypothesis import strategies as st

from fedrecon.proto import codec
from fedrecon.proto.limits import MAX_COUNT
from fedrecon.proto.payloads import Deltas
from fedrecon.proto.v1 import admin_pb2 as apb
from fedrecon.proto.v1 import admin_pb2_grpc as arpc
from fedrecon.proto.v1 import recon_pb2 as pb
from fedrecon.proto.v1 import recon_pb2_grpc as rpc

SPACES = {"s": 4, "t": 8}
CLIENTS = ("alice", "bob", "carol")
METHODS = ("/fedrecon.v1.Reconnaissance/Push", "/fedrecon.v1.Reconnaissance/Pull", "/fedrecon.v1.Reconnaissance/Info",
           "/fedrecon.v1.Admin/Stats", "/fedrecon.v1.Admin/Export", "/grpc.health.v1.Health/Check",
           "/fedrecon.v1.Reconnaissance/Nope")
# statuses that mean the server's own code failed (an unhandled exception), never an acceptable answer
BUG_STATUSES = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}
HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

weird_text = st.sampled_from(["", "a", "s", "t", "x" * 300, "\x00", "\u202eevil", "\U0001f642", "e\u0301",
                              "\ufeff", "\uff53", "../../etc", "%s%n", "\n", "a" * 256, "\u00e9" * 129]) | \
    st.text(max_size=24)
counts_st = st.sampled_from([0, 1, 2, 7, 2**40, 2**40 + 1, 2**53, 2**63 - 1, 2**63, 2**64 - 1]) | \
    st.integers(0, 2**64 - 1)
values_st = st.floats(allow_nan=True, allow_infinity=True, width=64) | st.sampled_from(
    [0.0, 1.0, -1.0, 1e30, 1e300, -1e308, 65504.0, 70000.0, float("nan"), float("inf")])
seq_st = st.sampled_from(["next", "next", "last", "zero", "gap", "huge", "old"])


PUSH_FIELDS = ("client", "space", "seq", "ids", "counts", "values", "dim", "dtype", "corrupt")


@st.composite
def push_actions(draw: st.DrawFn) -> dict:
    """A valid push with 0-3 of its fields replaced by hostile values (so sequence games meet real state)."""
    n = draw(st.integers(1, 6))
    hostile = set(draw(st.lists(st.sampled_from(PUSH_FIELDS), max_size=3)))
    space = draw(weird_text) if "space" in hostile else draw(st.sampled_from(list(SPACES)))
    dim = draw(st.sampled_from([0, 1, 3, 5, 8, 17])) if "dim" in hostile else SPACES.get(space, 4)
    if "ids" in hostile:
        n = draw(st.integers(0, 6))
        ids = draw(st.lists(st.sampled_from([f"c{i}" for i in range(8)]) | weird_text, min_size=n, max_size=n))
    else:
        ids = draw(st.lists(st.sampled_from([f"c{i}" for i in range(8)]), min_size=n, max_size=n, unique=True))
    counts = draw(st.lists(counts_st if "counts" in hostile else st.integers(1, 9), min_size=n, max_size=n))
    values = draw(st.lists(values_st if "values" in hostile else st.floats(-4, 4), min_size=n * dim,
                           max_size=n * dim))
    return {"kind": "push",
            "client": draw(weird_text) if "client" in hostile else draw(st.sampled_from(CLIENTS)),
            "space": space,
            "seq": draw(seq_st | st.integers(0, 2**64 - 1)) if "seq" in hostile else "next",
            "ids": ids, "counts": counts, "values": values, "dim": dim,
            "dtype": draw(st.sampled_from([pb.FLOAT16, pb.BFLOAT16, 0, 5, 99]) if "dtype" in hostile else
                          st.sampled_from([pb.FLOAT32, pb.FLOAT64])),
            "corrupt": draw(st.sampled_from(["rows", "dim", "bytes", "counts", "no_means"])) if "corrupt" in hostile
            else "none",
            "extra": draw(st.binary(max_size=8))}


@st.composite
def read_actions(draw: st.DrawFn) -> dict:
    """A pull, watch, info, or admin stats/export with odd fields."""
    kind = draw(st.sampled_from(["pull", "watch", "info", "stats", "export"]))
    return {"kind": kind, "space": draw(st.sampled_from(list(SPACES)) | weird_text),
            "since": draw(st.sampled_from([0, 1, "version", "ahead", 2**64 - 1]) | st.integers(0, 2**64 - 1)),
            "dtype": draw(st.integers(0, 7) | st.integers(0, 2**31 - 1)), "per_client": draw(st.booleans())}


raw_actions = st.fixed_dictionaries({"kind": st.just("raw"), "method": st.sampled_from(METHODS),
                                     "payload": st.binary(max_size=256)})
socket_actions = st.fixed_dictionaries({"kind": st.just("socket"), "preface": st.booleans(),
                                        "payload": st.binary(max_size=512)})
stream_actions = st.fixed_dictionaries({"kind": st.just("stream"), "pushes": st.integers(0, 4),
                                        "end": st.sampled_from(["cancel", "cancel_unread", "close"])})
actions = st.one_of(push_actions(), push_actions(), push_actions(), read_actions(), raw_actions, socket_actions,
                    stream_actions)
STREAMER = "streamer"  # the client of stream actions
ANSWER_SECONDS = 1.0  # after a stream action, a call must be answered within this (a wedged server is not)


def _matrix(action: dict) -> pb.Matrix:
    n, dim = len(action["ids"]), action["dim"]
    dtype = codec.DTYPES.get(action["dtype"], np.dtype("<f4"))
    with np.errstate(over="ignore", invalid="ignore"):
        values = np.asarray(action["values"], dtype=np.float64).astype(dtype).reshape(n, dim)
    matrix = pb.Matrix(dtype=action["dtype"], dim=dim, rows=n, data=values.tobytes())
    corrupt = action["corrupt"]
    if corrupt == "rows":
        matrix.rows = n + 1
    elif corrupt == "dim":
        matrix.dim = dim + 1
    elif corrupt == "bytes":
        matrix.data = matrix.data + action["extra"] if action["extra"] else matrix.data[:-1]
    return matrix


@dataclass
class Outcome:
    """What one action got: its status (None for raw socket actions) and whether the store changed."""

    kind: str
    code: grpc.StatusCode | None
    changed: bool
    bug: bool = False


@dataclass
class Target:
    """Sends actions to a server and checks: every call answered, no unhandled errors, refusals change nothing."""

    address: str
    timeout: float = 20.0
    seqs: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.channel = grpc.insecure_channel(self.address, options=[("grpc.max_send_message_length", -1),
                                                                    ("grpc.max_receive_message_length", -1)])
        self.stub = rpc.ReconnaissanceStub(self.channel)
        self.admin = arpc.AdminStub(self.channel)

    def close(self) -> None:
        """Close the channel."""
        self.channel.close()

    def digest(self, also: str = "") -> tuple[int, str]:
        """(version, hash of Stats (every space's classes/examples/version, every client's seq and totals) and of
        the full merged tables of the known spaces plus `also`, the space an action names)."""
        stats = self.admin.Stats(apb.StatsRequest(), timeout=self.timeout)
        h = hashlib.sha256(stats.SerializeToString(deterministic=True))
        known = {s.space for s in stats.spaces}
        for space in sorted(known & ({*SPACES, also} if also else set(SPACES))):
            token = None
            while token != "":  # every page of the table
                reply = self.stub.Pull(pb.PullRequest(space=space, dtype=pb.FLOAT64, page_token=token or ""),
                                       timeout=self.timeout)
                h.update(reply.SerializeToString(deterministic=True))
                token = reply.next_page_token
        return stats.version, h.hexdigest()

    def _seq(self, client: str, wanted: object) -> int:
        last = self.seqs.get(client, 0)
        table = {"next": last + 1, "last": last, "zero": 0, "gap": last + 2, "huge": 2**64 - 1,
                 "old": max(last - 1, 0)}
        return table[wanted] if isinstance(wanted, str) else int(wanted)

    def _push(self, action: dict) -> pb.PushReply:
        ids, counts = action["ids"], list(action["counts"])
        if action["corrupt"] == "counts":
            counts = counts[:-1] if counts else [1]
        deltas = pb.ClassDeltas(class_ids=ids, counts=counts)
        if action["corrupt"] != "no_means":
            deltas.means.CopyFrom(_matrix(action))
        request = pb.PushRequest(client_id=action["client"], space=action["space"],
                                 seq=self._seq(action["client"], action["seq"]), deltas=deltas)
        reply = self.stub.Push(request, timeout=self.timeout)
        self.seqs[action["client"]] = max(self.seqs.get(action["client"], 0), reply.seq)
        return reply

    def _read(self, action: dict, version: int) -> None:
        since = {"version": version, "ahead": version + 1}.get(action["since"], action["since"])
        since = int(since) if not isinstance(since, str) else 0
        kind = action["kind"]
        if kind == "pull":
            self.stub.Pull(pb.PullRequest(space=action["space"], since=since, dtype=action["dtype"]),
                           timeout=self.timeout)
        elif kind == "watch":
            stream = self.stub.Watch(pb.WatchRequest(space=action["space"], since=since, dtype=action["dtype"]),
                                     timeout=0.3)
            try:
                next(stream, None)
            finally:
                stream.cancel()
        elif kind == "info":
            self.stub.Info(pb.InfoRequest(), timeout=self.timeout)
        elif kind == "stats":
            self.admin.Stats(apb.StatsRequest(), timeout=self.timeout)
        else:
            self.admin.Export(apb.ExportRequest(space=action["space"], dtype=action["dtype"],
                                                per_client=action["per_client"]), timeout=self.timeout)

    def _socket(self, action: dict) -> None:
        host, port = self.address.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=2.0) as s:
            s.sendall((HTTP2_PREFACE if action["preface"] else b"") + action["payload"])
            try:
                s.recv(4096)
            except (TimeoutError, ConnectionError):
                pass

    def send(self, action: dict) -> Outcome:
        """Perform one action; compare the store before and after."""
        before = self.digest(action.get("space", ""))
        code: grpc.StatusCode | None = grpc.StatusCode.OK
        try:
            if action["kind"] == "push":
                self._push(action)
            elif action["kind"] == "raw":
                self.channel.unary_unary(action["method"])(action["payload"], timeout=self.timeout)
            elif action["kind"] == "socket":
                self._socket(action)
                code = None
            elif action["kind"] == "million":
                self._million(action)
            elif action["kind"] == "bound":
                self._bound(action)
            elif action["kind"] == "stream":
                code = self._stream(action)
            else:
                self._read(action, before[0])
        except grpc.RpcError as error:
            code = error.code()
        after = self.digest(action.get("space", ""))
        changed = after != before
        bug = code in BUG_STATUSES and not (action["kind"] == "raw" and code == grpc.StatusCode.INTERNAL)
        if action["kind"] == "watch" and code == grpc.StatusCode.DEADLINE_EXCEEDED:
            code = grpc.StatusCode.OK  # an idle watch simply had nothing to stream yet
        refused = code is not None and code != grpc.StatusCode.OK
        bug = bug or (changed and (refused or action["kind"] not in ("push", "raw", "bound", "stream")))
        bug = bug or (action["kind"] == "stream" and code == grpc.StatusCode.DEADLINE_EXCEEDED)  # wedged
        return Outcome(action["kind"], code, changed, bug)

    def _stream(self, action: dict) -> grpc.StatusCode:
        """Valid pushes on one PushStream call, then a cancel (after reading the answers, or before) or a close;
        then the server must answer a call within `ANSWER_SECONDS` (DEADLINE_EXCEEDED: it is wedged, a bug)."""
        first = self.seqs.get(STREAMER, 0) + 1
        requests = [pb.PushRequest(client_id=STREAMER, space="s", seq=first + i, deltas=codec.encode_deltas(
            Deltas(["c0"], [1], np.ones((1, SPACES["s"]))))) for i in range(action["pushes"])]
        outbox: queue.Queue = queue.Queue()
        for request in requests:
            outbox.put(request)
        call = self.stub.PushStream(iter(outbox.get, None), timeout=self.timeout)
        answered = 0
        try:
            while action["end"] != "cancel_unread" and answered < len(requests):
                answered += len(next(call).replies)
        finally:
            if action["end"] == "close":
                outbox.put(None)
                list(call)
            call.cancel()
        seqs = {c.client_id: c.last_seq for c in self.admin.Stats(apb.StatsRequest(), timeout=ANSWER_SECONDS).clients}
        self.seqs[STREAMER] = seqs.get(STREAMER, 0)
        return grpc.StatusCode.OK

    def _bound(self, action: dict) -> None:
        """A valid push of 65,536 classes at the largest count: a space reaches its total bound after 64."""
        n = 65_536
        deltas = pb.ClassDeltas(class_ids=[f"b{i}" for i in range(n)], counts=[MAX_COUNT] * n,
                                means=pb.Matrix(dtype=pb.FLOAT32, dim=1, rows=n, data=bytes(4 * n)))
        self._push_message(pb.PushRequest(client_id=action.get("client", "bounder"), space=action["space"],
                                          seq=self._seq(action.get("client", "bounder"), "next"), deltas=deltas))

    def _push_message(self, request: pb.PushRequest) -> None:
        reply = self.stub.Push(request, timeout=120)
        self.seqs[request.client_id] = max(self.seqs.get(request.client_id, 0), reply.seq)

    def _million(self, action: dict) -> None:
        n, dim = 1_000_000, action.get("dim", 1)
        deltas = pb.ClassDeltas(class_ids=[f"m{i}" for i in range(n)], counts=[1] * n,
                                means=pb.Matrix(dtype=pb.FLOAT32, dim=dim, rows=n, data=bytes(4 * n * dim)))
        self.stub.Push(pb.PushRequest(client_id="alice", space="s", seq=self._seq("alice", "next"), deltas=deltas),
                       timeout=120)
