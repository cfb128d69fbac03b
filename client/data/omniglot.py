"""Omniglot (Lake et al. 2015), the official release: zipped, extracted, or torchvision's `omniglot-py/`.

Class ids are `Alphabet/characterNN`; with rotations other than (0,) every class becomes one class per
rotation, `Alphabet/characterNN/rotDDD` (degrees, as in the Vinyals et al. split files). Images are
1 x S x S uint8 with strokes as foreground (ink bright on black), resized with antialiasing.
"""

from __future__ import annotations

import hashlib
import shutil
import urllib.request
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from fedrecon.client.data.images import DataError, ImageSet, decode_image
from fedrecon.client.preprocess import Preprocessing, native, to_pixels

OFFICIAL_URL = "https://github.com/brendenlake/omniglot/raw/master/python"
# The official zips' checksums (the only ones the release publishes, also used by torchvision).
OFFICIAL_CHECKSUMS = {
    "images_background.zip": "md5:68d2efa1b9178cc56df9314c21c6e718",
    "images_evaluation.zip": "md5:6b91aef0f799c5bb55b94e3f2daec811",
}
LAYOUT = ("<dir>/images_background.zip, <dir>/images_background/<Alphabet>/characterNN/*.png, "
          "or <dir>/omniglot-py/images_background/... (likewise images_evaluation)")


def _subset_name(background: bool) -> str:
    return "images_background" if background else "images_evaluation"


def find_source(data_dir: str | Path, background: bool) -> Path:
    """Locate the zip or extracted folder of one Omniglot half; DataError naming the layout if none."""
    root = Path(data_dir).expanduser()
    name = _subset_name(background)
    if not root.is_dir():
        raise DataError(f"{root}: Omniglot data directory not found (expected {LAYOUT})")
    for base in (root, root / "omniglot-py", root / "omniglot"):
        if (base / name).is_dir():
            return base / name
        if (base / f"{name}.zip").is_file():
            return base / f"{name}.zip"
    raise DataError(f"{root}: no {name}.zip or {name}/ folder (expected {LAYOUT})")


def _entries(source: Path) -> Iterator[tuple[str, str, str, bytes]]:
    """(alphabet, character, where, png bytes) for every PNG of a zip or an extracted folder."""
    if source.is_dir():
        for alphabet in sorted(p for p in source.iterdir() if p.is_dir()):
            characters = sorted(p for p in alphabet.iterdir() if p.is_dir())
            if not characters:
                raise DataError(f"{alphabet}: alphabet folder without character folders (expected {LAYOUT})")
            for character in characters:
                files = sorted(character.glob("*.png"))
                if not files:
                    raise DataError(f"{character}: empty class (no .png drawings)")
                for f in files:
                    yield alphabet.name, character.name, str(f), f.read_bytes()
        return
    try:
        zf = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"{source}: corrupt or unreadable zip ({exc}); expected {LAYOUT}") from exc
    with zf:
        names = sorted(n for n in zf.namelist() if n.lower().endswith(".png") and "__MACOSX" not in n)
        dirs = {n.rstrip("/") for n in zf.namelist() if n.endswith("/")}
        seen: set[tuple[str, str]] = set()
        for n in names:
            parts = n.split("/")
            if len(parts) < 3:
                raise DataError(f"{source}: entry {n!r} is not <Alphabet>/characterNN/file.png ({LAYOUT})")
            alphabet, character = parts[-3], parts[-2]
            seen.add((alphabet, character))
            try:
                data = zf.read(n)
            except (zipfile.BadZipFile, OSError, EOFError) as exc:
                raise DataError(f"{source}: corrupt zip entry {n!r} ({exc})") from exc
            yield alphabet, character, f"{source}!{n}", data
        for d in dirs:  # character folders present in the zip but holding no PNG
            parts = d.split("/")
            if len(parts) >= 3 and parts[-1].startswith("character") and (parts[-2], parts[-1]) not in seen:
                raise DataError(f"{source}: empty class {d!r} (no .png drawings)")


def read_omniglot(source: Path, image_size: int = 28, antialias: bool = True) -> tuple[list[str], np.ndarray,
                                                                                         np.ndarray]:
    """Decode every drawing once: (class ids, uint8 pixels (N, 1, S, S) ink-bright, labels).

    Omniglot draws black strokes on white; its native preprocessing inverts them (`preprocess.native`).
    """
    pre = native("omniglot", image_size)
    if not antialias:
        pre = Preprocessing(pre.mode, pre.invert, pre.size, "nearest", pre.mean, pre.std)
    class_ids: list[str] = []
    index: dict[str, int] = {}
    pixels: list[np.ndarray] = []
    labels: list[int] = []
    for alphabet, character, where, data in _entries(source):
        cid = f"{alphabet}/{character}"
        if cid not in index:
            index[cid] = len(class_ids)
            class_ids.append(cid)
        pixels.append(to_pixels(decode_image(data, where), pre))
        labels.append(index[cid])
    if not pixels:
        raise DataError(f"{source}: no drawings found (expected {LAYOUT})")
    return class_ids, np.stack(pixels), np.asarray(labels, dtype=np.int64)


