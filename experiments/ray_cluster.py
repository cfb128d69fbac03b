"""A Ray cluster of several nodes on one machine (loopback), for the Simulation Engine beyond one host.

Flower's Simulation Engine runs its ClientApp actors on whatever Ray cluster `ray.init` joins: with
`init_args = {"address": "HOST:PORT"}` (or `RAY_ADDRESS` set) it joins an existing one and spreads the
actors over its nodes. `LocalRayCluster` starts such a cluster the way an operator would (`ray start
--head`, then `ray start --address` per extra node), each node a `ray start --block` process that this
object holds, so the tests and benchmarks stop exactly the nodes they started (never `ray stop`, which
stops every Ray process on the machine by name). All nodes share one temporary folder of their own.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RAY = str(Path(sys.executable).parent / "ray")
HOST = "127.0.0.1"
# Prints the number of alive nodes of the cluster at argv[1] (a fresh process: ray.init binds one cluster per process).
_COUNT_NODES = ("import sys, ray; ray.init(address=sys.argv[1], logging_level='error', log_to_driver=False); "
                "print(sum(1 for n in ray.nodes() if n['Alive']))")


def free_port() -> int:
    """A TCP port free on loopback now."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class LocalRayCluster:
    """`nodes` Ray nodes on 127.0.0.1 (the first is the head), `cpus` CPUs each; a context manager."""

    def __init__(self, nodes: int = 2, cpus: int = 1, object_store_mb: int = 256, temp_dir: str | None = None,
                 start_timeout: float = 60.0) -> None:
        if nodes < 1 or cpus < 1:
            raise ValueError(f"LocalRayCluster needs at least one node and one CPU, got {nodes} nodes, {cpus} CPUs")
        self.nodes = nodes
        self.cpus = cpus
        self.object_store_mb = object_store_mb
        self.start_timeout = start_timeout
        self._own_temp = temp_dir is None
        # Short: Ray puts unix sockets under it, and their paths are limited to ~107 bytes.
        self.temp_dir = temp_dir or tempfile.mkdtemp(prefix="frray-", dir="/tmp")
        self.port = free_port()
        self.processes: list[subprocess.Popen] = []

    @property
    def address(self) -> str:
        """The GCS address to pass as `ray.init(address=...)` (Flower: `init_args.address`)."""
        return f"{HOST}:{self.port}"

    def _command(self, head: bool) -> list[str]:
        common = ["--block", "--node-ip-address", HOST, "--num-cpus", str(self.cpus),
                  "--object-store-memory", str(self.object_store_mb * 2**20), "--disable-usage-stats",
                  "--dashboard-agent-listen-port", str(free_port()), "--metrics-export-port", str(free_port()),
                  "--runtime-env-agent-port", str(free_port()), "--min-worker-port", "0", "--max-worker-port", "0"]
        if head:
            return [RAY, "start", "--head", "--port", str(self.port), "--include-dashboard", "false",
                    "--ray-client-server-port", str(free_port()), "--temp-dir", self.temp_dir, *common]
        return [RAY, "start", "--address", self.address, *common]

    def _spawn(self, head: bool) -> None:
        log = open(Path(self.temp_dir) / f"ray-start-{len(self.processes)}.log", "wb")  # noqa: SIM115 - kept open
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
        self.processes.append(subprocess.Popen(self._command(head), stdout=log, stderr=subprocess.STDOUT, env=env,
                                               start_new_session=True))
        log.close()

    def alive_nodes(self) -> int:
        """How many nodes the cluster reports alive (asked from a separate process)."""
        out = subprocess.run([sys.executable, "-c", _COUNT_NODES, self.address], capture_output=True, text=True,
                             timeout=60, env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
        lines = out.stdout.strip().splitlines()
        return int(lines[-1]) if out.returncode == 0 and lines and lines[-1].isdigit() else 0

    def _wait_for(self, count: int) -> None:
        deadline = time.monotonic() + self.start_timeout
        while self.alive_nodes() < count:
            dead = [p.args for p in self.processes if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                why = f"{dead[0][:3]} exited" if dead else f"not {count} nodes after {self.start_timeout:.0f} s"
                tail = self._log_tail()
                self.stop()
                raise RuntimeError(f"Ray cluster at {self.address}: {why}; the last `ray start` output:\n{tail}")
            time.sleep(0.5)

    def _log_tail(self, lines: int = 20) -> str:
        """The last lines of every node's `ray start` output."""
        logs = sorted(Path(self.temp_dir).glob("ray-start-*.log"))
        return "\n".join(line for log in logs for line in log.read_text(errors="replace").splitlines()[-lines:])

    def start(self) -> LocalRayCluster:
        """Start the head, then the other nodes; return when all are alive (or raise, with every node stopped)."""
        self._spawn(head=True)
        self._wait_for(1)
        for _ in range(self.nodes - 1):
            self._spawn(head=False)
        self._wait_for(self.nodes)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the nodes this object started (workers first, then the head): SIGTERM, then SIGKILL to each
        node's own process group after `timeout` seconds; then remove the temporary folder if it made it."""
        for proc in reversed(self.processes):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.processes.clear()
        if self._own_temp:
            shutil.rmtree(self.temp_dir, ignore_errors=True)

    def pids(self) -> list[int]:
        """The `ray start --block` processes (each the root of one node's processes)."""
        return [p.pid for p in self.processes]

    def __enter__(self) -> LocalRayCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
