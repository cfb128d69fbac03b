"""`fedrecon server` as a child process on 127.0.0.1: what the demo, experiments, benchmarks and tests start.

The address comes from the server's first stdout line; stderr goes to a temporary file (`log_tail`).
A restart on the same port retries while the old socket is still held.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

FEDRECON = [sys.executable, "-m", "fedrecon"]


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1 (never hard-code one)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """A `fedrecon server` process: `start()` (or `with`), `.address`, `stop()` (SIGTERM), `kill()` (SIGKILL)."""

    def __init__(self, db: str | Path | None = None, extra: Sequence[str] = (), *, port: int = 0,
                 insecure: bool = True, log_level: str = "warning", startup_timeout: float = 60.0,
                 command: Sequence[str] | None = None) -> None:
        store = ["--memory"] if db is None else ["--db", str(db)]
        self.argv = list(command) if command is not None else [
            *FEDRECON, "server", "--host", "127.0.0.1", "--port", str(port), *store, "--log-level", log_level,
            *(["--insecure"] if insecure else []), *extra]  # `command`: another server that prints its address
        self.port = port
        self.address = f"127.0.0.1:{port}"
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen | None = None
        self.stderr = tempfile.TemporaryFile(mode="w+")

    def start(self) -> ServerProcess:
        """Start the server and wait for its address line (retrying while a fixed port is still held)."""
        deadline = time.monotonic() + self.startup_timeout
        while True:
            self.process = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=self.stderr, text=True)
            assert self.process.stdout is not None
            line = self.process.stdout.readline().strip()
            if line:
                self.address = line
                return self
            self.process.wait()
            if not self.port or time.monotonic() > deadline:
                raise RuntimeError(f"fedrecon server did not start: {self.log_tail()}")
            time.sleep(0.2)

    @property
    def pid(self) -> int:
        """Process id of the running server."""
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        """Whether the process is still running."""
        return self.process is not None and self.process.poll() is None

    def cpu_seconds(self) -> float:
        """User + system CPU seconds the server process has used so far (Linux /proc; 0 elsewhere)."""
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def kill(self) -> None:
        """SIGKILL (no shutdown code runs) and reap."""
        if self.alive():
            os.kill(self.pid, signal.SIGKILL)
        if self.process is not None:
            self.process.wait()

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM and wait for the graceful shutdown (SIGKILL after `timeout`); returns the exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        if self.process.stdout:
            self.process.stdout.close()
        return self.process.returncode

    def log_tail(self, chars: int = 3000) -> str:
        """The end of the server's stderr."""
        self.stderr.seek(0)
        return self.stderr.read()[-chars:]

    def __enter__(self) -> ServerProcess:
        return self if self.alive() else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
