"""Poisoning at CI size: one malicious client of 10 (scaled, random, sign-flipped means with inflated counts) wrecks
the plain merge; the robust merge stays within 2 pp of clean."""

from pathlib import Path

import numpy as np
import pytest

from fedrecon.benchmarks.poisoning import poison, run


def test_poisoned_deltas_cover_every_class_with_inflated_counts() -> None:
    honest = {0: (3, np.ones(4)), 2: (2, 2 * np.ones(4))}
    rng = np.random.default_rng(0)
    for attack in ("scaled", "random", "sign_flip"):
        bad = poison(honest, 3, attack, scale=10.0, inflate=100, typical_norm=2.0, rng=rng)
        assert sorted(bad) == [0, 1, 2] and bad[0][0] == 300 and bad[1][0] == 100
    assert np.allclose(poison(honest, 3, "sign_flip", 10, 1, 2.0, rng)[0][1], -np.ones(4))
    assert np.isclose(np.linalg.norm(poison(honest, 3, "random", 10, 1, 2.0, rng)[1][1]), 2.0)


@pytest.mark.slow
def test_robust_merge_resists_one_malicious_client(tmp_path: Path) -> None:
    result = run("glyphs", "random", classes=24, cache_dir=tmp_path)
    assert result["setup"]["clients"] == 10 and result["setup"]["malicious"] == 1
    assert result["clean"] > 0.3
    assert result["plain"] < result["clean"] - 0.2  # the attack works on the plain merge
    assert result["robust"] >= result["clean"] - 0.02
