"""`ReconClient`: the client library's handle on one server: exactly-once pushes through its `Outbox` (a durable,
store-bound state over the stateless `GrpcMerger`), and pulls, watch and info, remembering each space's version."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from fedrecon.client.grpc_merger import GrpcMerger
from fedrecon.client.memory import PrototypeMemory
from fedrecon.client.outbox import AuthRefused, Outbox, PushRefused, push_size
from fedrecon.client.state import ClientState
from fedrecon.proto.channel import ChannelSecurity
from fedrecon.proto.payloads import Deltas, PushAck, Snapshot

__all__ = ["AuthRefused", "PushRefused", "ReconClient", "push_size"]  # the library's names, defined in `outbox`


class ReconClient:
    """One server's client: exactly-once pushes via its `Outbox`, over a `GrpcMerger`; pull, watch, info."""

    def __init__(
        self,
        address: str,
        client_id: str = "",
        *,
        state_path: str | Path | None = None,
        timeout: float = 10.0,
        retries: int = 8,
        backoff: float = 0.1,
        deadline: float | None = None,
        connect_timeout: float | None = 5.0,
        dtype: str = "float32",
        security: ChannelSecurity | None = None,
        state: ClientState | None = None,
    ) -> None:
        self.address = address
        self.client_id = client_id
        self.merger = GrpcMerger(address, timeout=timeout, retries=retries, backoff=backoff, deadline=deadline,
                                 connect_timeout=connect_timeout, dtype=dtype, security=security)
        self.state = state if state is not None else ClientState(state_path, client_id)
        self._owns_state = state is None
        self.outbox = Outbox(self.merger, self.state, client_id)
        self.versions: dict[str, int] = {}
        self.epochs: dict[str, str] = {}  # the server epoch of each space's version

    def close(self) -> None:
        """Close the channel (and the state, if this client opened it)."""
        self.merger.close()
        if self._owns_state:
            self.state.close()

    def __enter__(self) -> ReconClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def store_id(self) -> str:
        """The server's store id (asked once per client)."""
        return self.merger.server_info()["store_id"]

    def bind(self) -> None:
        """Bind the state to this server's store (`Outbox.bind`)."""
        self.outbox.bind()

    def resume(self, memory: PrototypeMemory | None = None, space: str = "") -> PushAck | None:
        """Send again what was pending when the process stopped (`Outbox.resume`)."""
        return self.outbox.resume(memory, space)

    def push(self, space: str, class_ids: Sequence[str], counts: Sequence[int] | np.ndarray, means: np.ndarray,
             dtype: str | None = None, source: str = "", again: bool = False) -> PushAck:
        """Push per-class deltas (count, mean) for one space, once durable (`Outbox.push`)."""
        return self.outbox.push(space, Deltas(list(class_ids), counts, means), dtype, source, again)

    def push_many(self, space: str, pushes: Sequence[Deltas], dtype: str | None = None,
                  memory: PrototypeMemory | None = None) -> list[PushAck]:
        """Push several deltas (`Deltas`, or (class_ids, counts, means) tuples) as consecutive numbered pushes on
        one stream (`Outbox.push_many`)."""
        return self.outbox.push_many(space, pushes, dtype, memory)

    def push_memory(self, memory: PrototypeMemory, space: str, dtype: str | None = None) -> list[PushAck]:
        """Push a memory's un-pushed deltas within the server's limits (`Outbox.push_memory`)."""
        return self.outbox.push_memory(memory, space, dtype)

    def pull(self, space: str, since: int | None = None, dtype: str | None = None,
             epoch: str | None = None) -> Snapshot:
        """Merged prototypes changed since `since` (default: the version this client last pulled), `since` from
        `epoch` (default: that pull's); see `GrpcMerger.pull` (a `reset` snapshot replaces the caller's table)."""
        if since is None:
            since, epoch = self.versions.get(space, 0), self.epochs.get(space, "")
        result = self.merger.pull(space, since, epoch or "", dtype)
        self.versions[space], self.epochs[space] = result.version, result.epoch
        return result

    def watch(self, space: str, since: int = 0, dtype: str | None = None, epoch: str = "") -> Iterator[Snapshot]:
        """Stream changes of a space as they are merged (`GrpcMerger.watch`), remembering each one's version."""
        for result in self.merger.watch(space, since, dtype, epoch):
            self.versions[space], self.epochs[space] = result.version, result.epoch
            yield result

    def info(self) -> dict:
        """Server version, store id, global version, spaces, limits."""
        return self.merger.info()
