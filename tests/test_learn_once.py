"""`client learn` never double-counts: re-runs, copies, unreachable servers, foreign stores and bad files."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
from pathlib import Path

import numpy as np
import pytest
from helpers import FEDRECON, free_port, start_server
from photos import write_photos

from fedrecon.client.encoder import Encoder

CLASSES = {"tomato": ((215, 40, 30), "ellipse"), "leaf": ((40, 160, 50), "polygon")}


@pytest.fixture(scope="module")
def encoder_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A small natural-image encoder (an untrained RGB Conv4 at 28 px) as a checkpoint file, and its space."""
    encoder = Encoder.random("mini-imagenet", 28, 3, seed=1, device="cpu")
    path = encoder.save(tmp_path_factory.mktemp("enc") / "rgb.pt")
    assert encoder.domain == "natural"
    return str(path), encoder.fingerprint


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*FEDRECON, "client", *args], capture_output=True, text=True, timeout=300)


def _learn(address: str, state: Path, encoder: str, *args: str, client: str = "ann") -> subprocess.CompletedProcess:
    return _run("learn", "--server", address, "--client-id", client, "--state-dir", str(state), "--encoder", encoder,
                "--connect-timeout", "2", *args)


def _counts(address: str, space: str, tmp_path: Path) -> dict[str, int]:
    out = _run("pull", "--server", address, "--space", space, "--out", str(tmp_path / "pulled.npz"))
    assert out.returncode == 0, out.stderr
    with np.load(tmp_path / "pulled.npz") as data:
        return {str(c): int(n) for c, n in zip(data["class_ids"], data["counts"], strict=True)}


def _recorded(state: Path, client: str = "ann") -> tuple[int, int]:
    """(local classes, learned images) in a client's state file."""
    db = sqlite3.connect(state / f"{client}.db")
    try:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        local = db.execute("SELECT COUNT(*) FROM local").fetchone()[0] if "local" in tables else 0
        learned = db.execute("SELECT COUNT(*) FROM learned").fetchone()[0] if "learned" in tables else 0
        pending = db.execute("SELECT COUNT(*) FROM pending").fetchone()[0] if "pending" in tables else 0
        return local + pending, learned
    finally:
        db.close()


