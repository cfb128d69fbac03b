"""`flwr run .` as docs/flower.md gives it, with no package index reachable: the auto-started local SuperLink
must not try to `uv sync` the app's dependencies, and the run must finish and write its results."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import ray  # noqa: F401 - required: the Simulation Engine runs on it
from helpers import REPO_ROOT, free_port, pids_mentioning

UNREACHABLE = "http://127.0.0.1:9/"  # discard port: nothing listens, so any index request fails at once


@pytest.mark.slow
def test_flwr_run_dot_works_offline(tmp_path: Path) -> None:
    home = tmp_path / "flwr-home"
    home.mkdir()
    bindir = str(Path(sys.executable).parent)
    out = tmp_path / "results.json"
    env = {**os.environ, "FLWR_HOME": str(home), "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}",
           "PIP_INDEX_URL": UNREACHABLE, "UV_INDEX_URL": UNREACHABLE, "UV_DEFAULT_INDEX": UNREACHABLE,
           # the documented switch (flwr 1.42 has no pyproject key for it); free ports for the local SuperLink
           "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
           "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(free_port()), "FLWR_LOCAL_CONTROL_API_PORT": str(free_port())}
    overrides = (f"clients=2 missions=1 ways=2 shots=2 queries=2 glyph-classes=20 glyph-drawings=6 "
                 f"data-dir='{tmp_path / 'cache'}' out='{out}'")
    try:
        run = subprocess.run([f"{bindir}/flwr", "run", ".", "--federation-config", "num-supernodes=2", "--stream",
                              "--run-config", overrides], env=env, cwd=REPO_ROOT, capture_output=True, text=True,
                             timeout=400)
    finally:
        # the local SuperLink outlives `flwr run` (detached); stop the one this test started, found by its FLWR_HOME
        for pid in pids_mentioning(str(home)):
            os.kill(pid, signal.SIGTERM)
    log = run.stdout[-3000:] + run.stderr[-3000:]
    assert "Runtime installation of app dependencies failed" not in log, log
    assert out.exists(), log
    results = json.loads(out.read_text())
    assert results["curve"][-1][0] == 4 and 0.0 <= results["final_accuracy"] <= 1.0