def _cache_key(source: Path, image_size: int, antialias: bool) -> str:
    st = source.stat()
    text = f"v1|{source.resolve()}|{st.st_size}|{st.st_mtime_ns}|{image_size}|{antialias}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def load_omniglot(
    data_dir: str | Path,
    background: bool,
    image_size: int = 28,
    rotations: Sequence[int] = (0,),
    antialias: bool = True,
    cache_dir: str | Path | None = None,
) -> ImageSet:
    """Load `images_background` (964 characters) or `images_evaluation` (659), 20 drawings each.

    `rotations` (degrees, multiples of 90) turns every character into one class per rotation with a
    `/rotDDD` suffix. `cache_dir` keeps the decoded, resized pixels as .npz for the next load.
    """
    if any(r % 90 for r in rotations) or not rotations:
        raise ValueError(f"rotations must be multiples of 90 degrees, got {tuple(rotations)}")
    source = find_source(data_dir, background)
    cached = None
    if cache_dir is not None:
        cache = Path(cache_dir) / f"omniglot-{source.stem}-{_cache_key(source, image_size, antialias)}.npz"
        if cache.exists():
            with np.load(cache, allow_pickle=False) as z:
                cached = (list(z["class_ids"]), z["pixels"], z["labels"])
    if cached is None:
        cached = read_omniglot(source, image_size, antialias)
        if cache_dir is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(".tmp.npz")
            np.savez(tmp, class_ids=np.array(cached[0]), pixels=cached[1], labels=cached[2])
            tmp.replace(cache)
    class_ids, pixels, labels = cached
    class_ids = [str(c) for c in class_ids]
    if tuple(rotations) != (0,):
        all_ids, all_pix, all_lab = [], [], []
        for r, deg in enumerate(rotations):
            all_ids += [f"{c}/rot{deg % 360:03d}" for c in class_ids]
            all_pix.append(np.ascontiguousarray(np.rot90(pixels, k=(deg // 90) % 4, axes=(2, 3))))
            all_lab.append(labels + r * len(class_ids))
        class_ids, pixels, labels = all_ids, np.concatenate(all_pix), np.concatenate(all_lab)
    meta = {"dataset": "omniglot", "source": str(source), "image_size": image_size,
            "rotations": list(rotations), "antialias": antialias}
    return ImageSet(class_ids, pixels, labels, name=f"omniglot:{source.name}", meta=meta)


def file_digest(path: Path, algorithm: str) -> str:
    """Hex digest of a file (md5 or sha256), read in chunks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify(path: Path, expected: str) -> None:
    """Check `path` against `algo:hexdigest` (md5 or sha256); DataError on mismatch."""
    algorithm, _, digest = expected.partition(":")
    if not digest:
        algorithm, digest = "sha256", expected
    actual = file_digest(path, algorithm)
    if actual != digest.lower():
        raise DataError(f"{path}: {algorithm} {actual} does not match the expected {digest}")


def download_omniglot(
    dest: str | Path,
    base_url: str = OFFICIAL_URL,
    checksums: dict[str, str] | None = None,
    background: bool | None = None,
    progress: bool = True,
) -> list[Path]:
    """Fetch the Omniglot zips into `dest` (http(s):// or file:// base URL), verifying each checksum.

    `checksums` maps file name -> `md5:...` or `sha256:...` (defaults: the official release's). A file
    already present with the right checksum is not fetched again. `background=None` fetches both.
    """
    dest = Path(dest).expanduser()
    dest.mkdir(parents=True, exist_ok=True)
    sums = OFFICIAL_CHECKSUMS if checksums is None else checksums
    halves = [True, False] if background is None else [background]
    out = []
    for half in halves:
        name = f"{_subset_name(half)}.zip"
        target = dest / name
        expected = sums.get(name)
        if target.exists() and expected:
            try:
                verify(target, expected)
                out.append(target)
                continue
            except DataError:
                pass
        url = f"{base_url.rstrip('/')}/{name}"
        part = target.with_suffix(".zip.part")
        try:
            with urllib.request.urlopen(url, timeout=60) as resp, open(part, "wb") as f:
                total = int(resp.headers.get("Content-Length") or 0) or None
                with tqdm(total=total, unit="B", unit_scale=True, desc=name, disable=not progress) as bar:
                    while chunk := resp.read(1 << 16):
                        f.write(chunk)
                        bar.update(len(chunk))
        except OSError as exc:
            part.unlink(missing_ok=True)
            raise DataError(f"{url}: download failed ({exc})") from exc
        if expected:
            try:
                verify(part, expected)
            except DataError:
                part.unlink(missing_ok=True)
                raise
        shutil.move(part, target)
        out.append(target)
    return out