def _one_line(out: subprocess.CompletedProcess) -> str:
    assert out.returncode == 2, (out.returncode, out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    return lines[0]


def test_the_same_learn_twice_leaves_every_count_unchanged(tmp_path: Path, encoder_file) -> None:
    encoder, space = encoder_file
    write_photos(tmp_path / "images", 4, seed=3, classes=CLASSES, special=False)
    copy = tmp_path / "images" / "leaf" / "same-as-leaf00.png"
    copy.write_bytes((tmp_path / "images" / "leaf" / "leaf00.png").read_bytes())  # a copy under another name
    server, address = start_server(tmp_path / "server.db")
    try:
        first = json.loads(_learn(address, tmp_path / "state", encoder, str(tmp_path / "images")).stdout)
        assert first["examples"] == 8 and first["skipped_duplicates"] == 1 and first["pushes"] == 1
        assert _counts(address, space, tmp_path) == {"tomato": 4, "leaf": 4}
        again = _learn(address, tmp_path / "state", encoder, str(tmp_path / "images"))
        assert again.returncode == 0, again.stderr
        second = json.loads(again.stdout)
        assert second["examples"] == 0 and second["skipped_duplicates"] == 9 and second["pushes"] == 0
        assert _counts(address, space, tmp_path) == {"tomato": 4, "leaf": 4}
        forced = json.loads(_learn(address, tmp_path / "state", encoder, "--allow-duplicates", "--label", "leaf",
                                   str(tmp_path / "images" / "leaf")).stdout)
        assert forced["examples"] == 5 and forced["skipped_duplicates"] == 0
        assert _counts(address, space, tmp_path) == {"tomato": 4, "leaf": 9}
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(15)


def test_a_learn_that_cannot_push_records_nothing(tmp_path: Path, encoder_file) -> None:
    encoder, space = encoder_file
    write_photos(tmp_path / "images", 4, seed=4, classes=CLASSES, special=False)
    state = tmp_path / "state"
    line = _one_line(_learn(f"127.0.0.1:{free_port()}", state, encoder, str(tmp_path / "images")))
    assert "no fedrecon server reachable" in line and "nothing was learned or recorded" in line
    assert _recorded(state) == (0, 0)
    server, address = start_server(tmp_path / "server.db")
    try:
        learned = json.loads(_learn(address, state, encoder, str(tmp_path / "images")).stdout)
        assert learned["examples"] == 8 and learned["skipped_duplicates"] == 0
        assert _counts(address, space, tmp_path) == {"tomato": 4, "leaf": 4}
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(15)


def test_a_state_bound_to_another_store_records_nothing(tmp_path: Path, encoder_file) -> None:
    encoder, space = encoder_file
    write_photos(tmp_path / "a", 3, seed=5, classes={"tomato": CLASSES["tomato"]}, special=False)
    write_photos(tmp_path / "b", 3, seed=6, classes={"solo2": CLASSES["leaf"]}, special=False)
    write_photos(tmp_path / "c", 3, seed=7, classes={"later": ((60, 110, 220), "rectangle")}, special=False)
    state = tmp_path / "state"
    server_a, address_a = start_server(tmp_path / "a.db")
    server_b, address_b = start_server(tmp_path / "b.db")
    try:
        assert _learn(address_a, state, encoder, str(tmp_path / "a")).returncode == 0
        before = _recorded(state)
        line = _one_line(_learn(address_b, state, encoder, str(tmp_path / "b")))
        assert "is bound to store" in line and "nothing was learned or recorded" in line
        assert _recorded(state) == before
        assert _learn(address_a, state, encoder, str(tmp_path / "c")).returncode == 0
        assert _counts(address_a, space, tmp_path) == {"tomato": 3, "later": 3}
        assert _counts(address_b, space, tmp_path) == {}
    finally:
        for server in (server_a, server_b):
            server.send_signal(signal.SIGTERM)
            server.wait(15)


def test_bad_files_are_named_or_skipped_and_other_files_counted(tmp_path: Path, encoder_file) -> None:
    encoder, _ = encoder_file
    write_photos(tmp_path / "images", 3, seed=8, classes=CLASSES, special=False)
    empty = tmp_path / "images" / "leaf" / "empty.jpg"
    empty.write_bytes(b"")
    (tmp_path / "images" / "leaf" / "notes.txt").write_text("not an image")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "images" / "leaf" / "linked").symlink_to(tmp_path / "elsewhere")  # not followed: reported
    offline = ["--offline", "--server", "127.0.0.1:1", "--client-id", "bo", "--state-dir", str(tmp_path / "state"),
               "--encoder", encoder]
    line = _one_line(_run("learn", *offline, str(tmp_path / "images")))
    assert str(empty) in line and "empty file" in line and "BytesIO" not in line and "--skip-bad" in line
    out = _run("learn", *offline, "--skip-bad", str(tmp_path / "images"))
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["examples"] == 6 and report["skipped_bad"] == 1 and report["skipped_bad_files"] == [str(empty)]
    assert report["ignored_files"] == 2 and str(empty) in out.stderr


def test_client_status_shows_learned_local_pending_and_merged_counts(tmp_path: Path, encoder_file) -> None:
    encoder, space = encoder_file
    write_photos(tmp_path / "images", 3, seed=9, classes={"café": CLASSES["tomato"], "leaf": CLASSES["leaf"]},
                 special=False)
    state = ["--client-id", "cy", "--state-dir", str(tmp_path / "state")]
    missing = _run("status", *state)
    assert "no state for client 'cy'" in _one_line(missing)
    server, address = start_server(tmp_path / "server.db")
    try:
        opts = ["--server", address, *state, "--encoder", encoder]
        assert _run("learn", *opts, "--offline", str(tmp_path / "images")).returncode == 0
        rows = json.loads(_run("status", *state, "--json").stdout)["classes"]
        assert {(r["class"], r["learned"], r["local"], r["pending"], r["merged"]) for r in rows} == {
            ("café", 3, 3, 0, 0), ("leaf", 3, 3, 0, 0)}
        pushed = _run("learn", *opts, "--label", "third", str(tmp_path / "images" / "leaf"))
        assert pushed.returncode == 0, pushed.stderr  # pushed at once: neither local nor pulled yet
        assert ("third", 3, 0, 0, 0) in {(r["class"], r["learned"], r["local"], r["pending"], r["merged"])
                                         for r in json.loads(_run("status", *state, "--json").stdout)["classes"]}
        assert _run("sync", *opts).returncode == 0
        data = json.loads(_run("status", *state, "--json").stdout)
        assert data["last_seq"] == 1 and data["store_id"] and {r["space"] for r in data["classes"]} == {space}
        assert {(r["class"], r["learned"], r["local"], r["pending"], r["merged"], r["version"] >= 1)
                for r in data["classes"]} == {("café", 3, 0, 0, 3, True), ("leaf", 3, 0, 0, 3, True),
                                              ("third", 3, 0, 0, 3, True)}
        text = _run("status", *state).stdout
        assert "café" in text and text.splitlines()[1].split() == ["space", "class", "learned", "local", "pending",
                                                                    "merged", "version"]
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(15)
