"""Shared pieces of the reliability scripts (crash safety, fuzz, load, poisoning): server processes and JSON output."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

FEDRECON = [sys.executable, "-m", "fedrecon"]


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """`fedrecon server` on 127.0.0.1 as a child process; restartable on the same port and database."""

    def __init__(self, port: int, store_args: list[str], extra: list[str] | None = None,
                 startup_timeout: float = 60.0) -> None:
        self.port = port
        self.argv = [*FEDRECON, "server", "--host", "127.0.0.1", "--port", str(port), *store_args,
                     "--log-level", "warning", *(extra or [])]
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen | None = None
        self.stderr = tempfile.TemporaryFile(mode="w+")
        self.address = f"127.0.0.1:{port}"

    def start(self) -> ServerProcess:
        """Start the server and wait for its address line (retries while the port is still held)."""
        deadline = time.monotonic() + self.startup_timeout
        while True:
            self.process = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=self.stderr, text=True)
            assert self.process.stdout is not None
            line = self.process.stdout.readline().strip()
            if line:
                self.address = line
                return self
            self.process.wait()
            if time.monotonic() > deadline:
                self.stderr.seek(0)
                raise RuntimeError(f"server did not start: {self.stderr.read()[-3000:]}")
            time.sleep(0.2)

    def alive(self) -> bool:
        """Whether the process is still running."""
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL (no shutdown code runs) and reap."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
        if self.process is not None:
            self.process.wait()

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM and wait (graceful shutdown); returns the exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.process.returncode

    def log_tail(self, chars: int = 3000) -> str:
        """The end of the server's stderr."""
        self.stderr.seek(0)
        return self.stderr.read()[-chars:]


def percentiles_ms(samples_s: list[float]) -> dict[str, float | None]:
    """p50 / p99 / max of durations in seconds, as milliseconds."""
    if not samples_s:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None}
    ms = np.asarray(samples_s) * 1e3
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3),
            "max_ms": round(float(ms.max()), 3)}


def print_result(result: dict, out: Path | None = None) -> None:
    """Print the result as one JSON line (the script's last line) and optionally save it."""
    text = json.dumps(result, sort_keys=False)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
    print(text, flush=True)
