"""The client a user runs, on real Omniglot PNGs: preprocessing owned by the encoder, learn/sync/classify processes."""

from __future__ import annotations

import json
import re
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
from helpers import FEDRECON, REPO_ROOT, start_server
from omniglot_pngs import folder_name, write_pngs
from PIL import Image

from fedrecon.client.data.folder import load_folder
from fedrecon.client.data.omniglot import load_omniglot
from fedrecon.client.encoder import Encoder, fingerprint, load_encoder
from fedrecon.client.preprocess import Preprocessing
from fedrecon.proto.prototypes import PrototypeTable

pytestmark = pytest.mark.data


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    return load_encoder("omniglot", device="cpu")


@pytest.fixture(scope="module")
def evaluation(shared_data: Path):
    return load_omniglot(shared_data / "omniglot", background=False)


def test_raw_pngs_embed_as_the_loader_does_and_dark_ink_is_refused(shared_data, tmp_path, encoder,
                                                                   evaluation) -> None:
    train, _ = write_pngs(shared_data, tmp_path, classes=3, train=6, test=0)
    for cid, files in train.items():
        loader = encoder.embed(evaluation.pixels[evaluation.indices(cid)[:6]])
        from_files = encoder.embed_images(files)
        from_pil = encoder.embed_images([Image.open(f) for f in files])
        np.testing.assert_allclose(from_files, loader, rtol=0, atol=1e-5)
        np.testing.assert_array_equal(from_files, from_pil)
    # the careless client of the issue: Pillow read + resize, no inversion -> dark ink on white
    files = next(iter(train.values()))
    careless = np.stack([np.asarray(Image.open(f).convert("L").resize((28, 28)), np.float32) / 255 for f in files])
    with pytest.raises(ValueError, match="dark ink on a light background"):
        encoder.embed(careless[:, None])
    with pytest.raises(ValueError, match="dark ink"):
        encoder.embed((careless * 255).astype(np.uint8)[:, None])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        encoder.embed(careless[:, None] * 255)  # 0..255 floats


def test_the_folder_loader_reads_what_the_omniglot_loader_reads(shared_data, tmp_path, encoder, evaluation) -> None:
    train, _ = write_pngs(shared_data, tmp_path, classes=4, train=20, test=0)
    folder = load_folder(tmp_path / "train", encoder.preprocessing, progress=False)
    assert folder.class_ids == sorted(folder_name(c) for c in train)
    for cid in train:
        np.testing.assert_array_equal(folder.pixels[folder.indices(folder_name(cid))],
                                      evaluation.pixels[evaluation.indices(cid)])


def test_the_fingerprint_covers_every_preprocessing_field(encoder) -> None:
    state = {k: v for k, v in encoder.model.state_dict().items() if not k.endswith("num_batches_tracked")}
    base = fingerprint(encoder.config, state)
    assert base == encoder.fingerprint
    pre = encoder.preprocessing
    variants = [Preprocessing(pre.mode, not pre.invert, pre.size, pre.resample, pre.mean, pre.std),
                Preprocessing(pre.mode, pre.invert, pre.size, "nearest", pre.mean, pre.std),
                Preprocessing(pre.mode, pre.invert, pre.size, pre.resample, (0.1,), pre.std)]
    for variant in variants:
        assert fingerprint({**encoder.config, "preprocessing": variant.to_dict()}, state) != base


