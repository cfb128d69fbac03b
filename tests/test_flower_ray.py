"""Flower's Simulation Engine on an existing Ray cluster: two Ray nodes on loopback (`ray start --head`, then
`ray start --address`), shared by the tests of this module and stopped by their own handles. From Python
(`init_args.address`): 20 virtual clients whose ClientApps run on both nodes, merged exactly like the
in-process transport. With `flwr run .` (`RAY_ADDRESS` in the SuperLink's environment): a ClientApp actor on
each node, and the results written."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from helpers import REPO_ROOT, free_port, pids_mentioning

pytest.importorskip("ray")

from flwr.simulation import run_simulation  # noqa: E402

from fedrecon.client.flower import get_encoder, load_data  # noqa: E402
from fedrecon.client.memory import PrototypeMemory  # noqa: E402
from fedrecon.client.replica import Replica  # noqa: E402
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
            Replica(f"client-{k}", space, memory).push(transport.merger(f"client-{k}"))
        table, _ = transport.pull("check", space, 0)
    return table


def alive(pid: int) -> bool:
    """Whether a process exists (and is not a zombie)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture(scope="module")
def cluster():
    """Two Ray nodes on 127.0.0.1, 1 CPU each; afterwards, checks that stop() left none of their processes."""
    with LocalRayCluster(nodes=2, cpus=1) as started:
        roots = started.pids()
        yield started
    assert not any(alive(pid) for pid in roots), "a Ray node outlived stop()"


def test_simulation_on_a_two_node_ray_cluster(cluster, tmp_path) -> None:
    nodes_dir = tmp_path / "nodes"
    nodes_dir.mkdir()
    settings = experiments_app.ExperimentSettings(
        dataset="glyphs", data_dir=str(tmp_path / "cache"), encoder="random", glyph_classes=60, glyph_drawings=8,
        clients=20, missions=1, ways=3, shots=4, queries=4, seed=5, eval_clients=2, node_log=str(nodes_dir))
    store = PrototypeStore()
    results: list[dict] = []
    run_simulation(experiments_app.make_server_app(settings, results.append, store), experiments_app.client_app,
                   num_supernodes=settings.clients, backend_config=experiments_app.backend_config(1.0, cluster.address))
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


UNRESOLVED, OUTSIDE = -1, -2  # an actor whose node is not known yet; one that runs outside the cluster


def actor_nodes(roots: set[int], seen: dict[int, int], stop: threading.Event) -> None:
    """Until `stop`: map each `ray::ClientAppActor` process to the node (`ray start` root pid) it runs under."""
    while not stop.is_set():
        parents = {}
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                try:
                    parents[int(proc.name)] = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
                    title = (proc / "cmdline").read_bytes().split(b"\0")[0]
                except OSError:
                    continue
                if title.startswith(b"ray::ClientAppActor"):
                    seen.setdefault(int(proc.name), UNRESOLVED)
        for pid in [p for p, root in seen.items() if root == UNRESOLVED]:
            node = pid
            while node in parents and node not in roots and node > 1:
                node = parents[node]
            if node in roots:
                seen[pid] = node
            elif node <= 1:  # the whole chain walked up to init: this actor runs under no cluster node
                seen[pid] = OUTSIDE
            # else a process on the chain ended between two reads: left UNRESOLVED, tried again next time
        stop.wait(0.3)


def test_flwr_run_uses_the_cluster_in_ray_address(cluster, tmp_path) -> None:
    """`flwr run .` (the product apps, a local simulation SuperLink) with RAY_ADDRESS set: Ray joins the cluster."""
    home = tmp_path / "flwr-home"
    home.mkdir()
    bindir = str(Path(sys.executable).parent)
    out = tmp_path / "results.json"
    env = {**os.environ, "FLWR_HOME": str(home), "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}",
           "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "RAY_ADDRESS": cluster.address,
           "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(free_port()), "FLWR_LOCAL_CONTROL_API_PORT": str(free_port())}
    overrides = (f"clients=6 missions=1 ways=2 shots=2 queries=2 glyph-classes=20 glyph-drawings=6 encoder='random' "
                 f"data-dir='{tmp_path / 'cache'}' out='{out}'")
    seen: dict[int, int] = {}
    stop = threading.Event()
    watcher = threading.Thread(target=actor_nodes, args=(set(cluster.pids()), seen, stop), daemon=True)
    watcher.start()
    try:  # ClientApp actors need 1 CPU (Flower's default, 2, fits neither node)
        run = subprocess.run([f"{bindir}/flwr", "run", ".", "--federation-config",
                              "num-supernodes=6 client-resources-num-cpus=1", "--stream", "--run-config", overrides],
                             env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    finally:
        stop.set()
        watcher.join()
        for pid in pids_mentioning(str(home)):  # the local SuperLink outlives `flwr run`: stop the one started here
            os.kill(pid, signal.SIGTERM)
    assert out.exists(), run.stdout[-3000:] + run.stderr[-3000:]
    assert json.loads(out.read_text())["curve"][-1][0] == 12
    # an actor under each node and none outside the cluster; an actor that ended before its chain of parents
    # could be read (its node unknown) proves nothing either way (that made this test flaky)
    assert set(seen.values()) - {UNRESOLVED} == set(cluster.pids()), seen
