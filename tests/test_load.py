"""Load at CI size: concurrent authenticated clients push to a durable server process without a single error."""

import json
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_concurrent_clients_get_no_errors() -> None:
    out = subprocess.run([sys.executable, "-m", "fedrecon.benchmarks.load", "--clients", "8", "--seconds", "3",
                          "--processes", "2", "--warmup", "5"], capture_output=True, text=True, timeout=240)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert out.returncode == 0, (result, out.stderr[-2000:])
    assert result["errors"] == 0 and result["clients_without_results"] == 0
    assert result["pushes"] >= 8  # every client pushed at least once on average
    assert 0 < result["p50_ms"] <= result["p99_ms"]
