"""The shipped Omniglot encoder's recorded 600-class figures reproduce (client/weights/omniglot-results.json)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedrecon.experiments.runner import load_config, run_experiment

pytestmark = [pytest.mark.data, pytest.mark.slow]
# Written from `fedrecon experiment omniglot-cil|omniglot-fed --data-dir ../shared/data/omniglot
# --methods fedrecon,centralized --runs 5` with the shipped weights; see client/weights/README.md.
WEIGHTS = Path(__file__).resolve().parents[1] / "client" / "weights"
RECORDED = json.loads((WEIGHTS / "omniglot-results.json").read_text())


@pytest.fixture(scope="module")
def omniglot_cache(tmp_path_factory) -> str:
    """Decoded Omniglot pixels cached once for both protocols."""
    return str(tmp_path_factory.mktemp("omniglot-cache"))


@pytest.mark.parametrize("protocol", ["omniglot-cil", "omniglot-fed"])
def test_seed_0_final_accuracy_reproduces(shared_data: Path, omniglot_cache: str, protocol: str) -> None:
    config = load_config(protocol)
    config["experiment"].update({"encoder": "omniglot", "runs": 1, "seed": 0, "methods": ["fedrecon"]})
    config["dataset"]["cache_dir"] = omniglot_cache
    results = run_experiment(config, shared_data / "omniglot", progress=False)
    recorded = RECORDED[protocol]
    assert results["encoder"]["fingerprint"] == recorded["fingerprint"]
    final = results["methods"]["fedrecon"]["per_run"][0]["rounds"][-1]["mean"]
    assert abs(final - recorded["seed 0 final_accuracy"]) < 0.1  # one query of 3,000 is 0.033 pp
