"""Experiments: schedules, the method interface, fedrecon == centralized, inproc == grpc, results schema."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fedrecon.client.data.glyphs import make_glyphs
from fedrecon.client.encoder import Encoder
from fedrecon.experiments import protocols
from fedrecon.experiments.datasets import class_counts
from fedrecon.experiments.methods import METHODS
from fedrecon.experiments.methods.icarl import herding
from fedrecon.experiments.methods.prototype import EmbeddingCache, FedRecon
from fedrecon.experiments.results import write_all
from fedrecon.experiments.runner import RunData, apply_override, load_config, run_experiment, run_method
from fedrecon.experiments.transports import InprocTransport, make_transport
from fedrecon.proto.merger import next_seq
from fedrecon.proto.payloads import Deltas

TINY = {"epochs": 1, "batch_size": 32, "lr": 1e-3}


@pytest.fixture(scope="module")
def glyphs():
    """30 glyph classes x 12 drawings (deterministic)."""
    return make_glyphs(30, 12, seed=3)


@pytest.fixture(scope="module")
def encoder():
    """An untrained, seeded Conv4 (the tests need a fixed space, not a good one)."""
    return Encoder.random("glyphs", 28, 1, seed=0, device="cpu")


def test_class_incremental_schedule_is_seeded_and_disjoint(glyphs) -> None:
    counts = class_counts(glyphs)
    kw = {"classes": 20, "train_shots": 8, "test_shots": 4, "checkpoints": [5, 10, 15]}
    a = protocols.class_incremental(glyphs.class_ids, counts, np.random.default_rng(1), **kw)
    b = protocols.class_incremental(glyphs.class_ids, counts, np.random.default_rng(1), **kw)
    assert [len(r.visits) for r in a.rounds] == [5, 5, 5, 5]  # the last checkpoint is the class count
    assert [a.seen_after(i)[-1] for i in range(4)] == [b.seen_after(i)[-1] for i in range(4)]
    for rnd in a.rounds:
        for v in rnd.visits:
            assert v.client == 0 and len(v.train) == 8
            assert not set(v.train.tolist()) & set(a.test[v.class_id].tolist())
    with pytest.raises(ValueError, match="needs 8 train"):
        protocols.class_incremental(glyphs.class_ids, counts, np.random.default_rng(1), classes=5, train_shots=8,
                                    test_shots=8)


def test_federated_non_iid_overlap_and_revisits(glyphs) -> None:
    counts = class_counts(glyphs)
    s = protocols.federated(glyphs.class_ids, counts, np.random.default_rng(0), classes=30, clients=3,
                            classes_per_mission=2, train_shots=8, test_shots=4, non_iid=True, overlap=0.5,
                            revisit=0.5, min_shots=3)
    by_class: dict[str, list[tuple[int, protocols.Visit]]] = {}
    for r, rnd in enumerate(s.rounds):
        for v in rnd.visits:
            by_class.setdefault(v.class_id, []).append((r, v))
    assert len(by_class) == 30
    shots = {sum(len(v.train) for _, v in vs) for vs in by_class.values()}
    assert len(shots) > 1 and max(shots) <= 8  # unequal shots
    assert any(len({v.client for r, v in vs if r == vs[0][0]}) > 1 for vs in by_class.values())  # overlap
    assert any(r > vs[0][0] for vs in by_class.values() for r, _ in vs)  # a later revisit
    for cid, vs in by_class.items():
        used = np.concatenate([v.train for _, v in vs])
        assert len(set(used.tolist())) == len(used)  # every drawing learned once
        assert not set(used.tolist()) & set(s.test[cid].tolist())


def test_fed_recon_benchmark_uses_every_field_image_once() -> None:
    order = [f"n{i:03d}" for i in range(8)]
    counts = dict.fromkeys(order, 50)
    s = protocols.fed_recon_benchmark(order, counts, np.random.default_rng(0), base_classes=4, field_classes=4,
                                      train_per_class=40, test_per_class=10, clients=2, classes_per_mission=2,
                                      shots=15)
    assert s.groups == {"base": order[:4], "field": order[4:]} and s.base_rounds == 1
    assert {v.client for v in s.rounds[0].visits} == {2} and all(len(v.train) == 40 for v in s.rounds[0].visits)
    field = [v for rnd in s.rounds[1:] for v in rnd.visits]
    assert all(v.class_id in order[4:] and len(v.train) <= 15 for v in field)
    for rnd in s.rounds[1:]:
        for c in rnd.clients():
            assert len([v for v in rnd.visits if v.client == c]) <= 2
    for cid in order[4:]:
        used = np.concatenate([v.train for v in field if v.class_id == cid])
        assert sorted(used.tolist()) == sorted(set(used.tolist())) and len(used) == 40


def test_every_method_learns_merges_predicts_and_counts_bytes(glyphs, encoder) -> None:
    images = np.concatenate([glyphs.images(c)[:6] for c in glyphs.class_ids[:6]])
    labels = [c for c in glyphs.class_ids[:6] for _ in range(6)]
    for name, cls in METHODS.items():
        config = {} if name in ("fedrecon", "centralized") else dict(TINY)
        with cls(encoder, {**config, "clients": 2}) as m:
            m.learn(0, images[:18], labels[:18])
            m.learn(1, images[18:], labels[18:])
            m.merge()
            for client in (None, 0, 1):
                pred = m.predict(client, images)
                assert len(pred) == len(labels) and set(pred) <= set(labels)
            assert m.bytes_up > 0, name
            if name != "centralized":
                assert m.bytes_down > 0, name
    with pytest.raises(ValueError, match="unknown config keys"):
        METHODS["lower"](encoder, {"epoch": 1})
    with pytest.raises(ValueError, match="3 images but 2 labels"):
        METHODS["fedrecon"](encoder).learn(0, images[:3], labels[:2])


def test_upper_nme_without_training_is_the_prototype_classifier(glyphs, encoder) -> None:
    """`upper` with classifier=nme classifies by class means of its features: untrained, that is centralized."""
    ids = glyphs.class_ids[:8]
    train_x = np.concatenate([glyphs.images(c)[:6] for c in ids])
    train_y = [c for c in ids for _ in range(6)]
    test_x = np.concatenate([glyphs.images(c)[6:] for c in ids])
    with METHODS["upper"](encoder, {**TINY, "epochs": 0, "classifier": "nme", "clients": 2}) as upper, \
            METHODS["centralized"](encoder, {"clients": 2}) as central:
        for m in (upper, central):
            m.learn(0, train_x[:24], train_y[:24])
            m.learn(1, train_x[24:], train_y[24:])
            m.merge()
        assert upper.predict(None, test_x) == central.predict(None, test_x)
    with pytest.raises(ValueError, match="classifier must be"):
        METHODS["upper"](encoder, {"classifier": "knn"})


def test_herding_tracks_the_class_mean() -> None:
    feats = np.random.default_rng(0).normal(size=(50, 8))
    chosen = herding(feats, 10)
    assert len(set(chosen.tolist())) == 10
    f = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    rand = np.random.default_rng(1).choice(50, 10, replace=False)
    assert np.linalg.norm(f[chosen].mean(0) - f.mean(0)) < np.linalg.norm(f[rand].mean(0) - f.mean(0))


def _fed_schedule(glyphs, seed: int = 0) -> protocols.Schedule:
    return protocols.federated(glyphs.class_ids, class_counts(glyphs), np.random.default_rng(seed), classes=24,
                               clients=3, classes_per_mission=2, train_shots=8, test_shots=4, non_iid=True,
                               overlap=0.3, revisit=0.3, min_shots=2)


def test_fedrecon_equals_centralized(glyphs, encoder) -> None:
    run = RunData(_fed_schedule(glyphs), glyphs)
    cache = EmbeddingCache(encoder)
    fed = run_method("fedrecon", encoder, run, {"dtype": "float64"}, cache, seed=0, progress=False)
    cen = run_method("centralized", encoder, run, {}, cache, seed=0, progress=False)
    assert [r["mean"] for r in fed["rounds"]] == [r["mean"] for r in cen["rounds"]]
    assert [r["server"] for r in fed["rounds"]] == [r["server"] for r in cen["rounds"]]
    # the merged prototypes themselves: the count-weighted merge is the central mean
    method = FedRecon(encoder, {"dtype": "float64", "clients": 3})
    central = METHODS["centralized"](encoder)
    for r in range(len(run.schedule.rounds)):
        for c in run.schedule.rounds[r].clients():
            images, labels = run.mission(r, c)
            method.learn(c, images, labels)
            central.learn(c, images, labels)
        method.merge()
    merged = method.prototypes(None)
    for client in (None, 0, 1, 2):
        table = method.prototypes(client)
        assert sorted(table.class_ids) == sorted(central.table.class_ids)
    rows = central.table.rows(merged.class_ids)
    np.testing.assert_array_equal(merged.counts, central.table.counts[rows])
    np.testing.assert_allclose(merged.means(), central.table.means(rows), rtol=0, atol=1e-12)
    method.close()


@pytest.mark.slow
def test_inproc_and_grpc_give_identical_numbers(glyphs, encoder) -> None:
    run = RunData(_fed_schedule(glyphs, seed=1), glyphs)
    out = {}
    for transport in ("inproc", "grpc"):
        res = run_method("fedrecon", encoder, run, {"transport": transport}, EmbeddingCache(encoder), seed=1,
                         progress=False)
        out[transport] = [{k: r[k] for k in ("classes_seen", "server", "clients", "bytes_up", "bytes_down")}
                          for r in res["rounds"]]
    assert out["inproc"] == out["grpc"]
    assert out["inproc"][-1]["bytes_up"] > 0


def test_inproc_transport_scales_to_10000_clients() -> None:
    space = "conv4-test"
    means = np.ones((1, 8), np.float32)
    with make_transport("inproc") as t:
        assert isinstance(t, InprocTransport)
        for c in range(10_000):
            deltas = Deltas([f"class-{c % 500}"], np.array([c % 7 + 1]), means)
            ack, nbytes = t.push(f"client-{c}", next_seq(0), space, deltas)  # each client's first push
            assert nbytes > 0
        pulled, _ = t.pull("client-0", space, 0)
        assert ack.version == 10_000 and len(pulled.class_ids) == 500
        assert t.store.info()["clients"] == 10_000
    with pytest.raises(ValueError, match="unknown transport"):
        make_transport("carrier-pigeon")


def test_override_syntax() -> None:
    config = load_config("omniglot-fed")
    apply_override(config, "protocol.classes=50")
    apply_override(config, "protocol.non_iid=true")
    apply_override(config, "experiment.encoder=random")
    assert config["protocol"]["classes"] == 50 and config["protocol"]["non_iid"] is True
    assert config["experiment"]["encoder"] == "random"
    with pytest.raises(ValueError, match="table.key=value"):
        apply_override(config, "classes=5")


def test_glyphs_experiment_writes_results_schema(tmp_path: Path) -> None:
    config = load_config("glyphs-fed")
    config["experiment"].update({"encoder": "random", "runs": 2})
    config["dataset"].update({"classes": 12, "drawings": 8})
    config["protocol"].update({"classes": 12, "clients": 2, "classes_per_mission": 2, "train_shots": 5,
                               "test_shots": 3})
    config["runs"] = {"upper": 1, "icarl": 1, "fedavg": 1, "lower": 1}
    for m in ("lower", "upper", "icarl", "fedavg"):
        config["methods"][m]["batch_size"] = 32
    results = run_experiment(config, progress=False)
    paths = write_all(results, tmp_path)
    doc = json.loads((tmp_path / "results.json").read_text())
    assert {p.name for p in paths} == {"results.json", "results.csv", "summary.md", "accuracy.png", "bytes.png"}
    assert doc["schema"] == "fedrecon-results/1" and doc["experiment"] == "glyphs-fed"
    assert doc["encoder"]["fingerprint"].startswith("conv4-") and doc["dataset"]["classes"] == 12
    assert set(doc["methods"]) == {"fedrecon", "centralized", "lower", "upper", "icarl", "fedavg"}
    for name, m in doc["methods"].items():
        assert m["runs"] == (2 if name in ("fedrecon", "centralized") else 1)
        for key in ("final_accuracy", "curve", "bytes_up", "bytes_down", "update_ms_per_class", "wall_seconds"):
            assert key in m, (name, key)
        assert all(len(p) == 3 and 0 <= p[1] <= 100 for p in m["curve"])
        assert m["curve"][-1][0] == 12 and len(m["curve"]) == 3
    assert doc["comparisons"]["fedrecon_minus_centralized_pp"] == 0.0 and doc["status"] == "complete"
    assert (tmp_path / "accuracy.png").read_bytes()[:4] == b"\x89PNG"
    assert "| fedrecon |" in (tmp_path / "summary.md").read_text()
