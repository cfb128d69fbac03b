"""The `flower` transport for the experiments runner: pushes and pulls travel as Flower messages.

The transport starts Flower's Simulation Engine (Ray) in a background thread with one virtual SuperNode per
experiment client, running the experiments' ClientApp (`flower_app.client_app`, whose `query.relay`
handler echoes). Its ServerApp serves the runner's calls one at a time: a push sends the client's
outgoing deltas to that client's ClientApp, whose reply carries them back up (Flower is server-driven, so
the client->server leg is a reply), and the server merges the reply into a `PrototypeStore` (the same
store and merge as `inproc`/`grpc`); a pull sends the classes changed since a version down to the
client's ClientApp and returns what it echoes. Same merge, so the same prototypes and accuracies as the
other transports; bytes are the Flower records' sizes. Importing this module registers `flower`.
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future
from typing import Any

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

from fedrecon.experiments.flower_app import RELAY
from fedrecon.experiments.transports import TRANSPORTS, Transport, TransportError
from fedrecon.proto.flower_records import prototypes_record, read_prototypes
from fedrecon.proto.payloads import Deltas, PushAck, Snapshot
from fedrecon.server.flower_app import wait_for_nodes
from fedrecon.server.store import PrototypeStore

DEFAULT_NODES = 8


class FlowerTransport(Transport):
    """Push/pull over Flower messages between a ServerApp (holding the store) and one ClientApp per client."""

    name = "flower"

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        super().__init__(config)
        from flwr.simulation import run_simulation

        from fedrecon.experiments.flower_app import client_app

        self.store = PrototypeStore(self.config.get("db"))
        self.nodes_wanted = int(self.config.get("nodes") or self.config.get("clients") or DEFAULT_NODES)
        self.node_of: dict[str, int] = {}
        self._requests: queue.Queue[tuple[str, dict[str, Any], Future] | None] = queue.Queue()
        self._ready: Future = Future()
        server_app = ServerApp()

        @server_app.main()
        def main(grid: Grid, context: Context) -> None:
            self._serve(grid)

        backend = {"client_resources": {"num_cpus": float(self.config.get("num_cpus", 1.0)), "num_gpus": 0.0},
                   "init_args": {"logging_level": "error"}}
        self._thread = threading.Thread(
            target=self._run, args=(run_simulation, server_app, client_app, backend), name="fedrecon-flower",
            daemon=True)
        self._thread.start()
        self._ready.result(timeout=float(self.config.get("start_timeout", 300)))

    def _run(self, run_simulation: Any, server_app: ServerApp, client_app: Any, backend: dict) -> None:
        try:
            run_simulation(server_app, client_app, num_supernodes=self.nodes_wanted, backend_config=backend)
        except BaseException as exc:  # noqa: BLE001  (surface anything, SystemExit included, to the caller)
            if not self._ready.done():
                self._ready.set_exception(TransportError(f"Flower simulation failed to start: {exc!r}"))
        finally:
            if not self._ready.done():
                self._ready.set_exception(TransportError("Flower simulation ended before it was ready"))

    def _serve(self, grid: Grid) -> None:
        try:
            self.nodes = wait_for_nodes(grid, self.nodes_wanted, float(self.config.get("start_timeout", 300)))
        except RuntimeError as exc:
            self._ready.set_exception(TransportError(str(exc)))
            return
        self._ready.set_result(True)
        while True:
            item = self._requests.get()
            if item is None:
                return
            op, payload, future = item
            try:
                future.set_result(self._round_trip(grid, payload))
            except Exception as exc:  # noqa: BLE001  (hand the failure to the waiting caller)
                future.set_exception(exc)

    def _round_trip(self, grid: Grid, payload: dict[str, Any]) -> tuple[Deltas, int]:
        node = self.node_of.setdefault(payload["client"], self.nodes[len(self.node_of) % len(self.nodes)])
        record = prototypes_record(payload["counts"], payload["means"], self.dtype, payload.get("dim", 0))
        config = ConfigRecord({"class-ids": list(payload["class_ids"]), "op": payload["op"]})
        msg = Message(content=RecordDict({"prototypes": record, "config": config}), message_type=RELAY,
                      dst_node_id=node)
        replies = list(grid.send_and_receive([msg], timeout=float(self.config.get("timeout", 120))))
        if not replies or replies[0].has_error():
            reason = replies[0].error.reason if replies else "no reply"
            raise TransportError(f"flower relay to node {node} failed: {reason}")
        reply = replies[0].content
        deltas = read_prototypes(reply["prototypes"], list(reply["config"]["class-ids"]),
                                 allow_empty=payload["op"] == "pull")
        return deltas, reply["prototypes"].count_bytes() + sum(len(c) for c in deltas.class_ids)

    def _call(self, payload: dict[str, Any]) -> tuple[Deltas, int]:
        if not self._thread.is_alive():
            raise TransportError("the Flower simulation is not running")
        future: Future = Future()
        self._requests.put((payload["op"], payload, future))
        return future.result(timeout=float(self.config.get("timeout", 120)) + 30)

    def push(self, client_id: str, seq: int, space: str, deltas: Deltas) -> tuple[PushAck, int]:
        """Send the deltas up through the client's ClientApp and merge what arrives; (ack, bytes up)."""
        arrived, nbytes = self._call({"op": "push", "client": client_id, "class_ids": list(deltas.class_ids),
                                      "counts": deltas.counts, "means": deltas.means})
        return self.store.push(client_id, seq, space, arrived), nbytes

    def pull(self, client_id: str, space: str, since: int, epoch: str = "") -> tuple[Snapshot, int]:
        """Send the classes changed since `since` down to the client's ClientApp; (what it received, bytes)."""
        pulled = self.store.pull(space, since, epoch)
        (ids, counts, means), nbytes = self._call({"op": "pull", "client": client_id, "class_ids": pulled.class_ids,
                                                   "counts": pulled.counts, "means": pulled.means,
                                                   "dim": self.store.dims.get(space, 0)})
        return Snapshot(space, pulled.version, ids, counts, means), nbytes

    def close(self) -> None:
        """Stop the ServerApp loop (which ends the simulation) and close the store."""
        if self._thread.is_alive():
            self._requests.put(None)
            self._thread.join(timeout=120)
        self.store.close()


TRANSPORTS["flower"] = FlowerTransport
