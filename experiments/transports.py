"""How the fedrecon method reaches the merge service: in process (`inproc`) or a real server over gRPC (`grpc`).

A transport serves many simulated clients; `Transport.merger(client_id)` is one client's `Merger`, which that
client's `Replica` syncs with (the replica numbers the pushes).

Both run the same server code (`ReconnaissanceService` over a `PrototypeStore`) and the same wire codec, so
they give bit-identical prototypes and byte counts for the same pushes. `TRANSPORTS` maps a name to a
factory `(config) -> Transport`; other modules (e.g. `experiments/flower_transport.py`) add their own.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import grpc

from fedrecon.client.grpc_merger import GrpcMerger, ack_of
from fedrecon.client.pages import pulled_from_reply
from fedrecon.experiments.process import ServerProcess
from fedrecon.proto import codec
from fedrecon.proto.payloads import Deltas, PushAck, Snapshot
from fedrecon.proto.v1 import recon_pb2 as pb
from fedrecon.server.service import ReconnaissanceService
from fedrecon.server.store import PrototypeStore


class TransportError(RuntimeError):
    """The merge service refused a call or could not be reached."""


class Transport(ABC):
    """Push numbered deltas and pull merged prototypes for many clients; returns message sizes for byte counting.

    `merger(client_id)` is one client's `proto.merger.Merger` over the transport (what its `Replica` syncs with).
    """

    name = "transport"

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        self.config = dict(config or {})
        self.dtype: str = self.config.get("dtype", "float32")
        codec.dtype_code(self.dtype)

    @abstractmethod
    def push(self, client_id: str, seq: int, space: str, deltas: Deltas) -> tuple[PushAck, int]:
        """Push one client's numbered deltas; returns (the store's acknowledgement, request bytes)."""

    @abstractmethod
    def pull(self, client_id: str, space: str, since: int, epoch: str = "") -> tuple[Snapshot, int]:
        """Classes of `space` changed since `since`, as `client_id` receives them; returns (pulled, reply bytes)."""

    def merger(self, client_id: str) -> ClientMerger:
        """One client's merger over this transport, counting the bytes it sends and receives."""
        return ClientMerger(self, client_id)

    def close(self) -> None:
        """Stop what the transport started (idempotent)."""
        return None

    def __enter__(self) -> Transport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ClientMerger:
    """A `Merger` for one client over a transport: its pushes and pulls, with their bytes up and down."""

    def __init__(self, transport: Transport, client_id: str) -> None:
        self.transport = transport
        self.client_id = client_id
        self.bytes_up = 0
        self.bytes_down = 0

    def push(self, client_id: str, seq: int, space: str, deltas: Deltas) -> PushAck:
        """Push through the transport (Merger)."""
        ack, nbytes = self.transport.push(client_id, seq, space, deltas)
        self.bytes_up += nbytes
        return ack

    def pull(self, space: str, since: int, epoch: str = "") -> Snapshot:
        """Pull through the transport (Merger)."""
        pulled, nbytes = self.transport.pull(self.client_id, space, since, epoch)
        self.bytes_down += nbytes
        return pulled


def push_request_size(client_id: str, space: str, seq: int, deltas: Deltas, dtype: str) -> int:
    """Serialized size of the PushRequest these deltas make (what goes up the wire)."""
    encoded = codec.encode_deltas(deltas, dtype)
    return pb.PushRequest(client_id=client_id, space=space, seq=seq, deltas=encoded).ByteSize()


def pull_reply_size(pulled: Snapshot, dtype: str) -> int:
    """Serialized size of the PullReply that carried `pulled` (re-encoding gives the same bytes)."""
    classes = codec.encode_deltas(pulled.deltas, dtype)
    return pb.PullReply(space=pulled.space, version=pulled.version, classes=classes, epoch=pulled.epoch).ByteSize()


