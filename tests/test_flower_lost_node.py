"""A Flower deployment that loses a node: a real `flower-superlink` and 3 `flower-supernode` processes on
loopback (insecure), one SuperNode SIGKILLed mid-run. The run must finish with the other two and write its
results; a run whose `min-nodes` cannot be met must fail (the SuperLink records it as failed)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import ray  # noqa: F401 - required: the Simulation Engine runs on it
from helpers import REPO_ROOT, free_port, pids_mentioning, wait_until

BIN = Path(sys.executable).parent
SMALL = "ways=2 shots=3 queries=2 glyph-classes=30 glyph-drawings=6 encoder='random' seed=1 timeout=25.0"


class Deployment:
    """A SuperLink and SuperNodes on free loopback ports, each process stopped by its own handle."""

    def __init__(self, tmp: Path, nodes: int) -> None:
        self.tmp = tmp
        self.home = tmp / "flwr-home"
        self.home.mkdir()
        self.env = {**os.environ, "FLWR_HOME": str(self.home), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
        self.link = free_port()
        (self.home / "config.toml").write_text(f'[superlink]\ndefault = "loopback"\n\n[superlink.loopback]\n'
                                               f'address = "127.0.0.1:{self.link}"\ninsecure = true\n')
        self.superlink = self._spawn([f"{BIN}/flower-superlink", "--insecure", "--host", "127.0.0.1", "--port",
                                      str(self.link), "--disable-runtime-dependency-installation"], "superlink")
        self.node_ports = [free_port() for _ in range(nodes)]
        self.nodes = [self._spawn([f"{BIN}/flower-supernode", "--insecure", "--superlink", f"127.0.0.1:{self.link}",
                                   "--host", "127.0.0.1", "--port", str(port), "--node-config",
                                   f"data-dir='{tmp / 'cache'}'"], f"node{i}")
                      for i, port in enumerate(self.node_ports)]
        log = tmp / "superlink.log"
        assert wait_until(lambda: log.read_text().count("Activated node_id") >= nodes, 120, 0.5), log.read_text()

    def _spawn(self, argv: list[str], name: str) -> subprocess.Popen:
        return subprocess.Popen(argv, env=self.env, cwd=REPO_ROOT, stdout=(self.tmp / f"{name}.log").open("w"),
                                stderr=subprocess.STDOUT)

    def run(self, overrides: str) -> subprocess.Popen:
        """`flwr run . loopback --stream` with run-config overrides; stdout is read by the caller."""
        return subprocess.Popen([f"{BIN}/flwr", "run", ".", "loopback", "--stream", "--run-config", overrides],
                                env=self.env, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)

    def kill_node(self, i: int) -> None:
        """SIGKILL SuperNode `i`, and any ClientApp process it had started (orphaned by the kill)."""
        self.nodes[i].kill()
        self.nodes[i].wait(30)
        for pid in pids_mentioning(f"127.0.0.1:{self.node_ports[i]}"):
            if pid != os.getpid():
                os.kill(pid, signal.SIGKILL)

    def status(self, run_id: int) -> str:
        """The run's status as the SuperLink reports it (`flwr ls --format json`)."""
        out = subprocess.run([f"{BIN}/flwr", "ls", "loopback", "--run-id", str(run_id), "--format", "json"],
                             env=self.env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
        return json.dumps(json.loads(out.stdout))

    def close(self) -> None:
        for p in [*self.nodes, self.superlink]:
            if p.poll() is None:
                p.terminate()
        for p in [*self.nodes, self.superlink]:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(20)


def _run_id(lines: list[str]) -> int:
    """The id `flwr run` printed ("Successfully started run N")."""
    for line in lines:
        if "Successfully started run" in line:
            return int(line.rsplit("run", 1)[1].strip())
    raise AssertionError("no run id in:\n" + "".join(lines[-40:]))


@pytest.mark.slow
def test_a_run_survives_a_lost_supernode_and_fails_below_min_nodes(tmp_path: Path) -> None:
    deployment = Deployment(tmp_path, nodes=3)
    try:
        out = tmp_path / "results.json"
        run = deployment.run(f"clients=3 missions=2 {SMALL} wait-nodes=60.0 out='{out}'")
        lines: list[str] = []
        for line in run.stdout:  # kill a node as soon as round 2 begins
            lines.append(line)
            if "[ROUND 2/2]" in line:
                deployment.kill_node(2)
                break
        lines += run.stdout.readlines()
        run.wait(60)
        assert out.exists(), "".join(lines[-60:])
        results = json.loads(out.read_text())
        rounds = results["rounds"]
        assert [r["round"] for r in rounds] == [1, 2]
        assert rounds[0]["answered"] == 3 and rounds[0]["lost"] == []
        assert len(results["lost_clients"]) == 1  # the killed node's client, whichever it was
        assert rounds[-1]["answered"] == 2 and rounds[-1]["accuracy"] is not None
        # the lost client's round-2 mission is neither merged nor scored; the others' are
        assert rounds[0]["merged_classes"] == 6 and rounds[1]["merged_classes"] == 4
        assert results["store"]["spaces"][0]["classes"] == rounds[-1]["classes_seen"] == 10

        failing = deployment.run(f"clients=3 missions=1 {SMALL} wait-nodes=5.0 min-nodes=3 "
                                 f"out='{tmp_path / 'never.json'}'")
        text = failing.communicate(timeout=300)[0]
        assert not (tmp_path / "never.json").exists(), text[-3000:]
        run_id = _run_id(text.splitlines(keepends=True))
        assert wait_until(lambda: "failed" in deployment.status(run_id), 60, 1.0), deployment.status(run_id)
        assert "min-nodes is 3" in text or "min-nodes 3" in text, text[-3000:]
    finally:
        deployment.close()
