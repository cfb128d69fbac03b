"""Procedural Omniglot-like glyphs, the offline default data set (1 x S x S, ink bright on black).

An alphabet has a stroke style (pen width, curviness, strokes per character); a character is a few
random Bezier strokes in that style; a drawing re-draws the character the way another person would:
jittered control points, pen width, and a small random pose (rotation, scale, shear, shift).
Everything derives from `(seed, class index, drawing index)`, so a set is deterministic per seed and a
larger set extends a smaller one with the same seed.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from fedrecon.client.data.images import ImageSet

VERSION = 1
CHARACTERS_PER_ALPHABET = 20
RENDER = 3  # render at RENDER x the output size, then downsample with antialiasing


def _alphabet_style(seed: int, alphabet: int) -> dict:
    rng = np.random.default_rng([seed, 0, alphabet])
    return {"width": rng.uniform(0.045, 0.09), "curve": rng.uniform(0.05, 0.45),
            "strokes": (int(rng.integers(2, 4)), int(rng.integers(4, 6))), "closed": rng.uniform(0, 0.3)}


def _character(seed: int, index: int) -> tuple[dict, list[np.ndarray]]:
    """Style and strokes (each a (4, 2) cubic Bezier control polygon in [0, 1]^2) of one character."""
    style = _alphabet_style(seed, index // CHARACTERS_PER_ALPHABET)
    rng = np.random.default_rng([seed, 1, index])
    strokes = []
    for _ in range(int(rng.integers(style["strokes"][0], style["strokes"][1] + 1))):
        start = rng.uniform(0.15, 0.85, 2)
        if strokes and rng.random() < 0.5:  # join onto an earlier stroke, as pens often do
            start = strokes[int(rng.integers(len(strokes)))][int(rng.choice([0, 3]))].copy()
        end = np.clip(start + rng.normal(0, 0.35, 2), 0.1, 0.9)
        if rng.random() < style["closed"]:
            end = start + rng.normal(0, 0.03, 2)  # a loop
        mid = rng.normal(0, style["curve"] + (0.3 if np.allclose(start, end, atol=0.05) else 0), (2, 2))
        c1 = start + (end - start) / 3 + mid[0]
        c2 = start + 2 * (end - start) / 3 + mid[1]
        strokes.append(np.clip(np.stack([start, c1, c2, end]), 0.05, 0.95))
    return style, strokes


def _bezier(ctrl: np.ndarray, n: int = 14) -> np.ndarray:
    t = np.linspace(0, 1, n)[:, None]
    return ((1 - t) ** 3 * ctrl[0] + 3 * (1 - t) ** 2 * t * ctrl[1] + 3 * (1 - t) * t**2 * ctrl[2]
            + t**3 * ctrl[3])


def _draw(style: dict, strokes: list[np.ndarray], rng: np.random.Generator, size: int) -> np.ndarray:
    """One person's drawing of a character: jittered strokes and pose, rendered and downsampled."""
    big = size * RENDER
    angle = rng.normal(0, 0.12)
    scale = rng.uniform(0.85, 1.1)
    shear = rng.normal(0, 0.1)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    affine = scale * rot @ np.array([[1, shear], [0, 1]])
    shift = rng.normal(0, 0.04, 2)
    width = max(1, int(round(style["width"] * rng.uniform(0.7, 1.3) * big)))
    img = Image.new("L", (big, big), 0)
    pen = ImageDraw.Draw(img)
    for ctrl in strokes:
        if rng.random() < 0.05 and len(strokes) > 2:  # people occasionally skip a stroke
            continue
        pts = _bezier(ctrl + rng.normal(0, 0.035, ctrl.shape))
        pts = (pts - 0.5) @ affine.T + 0.5 + shift
        xy = [tuple(p) for p in (pts * big).tolist()]
        pen.line(xy, fill=255, width=width)
        r = width / 2
        for x, y in xy:  # round joints and caps
            pen.ellipse((x - r, y - r, x + r, y + r), fill=255)
    return np.asarray(img.resize((size, size), Image.Resampling.LANCZOS), dtype=np.uint8)


def _generate(n_classes: int, n_drawings: int, seed: int, image_size: int) -> np.ndarray:
    pixels = np.empty((n_classes * n_drawings, 1, image_size, image_size), dtype=np.uint8)
    for c in range(n_classes):
        style, strokes = _character(seed, c)
        for d in range(n_drawings):
            rng = np.random.default_rng([seed, 2, c, d])
            pixels[c * n_drawings + d, 0] = _draw(style, strokes, rng, image_size)
    return pixels


def glyph_class_ids(n_classes: int) -> list[str]:
    """Class ids `alphabetAAA/characterNN`, 20 characters per alphabet."""
    k = CHARACTERS_PER_ALPHABET
    return [f"alphabet{c // k:03d}/character{c % k + 1:02d}" for c in range(n_classes)]


def make_glyphs(
    n_classes: int,
    n_drawings: int,
    seed: int,
    image_size: int = 28,
    cache_dir: str | Path | None = None,
) -> ImageSet:
    """`n_classes` glyph characters x `n_drawings` drawings each, deterministic per seed; cached as .npz."""
    if n_classes < 1 or n_drawings < 1:
        raise ValueError(f"make_glyphs: need at least one class and one drawing, got {n_classes}, {n_drawings}")
    pixels = None
    if cache_dir is not None:
        key = hashlib.sha256(f"v{VERSION}|{n_classes}|{n_drawings}|{seed}|{image_size}".encode()).hexdigest()[:16]
        cache = Path(cache_dir) / f"glyphs-{key}.npz"
        if cache.exists():
            with np.load(cache, allow_pickle=False) as z:
                pixels = z["pixels"]
    if pixels is None:
        pixels = _generate(n_classes, n_drawings, seed, image_size)
        if cache_dir is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_name(cache.stem + ".tmp.npz")
            np.savez(tmp, pixels=pixels)
            tmp.replace(cache)
    labels = np.repeat(np.arange(n_classes), n_drawings)
    meta = {"dataset": "glyphs", "seed": seed, "image_size": image_size, "version": VERSION}
    return ImageSet(glyph_class_ids(n_classes), pixels, labels, name=f"glyphs:seed{seed}", meta=meta)
