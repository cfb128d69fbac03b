"""Generated RGB photos in an ImageFolder tree: coloured objects on white or textured backgrounds, many sizes/modes.

Nothing is downloaded. Each class is an object colour and shape; every photo gets its own size, position,
scale, background and noise. Among them: one EXIF-rotated JPEG (stored sideways, Orientation=6), one RGBA
PNG with a transparent background, one palette ('P') PNG.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CLASSES = {  # name -> (object colour, shape)
    "tomato": ((215, 40, 30), "ellipse"),
    "leaf": ((40, 160, 50), "polygon"),
    "sky": ((60, 110, 220), "rectangle"),
    "banana": ((235, 205, 40), "ellipse"),
    "plum": ((120, 40, 140), "polygon"),
    "orange": ((245, 140, 20), "rectangle"),
}
EXIF_ORIENTATION = 0x0112


def photo(colour: tuple[int, int, int], shape: str, rng: np.random.Generator, white: bool) -> Image.Image:
    """One RGB photo of an object of `colour` and `shape` on a white (or textured, light) background."""
    w, h = int(rng.integers(90, 260)), int(rng.integers(90, 260))
    if white:
        base = np.full((h, w, 3), 250, np.float32)
    else:
        tint = rng.uniform(215, 250, size=3)
        ramp = np.linspace(0.8, 1.1, w)[None, :, None]
        base = np.clip(tint[None, None] * ramp * np.ones((h, 1, 1)), 0, 255).astype(np.float32)
    image = Image.fromarray(np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    s = rng.uniform(0.55, 0.85)
    cx, cy = rng.uniform(0.4, 0.6) * w, rng.uniform(0.4, 0.6) * h
    box = [cx - s * w / 2, cy - s * h / 2, cx + s * w / 2, cy + s * h / 2]
    fill = tuple(int(np.clip(c + rng.normal(0, 12), 0, 255)) for c in colour)
    if shape == "ellipse":
        draw.ellipse(box, fill=fill)
    elif shape == "rectangle":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon([(box[0], box[3]), ((box[0] + box[2]) / 2, box[1]), (box[2], box[3])], fill=fill)
    noisy = np.asarray(image, np.float32) + rng.normal(0, 4, (h, w, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def save_special(image: Image.Image, folder: Path, kind: str) -> Path:
    """Save `image` as the EXIF-rotated JPEG, the RGBA PNG or the palette PNG of the set."""
    if kind == "exif":
        path = folder / "phone.jpg"
        exif = Image.Exif()
        exif[EXIF_ORIENTATION] = 6  # viewer rotates 90 degrees clockwise to show it upright
        image.transpose(Image.Transpose.ROTATE_90).save(path, quality=92, exif=exif)  # stored sideways
    elif kind == "rgba":
        path = folder / "cutout.png"
        rgba = image.convert("RGBA")
        pixels = np.asarray(rgba).copy()
        pixels[..., 3] = np.where(np.asarray(image).min(axis=2) > 235, 0, 255)  # the white background transparent
        Image.fromarray(pixels, "RGBA").save(path)
    else:
        path = folder / "palette.png"
        image.convert("P", palette=Image.Palette.ADAPTIVE, colors=64).save(path)
    return path


def write_photos(root: Path, per_class: int, seed: int = 0, classes: dict | None = None,
                 special: bool = True) -> dict[str, list[Path]]:
    """`root/<class>/*.jpg|png` photos; with `special`, class 0 holds the EXIF, RGBA and palette files."""
    rng = np.random.default_rng(seed)
    out: dict[str, list[Path]] = {}
    for k, (name, (colour, shape)) in enumerate((classes or CLASSES).items()):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        out[name] = []
        for i in range(per_class):
            image = photo(colour, shape, rng, white=i % 2 == 0)
            if special and k == 0 and i < 3:
                out[name].append(save_special(image, folder, ("exif", "rgba", "palette")[i]))
                continue
            path = folder / f"{name}{i:02d}.{'jpg' if i % 3 else 'png'}"
            image.save(path, **({"quality": 90} if path.suffix == ".jpg" else {}))
            out[name].append(path)
    return out
