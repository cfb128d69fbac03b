"""Flower app: mission planning, record codec, a Simulation Engine run that must merge exactly like the gRPC
and in-process transports do for the same seed, and a real SuperLink + 2 SuperNodes deployment run with
`flwr run` that must reach the simulation's accuracy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import ray  # noqa: F401 - required: the Simulation Engine runs on it
from flwr.simulation import run_simulation
from helpers import REPO_ROOT, free_port, wait_until

from fedrecon.client.flower import app as client_app
from fedrecon.client.flower import get_encoder, load_data
from fedrecon.client.memory import PrototypeMemory
from fedrecon.client.replica import Replica
from fedrecon.experiments import flower_app as experiments_app
from fedrecon.experiments.transports import GrpcTransport, InprocTransport
from fedrecon.proto.flower_records import Assignment, prototypes_record, read_prototypes
from fedrecon.server.flower_app import FlowerSettings, make_server_app
from fedrecon.server.flower_plan import plan_missions
from fedrecon.server.store import PrototypeStore

BACKEND = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0}, "init_args": {"num_cpus": 2}}


def small_settings(tmp_path, **extra) -> FlowerSettings:
    """Glyphs, a seeded random Conv4, 2 clients x 2 missions x 3 ways: seconds, not minutes."""
    base = dict(dataset="glyphs", data_dir=str(tmp_path / "cache"), encoder="random", glyph_classes=40,
                glyph_drawings=12, clients=2, missions=2, ways=3, shots=4, queries=4, seed=7)
    return FlowerSettings(**{**base, **extra})


def test_plan_is_seeded_disjoint_and_checked() -> None:
    ids = [f"c{i}" for i in range(30)]
    sizes = [10] * 30
    a = plan_missions(ids, sizes, clients=3, rounds=2, ways=4, shots=3, queries=2, seed=1)
    b = plan_missions(ids, sizes, clients=3, rounds=2, ways=4, shots=3, queries=2, seed=1)
    assert a == b
    learned = [c for row in a.missions for m in row for c in m.classes]
    assert len(learned) == len(set(learned)) == 24
    for row in a.missions:
        for m in row:
            for cid, idx in zip(m.classes, m.images, strict=True):
                assert len(idx) == 3 and not set(idx) & set(a.queries[cid])
    assert a.superset(1) == learned[:12]
    slices = a.slices(a.superset(2), 5)
    assert sum(len(s.classes) for s in slices) == 24
    with pytest.raises(ValueError, match="only 30"):
        plan_missions(ids, sizes, clients=4, rounds=2, ways=4, shots=3, queries=2, seed=1)
    with pytest.raises(ValueError, match="fewer than shots"):
        plan_missions(ids, sizes, clients=1, rounds=1, ways=1, shots=8, queries=4, seed=1)


def test_records_round_trip_and_refuse_bad_input() -> None:
    means = np.random.default_rng(0).normal(size=(3, 5))
    record = prototypes_record(np.array([1, 2, 3]), means, "float64")
    ids, counts, back = read_prototypes(record, ["a", "b", "c"])
    assert ids == ["a", "b", "c"] and counts.tolist() == [1, 2, 3] and np.array_equal(back, means)
    with pytest.raises(ValueError, match="2 class ids"):
        read_prototypes(record, ["a", "b"])
    with pytest.raises(ValueError, match="wire dtype"):
        prototypes_record(np.array([1]), means[:1], "int8")
    with pytest.raises(ValueError, match="'bfloat16' cannot travel in a Flower record"):
        prototypes_record(np.array([1]), means[:1], "bfloat16")
    a = Assignment(("x", "y"), ((1, 2), (3,)))
    from flwr.app import ConfigRecord

    assert Assignment.from_config(ConfigRecord(a.to_config("m")), "m") == a
    with pytest.raises(ValueError, match="lacks"):
        Assignment.from_config(ConfigRecord({}), "m")


def expected_deltas(settings: FlowerSettings):
    """What each client must push (its memory's local deltas), computed here with the same data, encoder and plan
    (no Flower)."""
    data = load_data("glyphs", settings.data_dir, settings.glyph_classes, settings.glyph_drawings,
                     settings.data_seed)
    encoder = get_encoder("random", settings.encoder_seed, "glyphs")
    plan = plan_missions(data.class_ids, [data.count(c) for c in data.class_ids], clients=settings.clients,
                         rounds=settings.missions, ways=settings.ways, shots=settings.shots,
                         queries=settings.queries, seed=settings.seed)
    for row in plan.missions:
        pushes = []
        for k, mission in enumerate(row):
            memory = PrototypeMemory()
            for cid, idx in zip(mission.classes, mission.images, strict=True):
                memory.add_examples([cid] * len(idx), encoder.embed(data.images(cid)[list(idx)]))
            pushes.append((f"flower-{k}", memory))
        yield pushes


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    """One Flower Simulation Engine run (Ray, 3 virtual clients); its settings, results and store."""
    tmp = tmp_path_factory.mktemp("flower")
    settings = small_settings(tmp)
    store = PrototypeStore()
    results: list[dict] = []
    run_simulation(make_server_app(settings, results.append, store), client_app, num_supernodes=settings.clients,
                   backend_config=BACKEND)
    assert results, "the ServerApp produced no results"
    yield settings, results[0], store
    store.close()


def test_simulation_reports_every_round(simulated) -> None:
    settings, results, store = simulated
    rounds = results["rounds"]
    assert [r["round"] for r in rounds] == [1, 2]
    assert [r["classes_seen"] for r in rounds] == [6, 12]
    assert all(r["failures"] == 0 and r["merged_classes"] == 6 for r in rounds)
    assert rounds[-1]["queries"] == 12 * settings.queries
    assert 0.0 < results["final_accuracy"] <= 1.0
    assert store.info()["spaces"][0]["examples"] == 12 * settings.shots
    # round 2's training messages carry nothing new: every client was synced by round 1's evaluation
    assert rounds[1]["bytes_down"] < rounds[0]["eval_bytes_down"]


@pytest.mark.parametrize("transport", [InprocTransport, GrpcTransport])
def test_simulation_merges_like_the_other_transports(simulated, transport) -> None:
    settings, results, store = simulated
    replicas: dict[str, Replica] = {}  # one per client id, numbering its pushes round after round
    with transport({"dtype": settings.dtype}) as other:
        for pushes in expected_deltas(settings):
            for client_id, memory in pushes:
                replica = replicas.setdefault(client_id, Replica(client_id, results["space"]))
                replica.memory.local.merge(memory.local)
                replica.push(other.merger(client_id))
        theirs, _ = other.pull("check", results["space"], 0)
    ours = store.pull(results["space"], 0)
    assert sorted(ours.class_ids) == sorted(theirs.class_ids)
    order = [theirs.class_ids.index(c) for c in ours.class_ids]
    assert np.array_equal(ours.counts, theirs.counts[order])
    np.testing.assert_allclose(ours.means, theirs.means[order], rtol=1e-6, atol=1e-6)
    # the federation's accuracy is nearest-prototype accuracy over the superset with the merged table
    data = load_data("glyphs", settings.data_dir, settings.glyph_classes, settings.glyph_drawings, settings.data_seed)
    plan = plan_missions(data.class_ids, [data.count(c) for c in data.class_ids], clients=settings.clients,
                         rounds=settings.missions, ways=settings.ways, shots=settings.shots,
                         queries=settings.queries, seed=settings.seed)
    memory = PrototypeMemory()
    memory.apply_pull(theirs.class_ids, theirs.counts, theirs.means, theirs.version)
    encoder = get_encoder("random", settings.encoder_seed, "glyphs")
    correct = total = 0
    for cid in plan.superset(settings.missions):
        predicted = memory.classify(encoder.embed(data.images(cid)[list(plan.queries[cid])]))
        correct += sum(p == cid for p in predicted)
        total += len(predicted)
    assert results["final_accuracy"] == pytest.approx(correct / total)


def test_product_app_knows_no_baselines() -> None:
    """The product run config (pyproject) has no method keys; only the experiments' settings choose one."""
    import tomllib

    config = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert FlowerSettings.from_config(config) == FlowerSettings(**{k.replace("-", "_"): v for k, v in config.items()})
    with pytest.raises(ValueError, match="unknown run-config keys \\['epochs', 'method'\\]"):
        FlowerSettings.from_config({**config, "method": "fedavg", "epochs": 1})
    chosen = experiments_app.ExperimentSettings.from_config({**config, "method": "fedavg", "epochs": 1})
    assert (chosen.method, chosen.epochs, chosen.glyph_classes) == ("fedavg", 1, config["glyph-classes"])
    with pytest.raises(ValueError, match="method must be"):
        experiments_app.ExperimentSettings(method="fedavgg")


@pytest.mark.slow
def test_fedavg_baseline_runs_on_flowers_fedavg(tmp_path) -> None:
    """The fedavg baseline: Flower's FedAvg over the same plan; reports accuracy, model bytes, wall time."""
    base = small_settings(tmp_path, missions=1)
    settings = experiments_app.ExperimentSettings(**vars(base), method="fedavg", epochs=1)
    results: list[dict] = []
    run_simulation(experiments_app.make_server_app(settings, results.append), experiments_app.client_app,
                   num_supernodes=settings.clients, backend_config=BACKEND)
    (r,) = results
    assert r["method"] == "fedavg" and len(r["rounds"]) == 1
    assert r["rounds"][0]["classes_seen"] == settings.clients * settings.ways
    assert 0.0 <= r["final_accuracy"] <= 1.0
    # every client downloads and uploads the whole model (Conv4 + head): far more than a prototype merge
    assert r["rounds"][0]["bytes_up"] == settings.clients * r["model_bytes"]
    assert r["model_bytes"] > 100_000


def _spawn(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    handle = log.open("w")
    return subprocess.Popen(argv, env=env, stdout=handle, stderr=subprocess.STDOUT, cwd=REPO_ROOT)


@pytest.mark.slow
def test_deployment_superlink_two_supernodes_matches_simulation(simulated, tmp_path) -> None:
    """flower-superlink + 2 flower-supernode processes on loopback (insecure), the app started with `flwr run`."""
    settings, sim_results, _ = simulated
    bindir = str(Path(sys.executable).parent)
    home = tmp_path / "flwr-home"
    home.mkdir()
    env = {**os.environ, "FLWR_HOME": str(home), "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"}
    link = free_port()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "loopback"\n\n[superlink.loopback]\naddress = "127.0.0.1:{link}"\ninsecure = true\n')
    procs = [_spawn([f"{bindir}/flower-superlink", "--insecure", "--host", "127.0.0.1", "--port", str(link),
                     "--disable-runtime-dependency-installation"], env, tmp_path / "superlink.log")]
    try:
        for i in range(2):
            procs.append(_spawn([f"{bindir}/flower-supernode", "--insecure", "--superlink", f"127.0.0.1:{link}",
                                 "--host", "127.0.0.1", "--port", str(free_port()),
                                 "--node-config", f"data-dir='{settings.data_dir}'"], env, tmp_path / f"node{i}.log"))
        assert wait_until(lambda: (tmp_path / "superlink.log").read_text().count("Activated node_id") >= 2, 120, 0.5), \
            (tmp_path / "superlink.log").read_text()[-3000:]
        out = tmp_path / "deployed.json"
        overrides = (f"clients={settings.clients} missions={settings.missions} ways={settings.ways} "
                     f"shots={settings.shots} queries={settings.queries} seed={settings.seed} encoder='random' "
                     f"glyph-classes={settings.glyph_classes} glyph-drawings={settings.glyph_drawings} "
                     f"data-dir='{tmp_path / 'unused'}' out='{out}'")
        run = subprocess.run([f"{bindir}/flwr", "run", ".", "loopback", "--run-config", overrides, "--stream"],
                             env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=420)
        assert out.exists(), run.stdout[-3000:] + run.stderr[-3000:]
        deployed = json.loads(out.read_text())
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
    assert deployed["space"] == sim_results["space"]
    assert deployed["curve"] == sim_results["curve"]
    assert deployed["final_accuracy"] == sim_results["final_accuracy"]
    assert deployed["store"]["spaces"] == sim_results["store"]["spaces"]
