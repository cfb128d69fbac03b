"""Omniglot loader on the real release: counts, layouts (zip, extracted, omniglot-py), rotations, errors,
and the download path over a loopback HTTP server and a file:// URL."""

from __future__ import annotations

import functools
import http.server
import shutil
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fedrecon.client.data.images import DataError
from fedrecon.client.data.omniglot import download_omniglot, load_omniglot

pytestmark = pytest.mark.data
SHARED_SHA256 = {  # the shared, re-packed zips (../shared/data/README.md)
    "images_background.zip": "sha256:2f39eea9d12c58ea906f81442dbcfe509e4d7afd9311add9bc57ab9e6ae6ea9d",
    "images_evaluation.zip": "sha256:9def87c9698db1941087d62c8ff0898285a744d456301231682fb73aa7584469",
}


@pytest.fixture(scope="module")
def background(shared_data: Path):
    return load_omniglot(shared_data / "omniglot", background=True)


@pytest.fixture(scope="module")
def small_zip(shared_data: Path, tmp_path_factory) -> Path:
    """A copy of two alphabets of images_background.zip, in the official layout."""
    out = tmp_path_factory.mktemp("small") / "images_background.zip"
    with zipfile.ZipFile(shared_data / "omniglot" / "images_background.zip") as src, \
            zipfile.ZipFile(out, "w") as dst:
        for name in src.namelist():
            parts = name.split("/")
            if len(parts) > 1 and parts[1] in ("Bengali", "Futurama"):
                dst.writestr(name, src.read(name))
    return out


def test_background_has_964_characters_of_20_drawings(background) -> None:
    assert len(background.class_ids) == 964
    assert background.pixels.shape == (964 * 20, 1, 28, 28) and background.pixels.dtype == np.uint8
    assert {background.count(c) for c in background.class_ids} == {20}
    assert background.class_ids[0] == "Alphabet_of_the_Magi/character01"
    assert len({c.split("/")[0] for c in background.class_ids}) == 30
    # strokes are the foreground: mostly dark images with bright ink, dark borders
    assert background.pixels.mean() < 60 and background.pixels.max() == 255
    assert background.pixels[:, :, 0, :].mean() < 10
    x = background.images(background.class_ids[5])
    assert x.shape == (20, 1, 28, 28) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1


def test_evaluation_has_659_characters_of_20_drawings(shared_data: Path) -> None:
    ev = load_omniglot(shared_data / "omniglot", background=False)
    assert len(ev.class_ids) == 659 and len(ev) == 659 * 20
    assert {ev.count(c) for c in ev.class_ids} == {20}
    assert len({c.split("/")[0] for c in ev.class_ids}) == 20


def test_rotations_become_classes_with_rot_suffix(small_zip: Path) -> None:
    plain = load_omniglot(small_zip.parent, True)
    rot = load_omniglot(small_zip.parent, True, rotations=(0, 90, 180, 270))
    assert len(rot.class_ids) == 4 * len(plain.class_ids)
    cid = plain.class_ids[3]
    assert f"{cid}/rot000" in rot.class_ids and f"{cid}/rot270" in rot.class_ids
    np.testing.assert_array_equal(rot.images(f"{cid}/rot000"), plain.images(cid))
    np.testing.assert_array_equal(rot.images(f"{cid}/rot090"), np.rot90(plain.images(cid), 1, axes=(2, 3)))
    assert not np.array_equal(rot.images(f"{cid}/rot090"), plain.images(cid))


def test_extracted_and_torchvision_layouts_equal_the_zip(small_zip: Path, tmp_path: Path) -> None:
    from_zip = load_omniglot(small_zip.parent, True, image_size=20)
    with zipfile.ZipFile(small_zip) as z:
        z.extractall(tmp_path / "extracted")
        z.extractall(tmp_path / "tv" / "omniglot-py")
    for root in (tmp_path / "extracted", tmp_path / "tv"):
        other = load_omniglot(root, True, image_size=20)
        assert other.class_ids == from_zip.class_ids
        np.testing.assert_array_equal(other.pixels, from_zip.pixels)
    assert from_zip.pixels.shape[-1] == 20


def test_cache_returns_identical_pixels(small_zip: Path, tmp_path: Path) -> None:
    first = load_omniglot(small_zip.parent, True, cache_dir=tmp_path)
    assert list(tmp_path.glob("*.npz"))
    second = load_omniglot(small_zip.parent, True, cache_dir=tmp_path)
    assert second.class_ids == first.class_ids
    np.testing.assert_array_equal(second.pixels, first.pixels)


def test_missing_folder_names_path_and_layout(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="images_background"):
        load_omniglot(tmp_path, True)
    with pytest.raises(DataError, match="not found"):
        load_omniglot(tmp_path / "nope", True)


def test_corrupt_zip_is_reported(tmp_path: Path) -> None:
    (tmp_path / "images_evaluation.zip").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(DataError, match="corrupt"):
        load_omniglot(tmp_path, False)


def test_empty_class_and_bad_images_are_reported(tmp_path: Path) -> None:
    char = tmp_path / "images_background" / "Alpha" / "character01"
    char.mkdir(parents=True)
    with pytest.raises(DataError, match="empty class"):
        load_omniglot(tmp_path, True)
    (char / "0001_01.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="0001_01.png"):
        load_omniglot(tmp_path, True)
    Image.fromarray(np.zeros((105, 105), np.uint16)).save(char / "0001_01.png")  # 16-bit gray
    with pytest.raises(DataError, match="mode"):
        load_omniglot(tmp_path, True)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep test output clean
        pass


def test_download_over_loopback_http_verifies_checksums(shared_data: Path, tmp_path: Path) -> None:
    handler = functools.partial(_QuietHandler, directory=str(shared_data / "omniglot"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)  # port 0: a free port
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        got = download_omniglot(tmp_path / "dl", base_url=url, checksums=SHARED_SHA256, progress=False)
        assert [p.name for p in got] == ["images_background.zip", "images_evaluation.zip"]
        for p in got:
            assert p.read_bytes() == (shared_data / "omniglot" / p.name).read_bytes()
        assert not list((tmp_path / "dl").glob("*.part"))
        bad = dict(SHARED_SHA256, **{"images_evaluation.zip": "sha256:" + "0" * 64})
        with pytest.raises(DataError, match="does not match"):
            download_omniglot(tmp_path / "bad", base_url=url, checksums=bad, background=False, progress=False)
        assert not list((tmp_path / "bad").iterdir())
        with pytest.raises(DataError, match="download failed"):
            download_omniglot(tmp_path / "bad", base_url=url + "/missing", checksums=bad, progress=False)
    finally:
        server.shutdown()
        server.server_close()


def test_download_from_file_url_then_load(shared_data: Path, tmp_path: Path) -> None:
    src = tmp_path / "mirror"
    src.mkdir()
    shutil.copy(shared_data / "omniglot" / "images_evaluation.zip", src)
    got = download_omniglot(tmp_path / "dl", base_url=src.as_uri(), checksums=SHARED_SHA256, background=False,
                            progress=False)
    assert got == [tmp_path / "dl" / "images_evaluation.zip"]
    # the official checksums (md5 of the release zips) reject the re-packed shared copy
    with pytest.raises(DataError, match="md5"):
        download_omniglot(tmp_path / "dl2", base_url=src.as_uri(), background=False, progress=False)
