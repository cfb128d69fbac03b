"""Conv4 encoder: dims, fingerprint stability, shipped weights, nearest-prototype classification."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fedrecon.client.encoder import WEIGHTS_DIR, Encoder, load_encoder, read_checkpoint
from fedrecon.client.learner import Learner
from fedrecon.client.memory import PrototypeMemory
from fedrecon.proto.prototypes import PrototypeTable


def test_dims_64_at_28_and_1600_at_84() -> None:
    small = Encoder.random("omniglot", 28, 1, device="cpu")
    assert small.dim == 64 and small.embed(np.zeros((3, 1, 28, 28), np.float32)).shape == (3, 64)
    big = Encoder.random("mini-imagenet", 84, 3, device="cpu")
    out = big.embed(np.random.default_rng(0).random((2, 3, 84, 84), dtype=np.float32))
    assert big.dim == 1600 and out.shape == (2, 1600) and out.dtype == np.float32
    with pytest.raises(ValueError, match="expected images"):
        small.embed(np.zeros((2, 3, 28, 28), np.float32))


@pytest.mark.parametrize("channels,size", [(1, 28), (3, 84)])
def test_embed_matches_the_training_module_in_eval_mode(channels: int, size: int) -> None:
    """The BatchNorm-folded, channels-last inference copy computes what the Conv4 module computes."""
    enc = load_encoder("omniglot", "cpu") if channels == 1 else Encoder.random("mini-imagenet", size, 3, device="cpu")
    if channels == 3:  # non-trivial BatchNorm statistics, so folding is really exercised
        gen = torch.Generator().manual_seed(0)
        for module in enc.model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.copy_(torch.randn(module.num_features, generator=gen))
                module.running_var.copy_(torch.rand(module.num_features, generator=gen) + 0.5)
        enc = Encoder(enc.model, enc.config, "cpu")
    x = np.random.default_rng(0).random((9, channels, size, size), dtype=np.float32)
    with torch.no_grad():
        expected = enc.model.eval()(enc.preprocess(torch.from_numpy(x))).numpy()
    np.testing.assert_allclose(enc.embed(x), expected, rtol=1e-4, atol=1e-4)


def test_embed_is_batch_and_dtype_invariant() -> None:
    enc = Encoder.random(seed=1, device="cpu")
    x = np.random.default_rng(0).integers(0, 256, (37, 1, 28, 28), dtype=np.uint8)
    a = enc.embed(x, batch_size=8)
    b = enc.embed(x.astype(np.float32) / 255, batch_size=64)
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_fingerprint_is_stable_across_save_and_load(tmp_path: Path) -> None:
    enc = Encoder.random(seed=2, device="cpu")
    assert enc.fingerprint.startswith("conv4-") and len(enc.fingerprint) == len("conv4-") + 16
    path = enc.save(tmp_path / "a.pt")
    again = load_encoder(path, device="cpu")
    assert again.fingerprint == enc.fingerprint == read_checkpoint(path)["fingerprint"]
    assert again.config == enc.config
    x = np.random.default_rng(1).random((5, 1, 28, 28), dtype=np.float32)
    np.testing.assert_array_equal(again.embed(x), enc.embed(x))
    assert Encoder.random(seed=3, device="cpu").fingerprint != enc.fingerprint
    with torch.no_grad():
        enc.model.blocks[0][0].weight[0, 0, 0, 0] += 1e-6
    assert Encoder(enc.model, enc.config, "cpu").fingerprint != again.fingerprint


def test_tampered_checkpoint_is_refused(tmp_path: Path) -> None:
    path = Encoder.random(seed=4, device="cpu").save(tmp_path / "b.pt")
    blob = torch.load(path, weights_only=True)
    blob["state_dict"]["blocks.0.0.bias"] += 1.0
    torch.save(blob, path)
    with pytest.raises(ValueError, match="fingerprint"):
        load_encoder(path)
    with pytest.raises(FileNotFoundError, match="shipped names"):
        load_encoder("no-such-weights")


SHIPPED = {"omniglot": 3, "omniglot-v2": 1, "omniglot-paper": 1, "glyphs": 1}  # name -> Conv4 side by side


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_weights_load_with_recorded_fingerprint(name: str) -> None:
    path = WEIGHTS_DIR / f"{name}.pt"
    assert path.exists() and path.stat().st_size < 500_000 * SHIPPED[name]
    enc = load_encoder(name, device="cpu")
    blob = read_checkpoint(path)
    assert enc.fingerprint == blob["fingerprint"] and enc.dim == 64 * SHIPPED[name]
    assert enc.config["dataset"] == name.split("-")[0] and enc.config["image_size"] == 28
    assert all(t.dtype == torch.float32 for t in blob["state_dict"].values())
    training = blob["extra"]["training"]
    records = [m["training"] for m in training["members"]] if SHIPPED[name] > 1 else [training]
    assert len(records) == SHIPPED[name] and all(r["command"].startswith("fedrecon pretrain") for r in records)


def test_paper_baseline_stays_shipped_beside_the_default() -> None:
    """The paper's plain Conv4 stays loadable as `omniglot-paper`, the one of 2026-12-01 as `omniglot-v2`; `omniglot`
    is that one, the proxy-then-episodic Conv4 and a third one side by side."""
    assert load_encoder("omniglot-paper", device="cpu").fingerprint == "conv4-e42d33d5b932461c"
    assert load_encoder("omniglot-v2", device="cpu").fingerprint == "conv4-6690f73049ae7293"
    members = read_checkpoint("omniglot")["extra"]["training"]["members"]
    assert [m["fingerprint"] for m in members] == ["conv4-6690f73049ae7293", "conv4-a94884522a95d1ab",
                                                   "conv4-e5bbefae42ed4c0c"]


def test_nearest_prototype_and_learner_on_separable_images() -> None:
    enc = Encoder.random(seed=5, device="cpu")
    rng = np.random.default_rng(0)
    bases = rng.random((4, 1, 28, 28), dtype=np.float32)
    x = np.clip(bases[np.repeat(np.arange(4), 6)] + rng.normal(0, 0.02, (24, 1, 28, 28)), 0, 1).astype(np.float32)
    ids = [f"c{i}" for i in np.repeat(np.arange(4), 6)]
    table = PrototypeTable()
    table.add_examples(ids[::2], enc.embed(x[::2]))
    assert table.classify(enc.embed(x[1::2])) == ids[1::2]
    learner = Learner(enc, PrototypeMemory(enc.dim))
    learner.learn(x[::2], ids[::2])
    assert learner.accuracy(x[1::2], ids[1::2]) == 1.0
    classes, counts, means = learner.pending()
    assert sorted(classes) == ["c0", "c1", "c2", "c3"] and counts.tolist() == [3, 3, 3, 3]
    assert means.shape == (4, 64) and learner.space == enc.fingerprint
    with pytest.raises(ValueError):
        learner.learn(x[:2], ["c0"])
