"""Flower's Simulation Engine on an existing Ray cluster: two Ray nodes on loopback (`ray start --head`, then
`ray start --address`), 20 virtual clients whose ClientApps run on both nodes, merged exactly like the
in-process transport; both nodes are stopped by their own handles."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray")

from flwr.simulation import run_simulation  # noqa: E402

from fedrecon.client.flower import get_encoder, load_data  # noqa: E402
from fedrecon.client.memory import PrototypeMemory  # noqa: E402
from fedrecon.experiments import flower_app as experiments_app  # noqa: E402
from fedrecon.experiments.ray_cluster import LocalRayCluster  # noqa: E402
from fedrecon.experiments.transports import InprocTransport  # noqa: E402
from fedrecon.server.flower_plan import plan_missions  # noqa: E402
from fedrecon.server.store import PrototypeStore  # noqa: E402

pytestmark = pytest.mark.slow


def expected_table(settings: experiments_app.ExperimentSettings, space: str):
    """The merged table the 20 missions must give, pushed here through the in-process transport (no Flower)."""
    data = load_data("glyphs", settings.data_dir, settings.glyph_classes, settings.glyph_drawings, settings.data_seed)
    encoder = get_encoder("random", settings.encoder_seed, "glyphs")
    plan = plan_missions(data.class_ids, [data.count(c) for c in data.class_ids], clients=settings.clients,
                         rounds=1, ways=settings.ways, shots=settings.shots, queries=settings.queries,
                         seed=settings.seed)
    with InprocTransport({"dtype": settings.dtype}) as transport:
        for k, mission in enumerate(plan.missions[0]):
            memory = PrototypeMemory()
            for cid, idx in zip(mission.classes, mission.images, strict=True):
                memory.add_examples([cid] * len(idx), encoder.embed(data.images(cid)[list(idx)]))
            transport.push(f"client-{k}", space, *memory.pending())
        table, _ = transport.pull("check", space, 0)
    return table


def alive(pid: int) -> bool:
    """Whether a process exists (and is not a zombie)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_simulation_on_a_two_node_ray_cluster(tmp_path) -> None:
    nodes_dir = tmp_path / "nodes"
    nodes_dir.mkdir()
    settings = experiments_app.ExperimentSettings(
        dataset="glyphs", data_dir=str(tmp_path / "cache"), encoder="random", glyph_classes=60, glyph_drawings=8,
        clients=20, missions=1, ways=3, shots=4, queries=4, seed=5, eval_clients=2, node_log=str(nodes_dir))
    store = PrototypeStore()
    results: list[dict] = []
    with LocalRayCluster(nodes=2, cpus=1) as cluster:
        roots = cluster.pids()
        run_simulation(experiments_app.make_server_app(settings, results.append, store), experiments_app.client_app,
                       num_supernodes=settings.clients,
                       backend_config=experiments_app.backend_config(1.0, cluster.address))
    assert not any(alive(pid) for pid in roots), "a Ray node outlived stop()"
    (r,) = results
    assert r["rounds"][0]["merged_classes"] == 60 and r["rounds"][0]["failures"] == 0
    assert 0.0 < r["final_accuracy"] <= 1.0

    # both Ray nodes ran ClientApp work, and every mission ran exactly once
    calls = [line.split() for f in nodes_dir.iterdir() for line in f.read_text().splitlines()]
    per_node = Counter(node for node, *_ in calls)
    assert len(per_node) == 2 and "local" not in per_node, per_node
    trained = sorted(int(client) for _, _, kind, client in calls if kind == "train")
    assert trained == list(range(settings.clients))
    assert os.getpid() not in {int(pid) for _, pid, *_ in calls}  # the driver itself ran no ClientApp

    ours = store.pull(r["space"], 0)
    theirs = expected_table(settings, r["space"])
    order = [theirs.class_ids.index(c) for c in ours.class_ids]
    assert sorted(ours.class_ids) == sorted(theirs.class_ids)
    assert np.array_equal(ours.counts, theirs.counts[order])
    np.testing.assert_allclose(ours.means, theirs.means[order], rtol=1e-6, atol=1e-6)
    store.close()
