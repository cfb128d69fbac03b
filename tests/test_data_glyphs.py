"""Procedural glyphs: deterministic per seed, Omniglot-shaped, cached, and not trivially separable."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from fedrecon.client.data.glyphs import make_glyphs


def test_deterministic_per_seed_and_prefix_stable() -> None:
    a = make_glyphs(6, 5, seed=3)
    b = make_glyphs(6, 5, seed=3)
    np.testing.assert_array_equal(a.pixels, b.pixels)
    assert a.class_ids == b.class_ids
    c = make_glyphs(6, 5, seed=4)
    assert not np.array_equal(a.pixels, c.pixels)
    bigger = make_glyphs(8, 7, seed=3)  # more classes and drawings extend the smaller set
    np.testing.assert_array_equal(bigger.images(a.class_ids[2])[:5], a.images(a.class_ids[2]))


def test_shapes_ids_and_ink() -> None:
    g = make_glyphs(45, 4, seed=0, image_size=32)
    assert g.pixels.shape == (180, 1, 32, 32) and g.pixels.dtype == np.uint8
    assert g.class_ids[0] == "alphabet000/character01" and g.class_ids[44] == "alphabet002/character05"
    assert {g.count(c) for c in g.class_ids} == {4}
    ink = (g.pixels > 127).mean(axis=(1, 2, 3))
    assert (ink > 0.01).all() and (ink < 0.5).all()  # every drawing has strokes, on a dark background


def test_drawings_vary_but_stay_closer_within_a_class() -> None:
    g = make_glyphs(30, 6, seed=1)
    x = g.pixels.reshape(30, 6, -1).astype(np.float64) / 255
    within = np.mean([np.linalg.norm(x[c, i] - x[c, j]) for c in range(30) for i in range(6) for j in range(i)])
    between = np.mean([np.linalg.norm(x[c, 0] - x[d, 0]) for c in range(30) for d in range(c)])
    assert within > 0.5  # drawings of a character differ (jitter, pen, pose) ...
    assert within < between  # ... but less than different characters do


def test_cache_round_trip(tmp_path: Path) -> None:
    t0 = time.perf_counter()
    a = make_glyphs(20, 20, seed=7, cache_dir=tmp_path)
    cold = time.perf_counter() - t0
    assert len(list(tmp_path.glob("glyphs-*.npz"))) == 1
    t0 = time.perf_counter()
    b = make_glyphs(20, 20, seed=7, cache_dir=tmp_path)
    assert time.perf_counter() - t0 < cold
    np.testing.assert_array_equal(a.pixels, b.pixels)


def test_rejects_empty_request() -> None:
    with pytest.raises(ValueError):
        make_glyphs(0, 5, seed=0)
