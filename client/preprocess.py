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
from PIL import Image, ImageOps

MODES = {"L": 1, "RGB": 3}
RESAMPLING = {"lanczos": Image.Resampling.LANCZOS, "bilinear": Image.Resampling.BILINEAR,
              "nearest": Image.Resampling.NEAREST}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DOMAINS = ("handwriting", "natural")
HANDWRITING_DATASETS = ("omniglot", "glyphs")
NATURAL_ENCODER_HINT = ("for photos use a natural-image encoder: fedrecon encoder import MODEL.onnx --name NAME "
                        "--size S --mode RGB --mean m,m,m --std s,s,s --domain natural")


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


def domain_of(config: dict[str, Any]) -> str:
    """The domain an encoder config declares; without the field: handwriting for omniglot and glyphs, for a
    folder that inverts (scanned ink) and for other gray inputs; natural images otherwise (photos, folders
    read as they are)."""
    domain = config.get("domain")
    if domain is None:
        pre = config.get("preprocessing", {})
        if config.get("dataset") == "folder":
            domain = "handwriting" if pre.get("invert") else "natural"
        else:
            gray = pre.get("mode", "L") == "L"
            domain = "handwriting" if config.get("dataset") in HANDWRITING_DATASETS or gray else "natural"
    if domain not in DOMAINS:
        raise ValueError(f"encoder domain must be one of {', '.join(DOMAINS)}, got {domain!r}")
    return domain


def upright(image: Image.Image) -> Image.Image:
    """The image as a viewer shows it: EXIF orientation applied (a phone photo stored sideways is turned)."""
    if image.getexif().get(0x0112, 1) != 1:
        return ImageOps.exif_transpose(image)
    return image


def handwriting_misfit(image: Image.Image, pixels: np.ndarray) -> str | None:
    """Why a decoded image and its model pixels (bright ink on black) do not look like handwriting, or None.

    Handwriting is gray strokes on a plain background: after preprocessing most pixels are dark and few are
    mid-tones (Omniglot at 28 px: at most 15% mid-tones, no coloured pixels). Photos have colour, mid-tones
    or a light median.
    """
    gray = pixels.astype(np.float32).mean(axis=0) / 255.0
    median = float(np.median(gray))
    if median > 0.75:
        return f"median pixel {median:.2f} after preprocessing (dark ink on a light background expected)"
    mid = float(np.mean((gray > 0.2) & (gray < 0.8)))
    if mid > 0.3:
        return f"{mid:.0%} mid-tone pixels (handwriting has under 30%)"
    if image.mode not in ("1", "L", "LA", "I", "I;16", "F"):
        small = image.convert("RGB")
        small.thumbnail((64, 64))
        rgb = np.asarray(small, dtype=np.int16)
        colourful = float(np.mean(rgb.max(axis=2) - rgb.min(axis=2) > 40))
        if colourful > 0.1:
            return f"{colourful:.0%} coloured pixels (handwriting is gray strokes)"
    return None


def to_pixels(image: Image.Image, pre: Preprocessing) -> np.ndarray:
    """One decoded image in its native look -> uint8 (C, S, S) model pixels as `pre` says (EXIF orientation applied)."""
    image = upright(image)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))  # transparent -> white, as viewers show it
        image = Image.alpha_composite(background, image.convert("RGBA"))
    if pre.mode == "L":
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


def check_inputs(images: np.ndarray, pre: Preprocessing, who: str = "embed", domain: str = "handwriting") -> None:
    """Refuse float pixel arrays whose statistics contradict `pre` (wrong range; dark ink for a handwriting net).

    `images` are (N, C, S, S) float in [0, 1]. A gray network trained on bright strokes sees a dark
    background, so an image whose median pixel is light was not preprocessed (e.g. a raw Omniglot PNG).
    """
    if images.size == 0:
        return
    low, high = float(images.min()), float(images.max())
    if not (np.isfinite(low) and np.isfinite(high)) or low < -1e-6 or high > 1 + 1e-6:
        raise ValueError(f"{who}: pixel values must be float in [0, 1] (or uint8 0..255); got min {low:g}, "
                         f"max {high:g} (already normalised, or 0..255 floats?)")
    if pre.ink_bright and domain == "handwriting":  # the ink check is the handwriting domain's, never a photo's
        medians = np.median(images.reshape(len(images), -1), axis=1)
        light = int((medians > 0.75).sum())
        if light:
            hint = "its preprocessing inverts raw images; " if pre.invert else ""
            raise ValueError(f"{who}: {light} of {len(images)} images look like dark ink on a light background "
                             f"(median pixel {float(medians.max()):.2f}), but this encoder expects bright ink on "
                             f"black; {hint}pass raw images to Encoder.embed_images, which applies the "
                             "encoder's preprocessing")
