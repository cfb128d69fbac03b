"""How raw images become encoder inputs: the one preprocessing function every loader and the encoder share.

An encoder checkpoint's config names its `Preprocessing` (colour mode, polarity, size, resampling,
normalisation). `to_pixels` turns one decoded image in its data set's native look (Omniglot: dark ink
on white, 105 x 105; photos: RGB of any size) into uint8 (C, S, S) model pixels; `normalise` maps
float pixels in [0, 1] to the network's input. Data loaders, `Encoder.embed_images` and the folder
loader all call `to_pixels`, so a raw PNG and the same drawing from a loader embed identically.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from PIL import Image

MODES = {"L": 1, "RGB": 3}
RESAMPLING = {"lanczos": Image.Resampling.LANCZOS, "bilinear": Image.Resampling.BILINEAR,
              "nearest": Image.Resampling.NEAREST}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocessing:
    """Raw image -> model input: convert to `mode`, optionally `invert` (dark ink -> bright ink), resize, normalise.

    `invert=True` says the data set's native images draw dark strokes on a light background and the
    network was trained on bright strokes on black (Omniglot). Model inputs are `(pixel/255 - mean) / std`.
    """

    mode: str = "L"
    invert: bool = False
    size: int = 28
    resample: str = "lanczos"
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"preprocessing mode must be one of {sorted(MODES)}, got {self.mode!r}")
        if self.resample not in RESAMPLING:
            raise ValueError(f"preprocessing resample must be one of {sorted(RESAMPLING)}, got {self.resample!r}")
        if self.size < 1:
            raise ValueError(f"preprocessing size must be >= 1, got {self.size}")
        if len(self.mean) != self.channels or len(self.std) != self.channels or min(self.std) <= 0:
            raise ValueError(f"preprocessing mean/std need {self.channels} values (std > 0), "
                             f"got {list(self.mean)} / {list(self.std)}")
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))

    @property
    def channels(self) -> int:
        """1 for gray, 3 for RGB."""
        return MODES[self.mode]

    @property
    def ink_bright(self) -> bool:
        """True when the network sees bright strokes on a dark background (gray inputs)."""
        return self.mode == "L"

    def to_dict(self) -> dict[str, Any]:
        """As the JSON-able `preprocessing` table of an encoder config."""
        out = asdict(self)
        out["mean"], out["std"] = list(self.mean), list(self.std)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessing:
        """From a config's `preprocessing` table (unknown keys are an error)."""
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown preprocessing keys {sorted(unknown)}; expected {sorted(known)}")
        return cls(**{k: tuple(v) if k in ("mean", "std") else v for k, v in data.items()})


def native(dataset: str, size: int | None = None, mode: str | None = None) -> Preprocessing:
    """The preprocessing of a data set's native images (what its shipped encoders were trained with)."""
    if dataset == "omniglot":
        return Preprocessing("L", invert=True, size=size or 28)
    if dataset == "glyphs":  # generated as bright strokes on black already
        return Preprocessing("L", invert=False, size=size or 28)
    if dataset == "mini-imagenet" or mode == "RGB":
        return Preprocessing("RGB", invert=False, size=size or 84, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    return Preprocessing(mode or "L", invert=False, size=size or 28)


def to_pixels(image: Image.Image, pre: Preprocessing) -> np.ndarray:
    """One decoded image in its native look -> uint8 (C, S, S) model pixels, as `pre` says."""
    if pre.mode == "L":
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            background = Image.new("RGBA", image.size, (255, 255, 255, 255))
            image = Image.alpha_composite(background, image.convert("RGBA"))
        gray = np.asarray(image.convert("L"), dtype=np.uint8)
        if pre.invert:
            gray = 255 - gray
        image = Image.fromarray(gray)
    else:
        image = image.convert("RGB")
        if pre.invert:
            image = Image.fromarray(255 - np.asarray(image, dtype=np.uint8))
    if image.size != (pre.size, pre.size):
        image = image.resize((pre.size, pre.size), RESAMPLING[pre.resample])
    pixels = np.asarray(image, dtype=np.uint8)
    return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


def check_inputs(images: np.ndarray, pre: Preprocessing, who: str = "embed") -> None:
    """Refuse float pixel arrays whose statistics contradict `pre` (wrong range, or dark ink for a bright-ink net).

    `images` are (N, C, S, S) float in [0, 1]. A gray network trained on bright strokes sees a dark
    background, so an image whose median pixel is light was not preprocessed (e.g. a raw Omniglot PNG).
    """
    if images.size == 0:
        return
    low, high = float(images.min()), float(images.max())
    if not (np.isfinite(low) and np.isfinite(high)) or low < -1e-6 or high > 1 + 1e-6:
        raise ValueError(f"{who}: pixel values must be float in [0, 1] (or uint8 0..255); got min {low:g}, "
                         f"max {high:g} (already normalised, or 0..255 floats?)")
    if pre.ink_bright:
        medians = np.median(images.reshape(len(images), -1), axis=1)
        light = int((medians > 0.75).sum())
        if light:
            hint = "its preprocessing inverts raw images; " if pre.invert else ""
            raise ValueError(f"{who}: {light} of {len(images)} images look like dark ink on a light background "
                             f"(median pixel {float(medians.max()):.2f}), but this encoder expects bright ink on "
                             f"black; {hint}pass raw images to Encoder.embed_images, which applies the "
                             "encoder's preprocessing")
