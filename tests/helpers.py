"""Test helpers importable from every test module (pytest adds tests/ to sys.path)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from fedrecon.experiments.process import FEDRECON, ServerProcess, free_port  # noqa: F401 - for the tests

REPO_ROOT = Path(__file__).resolve().parents[1]


def start_server(db: Path, *extra: str, port: int = 0, insecure: bool = True) -> tuple[subprocess.Popen, str]:
    """Start `fedrecon server` as a real process on loopback; returns it and the address it printed.

    Open mode (`--insecure`) unless `insecure=False` (then pass `--tokens FILE` in `extra`).
    """
    server = ServerProcess(db, extra, port=port, insecure=insecure, log_level="info").start()
    assert server.process is not None
    return server.process, server.address


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.05) -> bool:
    """Poll `predicate` until it is true or the timeout passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


def pids_mentioning(text: str) -> list[int]:
    """Processes whose command line contains `text` (a path or port unique to one test), for cleaning up
    processes a test caused but holds no handle of (e.g. a detached Flower SuperLink, an orphaned ClientApp)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if text in (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    pids.append(int(proc.name))
            except OSError:
                continue
    return pids
