"""Test helpers importable from every test module (pytest adds tests/ to sys.path)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
FEDRECON = [sys.executable, "-m", "fedrecon"]


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1 (never hard-code one)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(db: Path, *extra: str, port: int = 0, insecure: bool = True) -> tuple[subprocess.Popen, str]:
    """Start `fedrecon server` as a real process on loopback; returns it and the address it printed.

    Open mode (`--insecure`) unless `insecure=False` (then pass `--tokens FILE` in `extra`).
    """
    mode = ["--insecure"] if insecure else []
    process = subprocess.Popen([*FEDRECON, "server", "--host", "127.0.0.1", "--port", str(port), "--db", str(db),
                                *mode, *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = process.stdout.readline().strip()
    if not line:
        process.kill()
        raise RuntimeError(f"server did not start: {process.stderr.read()}")
    return process, line


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
