"""What every encoder shares, without torch: raw images -> model pixels (with the domain's input checks) -> vectors.

An encoder is a space: a function from raw images to vectors, fingerprinted over its weights (or model bytes)
and every preprocessing field. Subclasses (`encoder.Encoder` on torch, `imported.OnnxEncoder` on onnxruntime,
`imported.TorchScriptEncoder`) implement `embed` on preprocessed pixel arrays; reading files, EXIF orientation,
the handwriting domain's checks and batching live here once.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from fedrecon.client.preprocess import NATURAL_ENCODER_HINT, Preprocessing, handwriting_misfit, to_pixels

ImageInput = str | Path | Image.Image


class ImageEncoder:
    """Base of every encoder: config, preprocessing, domain, dim, fingerprint, name; `embed` runs the model."""

    config: dict[str, Any]
    preprocessing: Preprocessing
    domain: str
    dim: int
    fingerprint: str
    name: str = "encoder"

    def embed(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Embed preprocessed pixels (N, C, S, S) -> float32 (N, dim)."""
        raise NotImplementedError

    def read(self, image: ImageInput) -> Image.Image:
        """One image file (or a PIL image, returned as is) decoded; a DataError names a file that is no image."""
        from fedrecon.client.data.images import decode_image, read_bytes

        if isinstance(image, Image.Image):
            return image
        return decode_image(read_bytes(Path(image)), str(image))

    def pixels(self, images: Sequence[ImageInput], names: Sequence[str] | None = None) -> np.ndarray:
        """Raw image files or PIL images, in their native look -> uint8 model pixels (N, C, S, S).

        A handwriting encoder refuses images that do not look like handwriting, naming the first of them
        (by `names`, e.g. the files PIL images were read from, when given).
        """
        pre = self.preprocessing
        out, misfits = [], []
        for i, item in enumerate(images):
            image = self.read(item)
            pixels = to_pixels(image, pre)
            if self.domain == "handwriting":
                reason = handwriting_misfit(image, pixels)
                if reason:
                    misfits.append((names[i] if names is not None else item, reason))
            out.append(pixels)
        if misfits:
            self._refuse(misfits, len(out))
        return np.stack(out) if out else np.zeros((0, pre.channels, pre.size, pre.size), np.uint8)

    def _refuse(self, misfits: list[tuple[ImageInput, str]], total: int) -> None:
        first, reason = misfits[0]
        where = str(first) if not isinstance(first, Image.Image) else "a PIL image"
        more = f" (and {len(misfits) - 1} more of {total})" if len(misfits) > 1 else ""
        raise ValueError(f"{where}{more}: does not look like handwriting ({reason}), but encoder {self.name} is "
                         f"for the handwriting domain; {NATURAL_ENCODER_HINT}")

    def embed_images(self, images: ImageInput | Sequence[ImageInput], batch_size: int = 256,
                     progress: bool = False, names: Sequence[str] | None = None) -> np.ndarray:
        """Embed raw image files or PIL images of any size and mode, applying this encoder's preprocessing.

        Returns float32 (N, dim). Images are read in batches, so a large folder never sits in memory whole.
        """
        if isinstance(images, str | Path | Image.Image):
            images = [images]
        images = list(images)
        out = np.empty((len(images), self.dim), dtype=np.float32)
        with tqdm(total=len(images), desc="embedding", unit="img", disable=not progress or len(images) < 500,
                  leave=False) as bar:
            for i in range(0, len(images), batch_size):
                chunk = images[i : i + batch_size]
                chunk_names = None if names is None else names[i : i + batch_size]
                out[i : i + len(chunk)] = self.embed(self.pixels(chunk, chunk_names), batch_size)
                bar.update(len(chunk))
        return out

    def check_shape(self, images: np.ndarray) -> np.ndarray:
        """Preprocessed pixels as (N, C, S, S), gray (N, S, S) accepted; ValueError for any other shape."""
        images = np.asarray(images)
        c, s = self.preprocessing.channels, self.preprocessing.size
        if images.ndim == 3 and c == 1:
            images = images[:, None]
        if images.ndim != 4 or images.shape[1:] != (c, s, s):
            raise ValueError(f"embed: expected images (N, {c}, {s}, {s}), got {images.shape}")
        return images

    def summary(self) -> dict[str, Any]:
        """The few facts a user needs: name, domain, fingerprint, dim and input, as JSON-able data."""
        pre = self.preprocessing
        return {"name": self.name, "domain": self.domain, "fingerprint": self.fingerprint, "dim": self.dim,
                "input": f"{pre.mode} {pre.size}x{pre.size} {pre.resample}" + (" inverted" if pre.invert else ""),
                "bytes_per_class_float32": 4 * self.dim}

    def describe(self) -> dict[str, Any]:
        """Summary plus the preprocessing table and the config's architecture fields."""
        return {**self.summary(), "preprocessing": self.preprocessing.to_dict(),
                **{k: v for k, v in self.config.items() if k not in ("preprocessing", "domain")}}
