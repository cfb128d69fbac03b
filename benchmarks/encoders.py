"""The encoder and images the CPU benchmarks use: shipped weights when present, else a seeded random Conv4."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def benchmark_encoder(name: str = "omniglot"):  # noqa: ANN201 - fedrecon.client.encoder.Encoder (imports torch)
    """(encoder, description): the shipped `name` weights if they load, else an untrained Conv4 (same cost)."""
    from fedrecon.client.encoder import Encoder, load_encoder

    try:
        return load_encoder(name), f"shipped:{name}"
    except (FileNotFoundError, OSError, ValueError, KeyError, RuntimeError) as error:
        return Encoder.random(seed=0), f"random Conv4 (shipped {name!r} weights not available: {error})"


def glyph_images(n_classes: int, drawings: int = 20, seed: int = 0,
                 cache_dir: Path | None = None) -> tuple[list[str], dict[str, np.ndarray]]:
    """Procedural glyph classes (28x28): class ids and each class's images (n, 1, 28, 28) float32."""
    from fedrecon.client.data.glyphs import make_glyphs

    data = make_glyphs(n_classes, drawings, seed, cache_dir=cache_dir)
    return list(data.class_ids), {c: data.images(c) for c in data.class_ids}
