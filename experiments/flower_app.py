"""The experiments' Flower app: the product apps plus the FedAvg baseline and the runner's relay.

`client_app` is the product ClientApp's handlers (`fedrecon.client.flower.register`) plus `*.fedavg`
(the baseline's client side) and `query.relay` (the `flower` transport's echo). `make_server_app` is
the product ServerApp run with `ExperimentSettings`, whose `method` picks prototype averaging or
Flower's FedAvg on the same plan; `app` is that ServerApp built from the run config. The benchmarks
and the runner's `flower` transport use these; `flwr run .` (pyproject's components) uses the product apps.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from fedrecon.client.flower import register
from fedrecon.experiments.flower_fedavg import ACTION, describe_model, evaluate_fedavg, run_fedavg, train_fedavg
from fedrecon.proto.flower_records import prototypes_record, read_prototypes
from fedrecon.server import flower_app as product
from fedrecon.server.store import PrototypeStore

METHODS = ("fedrecon", "fedavg")
RELAY_ACTION = "relay"
RELAY = f"{MessageType.QUERY}.{RELAY_ACTION}"


@dataclass
class ExperimentSettings(product.FlowerSettings):
    """The product run settings plus the method and FedAvg's local training (keys as in the run config)."""

    method: str = "fedrecon"
    epochs: int = 50
    lr: float = 0.001
    node_log: str = ""  # a folder: each ClientApp call appends the Ray node and process that ran it (`node_witness`)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be 'fedrecon' or 'fedavg', got {self.method!r}")

    def task(self) -> dict[str, Any]:
        """The product task, plus `node-log` when set."""
        return {**super().task(), **({"node-log": self.node_log} if self.node_log else {})}


def run_method(grid: Grid, settings: ExperimentSettings, store: PrototypeStore | None = None) -> dict[str, Any]:
    """Run the settings' method: the product's prototype averaging, or the FedAvg baseline."""
    if settings.method == "fedavg":
        return run_fedavg(grid, settings)
    return product.run_fedrecon(grid, settings, store)


def make_server_app(
    settings: ExperimentSettings | None = None, sink: Callable[[dict[str, Any]], None] | None = None,
    store: PrototypeStore | None = None,
) -> ServerApp:
    """The product ServerApp running `run_method` on `ExperimentSettings` (arguments as the product's)."""
    return product.make_server_app(settings, sink, store, run=run_method, settings_type=ExperimentSettings)


def backend_config(num_cpus: float = 1.0, ray_address: str = "") -> dict[str, Any]:
    """The Simulation Engine's backend config: `num_cpus` per ClientApp actor; a Ray of its own sized to this
    host, or with `ray_address` the existing Ray cluster there (Flower passes `init_args` to `ray.init`;
    Ray refuses `num_cpus` when joining a cluster, whose nodes declare their own)."""
    init_args: dict[str, Any] = {"logging_level": "error"}
    if ray_address:
        init_args["address"] = ray_address
    else:
        init_args["num_cpus"] = os.cpu_count() or 1
    return {"client_resources": {"num_cpus": num_cpus, "num_gpus": 0.0}, "init_args": init_args}


def simulate(settings: ExperimentSettings, num_cpus: float = 1.0, ray_address: str = "") -> dict[str, Any]:
    """Run `settings` on Flower's Simulation Engine (one virtual SuperNode per client, `num_cpus` each) with
    the experiments' apps, on a Ray of its own or the cluster at `ray_address`; the results, or SystemExit
    when the run produced none."""
    from flwr.simulation import run_simulation

    results: list[dict[str, Any]] = []
    run_simulation(make_server_app(settings, results.append), client_app, num_supernodes=settings.clients,
                   backend_config=backend_config(num_cpus, ray_address))
    if not results:
        raise SystemExit(f"{settings.method}: the simulation produced no results (see the log above)")
    return results[0]


# --------------------------------------------------------------------------------- client side
def relay(msg: Message, context: Context) -> Message:
    """Relay endpoint of the experiments runner's `flower` transport: returns the prototypes it received
    (a push's deltas going up, or a pull's merged classes that reached this client)."""
    config = msg.content["config"]
    op = str(config["op"])
    ids, counts, means = read_prototypes(msg.content["prototypes"], list(config["class-ids"]), allow_empty=op == "pull")
    dtype = str(msg.content["prototypes"]["means"].numpy().dtype)
    reply = RecordDict({"prototypes": prototypes_record(counts, means, dtype, means.shape[1] if means.ndim == 2 else 0),
                        "config": ConfigRecord({"class-ids": ids, "op": op})})
    return Message(reply, reply_to=msg)


def node_witness(msg: Message, context: Context, call_next: Callable[[Message, Context], Message]) -> Message:
    """ClientApp mod: with `node-log` in the message's config, append `node pid type client` to
    `NODE-LOG/<node>.<pid>.log` (the Ray node id, or `local` outside Ray), so a run can show where its client
    work ran (e.g. on every node of a Ray cluster)."""
    reply = call_next(msg, context)
    config = msg.content.get("config")
    if isinstance(config, ConfigRecord) and config.get("node-log"):
        import ray

        node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else "local"
        path = Path(str(config["node-log"])) / f"{node}.{os.getpid()}.log"
        with path.open("a") as log:
            log.write(f"{node} {os.getpid()} {msg.metadata.message_type} {config.get('client', '-')}\n")
    return reply


def _reply(handler: Callable[[Message, Context], RecordDict]) -> Callable[[Message, Context], Message]:
    """A ClientApp handler that answers `msg` with what `handler` returns."""

    @functools.wraps(handler)
    def answer(msg: Message, context: Context) -> Message:
        return Message(handler(msg, context), reply_to=msg)

    return answer


def make_client_app() -> ClientApp:
    """A ClientApp with fedrecon's handlers, the FedAvg baseline's (`*.fedavg`) and the relay (`query.relay`)."""
    client_app = register(ClientApp(mods=[node_witness]))
    client_app.query(ACTION)(_reply(describe_model))
    client_app.train(ACTION)(_reply(train_fedavg))
    client_app.evaluate(ACTION)(_reply(evaluate_fedavg))
    client_app.query(RELAY_ACTION)(relay)
    return client_app


client_app = make_client_app()
app = make_server_app()