class _DirectContext:
    """The bits of `grpc.ServicerContext` the service uses, for calling it without a network."""

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise TransportError(f"{code.name}: {details}")

    def set_trailing_metadata(self, metadata: object) -> None:
        pass

    def is_active(self) -> bool:
        return True

    def invocation_metadata(self) -> tuple:
        return ()


class InprocTransport(Transport):
    """The service and an in-memory store in this process: same code path as the server, no sockets."""

    name = "inproc"

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        super().__init__(config)
        self.store = PrototypeStore(self.config.get("db"))
        self.service = ReconnaissanceService(self.store)
        self._context = _DirectContext()

    def push(self, client_id: str, seq: int, space: str, deltas: Deltas) -> tuple[PushAck, int]:
        """Encode, hand to the service's Push, return (ack, request bytes)."""
        request = pb.PushRequest(client_id=client_id, space=space, seq=seq,
                                 deltas=codec.encode_deltas(deltas, self.dtype))
        return ack_of(self.service.Push(request, self._context)), request.ByteSize()

    def pull(self, client_id: str, space: str, since: int, epoch: str = "") -> tuple[Snapshot, int]:
        """The service's Pull, decoded like a client decodes it."""
        request = pb.PullRequest(space=space, since=since, dtype=codec.dtype_code(self.dtype), epoch=epoch)
        reply = self.service.Pull(request, self._context)
        return pulled_from_reply(reply), reply.ByteSize()

    def close(self) -> None:
        """Close the store."""
        self.store.close()


class GrpcTransport(Transport):
    """A real server process; each client id gets its own `GrpcMerger` channel over loopback."""

    name = "grpc"

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        super().__init__(config)
        address = self.config.get("address")
        self.server = None if address else ServerProcess(extra=self.config.get("server_args", ())).start()
        self.address = address or self.server.address
        self.clients: dict[str, GrpcMerger] = {}

    def client(self, client_id: str) -> GrpcMerger:
        """The channel of one client (opened on first use)."""
        if client_id not in self.clients:
            self.clients[client_id] = GrpcMerger(self.address, dtype=self.dtype, timeout=30.0)
        return self.clients[client_id]

    def push(self, client_id: str, seq: int, space: str, deltas: Deltas) -> tuple[PushAck, int]:
        """A real Push RPC (retried by the merger under the same number)."""
        client = self.client(client_id)
        request = client.request(client_id, seq, space, deltas)
        try:
            return ack_of(client.send(request)), request.ByteSize()
        except grpc.RpcError as error:
            raise TransportError(f"push of {client_id} failed: {error.code().name}: {error.details()}") from error

    def pull(self, client_id: str, space: str, since: int, epoch: str = "") -> tuple[Snapshot, int]:
        """A real Pull RPC."""
        try:
            pulled = self.client(client_id).pull(space, since, epoch)
        except grpc.RpcError as error:
            raise TransportError(f"pull of {client_id} failed: {error.code().name}: {error.details()}") from error
        return pulled, pull_reply_size(pulled, self.dtype)

    def close(self) -> None:
        """Close every channel and stop the server process."""
        for c in self.clients.values():
            c.close()
        self.clients.clear()
        if self.server is not None:
            self.server.stop()
            self.server = None


TRANSPORTS: dict[str, Callable[[dict[str, Any]], Transport]] = {
    "inproc": InprocTransport,
    "grpc": GrpcTransport,
}


def make_transport(name: str, config: dict[str, Any] | None = None) -> Transport:
    """Build a registered transport; loads `experiments/flower_transport.py` lazily for `flower`."""
    if name not in TRANSPORTS:
        try:
            import fedrecon.experiments.flower_transport  # noqa: F401  (registers itself)
        except ModuleNotFoundError as error:  # only "the module is not there"; its own import errors surface
            if error.name != "fedrecon.experiments.flower_transport":
                raise
    if name not in TRANSPORTS:
        raise ValueError(f"unknown transport {name!r}; known: {sorted(TRANSPORTS)}")
    return TRANSPORTS[name](config or {})