def _learn(address: str, client: str, state_dir: Path, *paths: Path) -> dict:
    out = subprocess.run([*FEDRECON, "client", "learn", "--server", address, "--client-id", client, "--encoder",
                          "omniglot", "--state-dir", str(state_dir), *map(str, paths)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_two_clients_learn_raw_png_folders_and_a_third_classifies(shared_data, tmp_path, encoder,
                                                                   evaluation) -> None:
    train, test = write_pngs(shared_data, tmp_path / "png", classes=40, train=15, test=5)
    ids = list(train)
    halves = {"alice": ids[:20], "bob": ids[20:]}
    for name, part in halves.items():
        root = tmp_path / name
        for cid in part:
            (root / folder_name(cid)).mkdir(parents=True)
            for f in train[cid]:
                (root / folder_name(cid) / f.name).write_bytes(f.read_bytes())
    server, address = start_server(tmp_path / "server.db")
    try:
        state = tmp_path / "state"
        for name in halves:
            ack = _learn(address, name, state, tmp_path / name)
            assert ack["classes"] == 20 and ack["examples"] == 300 and ack["seq"] == 1 and ack["version"] >= 1
        queries = [f for cid in ids for f in test[cid]]
        out = subprocess.run([*FEDRECON, "client", "classify", "--server", address, "--client-id", "carol",
                              "--encoder", "omniglot", "--state-dir", str(state), "--json", *map(str, queries)],
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        answers = [json.loads(line) for line in out.stdout.splitlines()]
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(15)
    truth = {str(f): folder_name(cid) for cid in ids for f in test[cid]}
    assert [a["path"] for a in answers] == [str(q) for q in queries]
    assert all(a["distance"] >= 0 and len(a["alternatives"]) == 1 for a in answers)
    cli_accuracy = np.mean([a["label"] == truth[a["path"]] for a in answers])
    # the experiment loader's path on the same drawings: loader pixels, one central prototype table
    table = PrototypeTable()
    for cid in ids:
        table.add_examples([folder_name(cid)] * 15, encoder.embed(evaluation.pixels[evaluation.indices(cid)[:15]]))
    test_pixels = np.concatenate([evaluation.pixels[evaluation.indices(cid)[15:20]] for cid in ids])
    loader_accuracy = np.mean(np.array(table.classify(encoder.embed(test_pixels))) ==
                              np.array([folder_name(cid) for cid in ids for _ in range(5)]))
    assert abs(cli_accuracy - loader_accuracy) <= 0.01, (cli_accuracy, loader_accuracy)
    assert cli_accuracy > 0.8  # 40-way 15-shot with the shipped encoder


def test_readme_python_example_runs_as_written(shared_data, tmp_path) -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme.split("From Python", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    train, test = write_pngs(shared_data, tmp_path, classes=3, train=5, test=1)
    (tmp_path / "train").rename(tmp_path / "my-images")
    query = test[next(iter(test))][0]
    (tmp_path / "query.png").write_bytes(query.read_bytes())
    server, address = start_server(tmp_path / "server.db")
    try:
        assert "127.0.0.1:50051" in code
        script = tmp_path / "example.py"
        script.write_text(code.replace("127.0.0.1:50051", address))
        out = subprocess.run([FEDRECON[0], str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip().splitlines()[-1] == query.parent.name
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(15)


@pytest.mark.parametrize("before", ["omniglot-paper", "omniglot-v2"])  # the default until 2026-12-01, then -05
def test_classes_learned_with_another_encoder_are_named_not_silently_missing(shared_data, tmp_path, before) -> None:
    """After the default `omniglot` encoder changed, a state built with an old one says which encoder to use."""
    train, test = write_pngs(shared_data, tmp_path / "png", classes=3, train=5, test=1)
    offline = ["--server", "127.0.0.1:1", "--client-id", "dana", "--state-dir", str(tmp_path / "state")]
    learned = subprocess.run([*FEDRECON, "client", "learn", "--offline", *offline, "--encoder", before,
                              str(tmp_path / "png" / "train")], capture_output=True, text=True, timeout=300)
    assert learned.returncode == 0, learned.stderr
    queries = [str(f) for files in test.values() for f in files]
    new = subprocess.run([*FEDRECON, "client", "classify", "--offline", *offline, "--encoder", "omniglot", *queries],
                         capture_output=True, text=True, timeout=300)
    assert new.returncode != 0 and len(new.stderr.strip().splitlines()) == 1
    space = load_encoder(before, device="cpu").fingerprint
    assert f"holds 3 in space {space}" in new.stderr and f"--encoder {before}" in new.stderr
    old = subprocess.run([*FEDRECON, "client", "classify", "--offline", *offline, "--encoder", before, *queries],
                         capture_output=True, text=True, timeout=300)
    assert old.returncode == 0 and len(old.stdout.splitlines()) == 3, old.stderr
