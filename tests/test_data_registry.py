"""The one data-set registry (`fedrecon.client.data.load_dataset`): the experiments' specs and the Flower
ClientApp's tasks load the same images through it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedrecon.client.data import load_dataset
from fedrecon.client.data.glyphs import make_glyphs
from fedrecon.client.data.registry import GLYPH_DEFAULTS
from fedrecon.client.flower import load_data


def test_a_glyph_spec_and_a_flower_task_load_the_same_images(tmp_path: Path) -> None:
    spec = {"name": "glyphs", "classes": 6, "drawings": 4, "seed": 3, "cache_dir": str(tmp_path)}
    from_spec = load_dataset(spec, None, 28)
    from_task = load_data("glyphs", str(tmp_path), 6, 4, 3)
    direct = make_glyphs(6, 4, 3)
    assert from_spec.class_ids == from_task.class_ids == direct.class_ids
    assert np.array_equal(from_spec.pixels, direct.pixels) and np.array_equal(from_task.pixels, direct.pixels)
    assert list(tmp_path.glob("glyphs-*.npz"))  # the cache the spec names was written


def test_missing_glyph_keys_take_the_one_default(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple] = []
    monkeypatch.setattr("fedrecon.client.data.glyphs.make_glyphs", lambda *a, **k: seen.append(a) or "made")
    assert load_dataset({"name": "glyphs"}, None, 28) == "made"
    assert seen == [(GLYPH_DEFAULTS["classes"], GLYPH_DEFAULTS["drawings"], GLYPH_DEFAULTS["seed"], 28)]


def test_unknown_data_sets_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match="unknown dataset 'nope'; known: glyphs, omniglot, mini-imagenet, folder"):
        load_dataset({"name": "nope"}, "/tmp", 28)
    with pytest.raises(ValueError, match="expected 'glyphs' or 'omniglot'"):
        load_data("mini-imagenet", "/tmp", 1, 1, 0)
    with pytest.raises(ValueError, match="needs data-dir"):
        load_data("omniglot", "", 1, 1, 0)
