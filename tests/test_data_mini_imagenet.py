"""mini-ImageNet loader on generated JPEG fixtures in all three layouts, named by the real split CSVs."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fedrecon.client.data.images import DataError
from fedrecon.client.data.mini_imagenet import (
    load_mini_imagenet,
    load_mini_imagenet_classes,
    read_class_list,
    read_split_csv,
)

PER_CLASS = 3
N_CLASSES = 2


def test_real_split_csvs_and_class_list(shared_data: Path) -> None:
    root = shared_data / "mini-imagenet"
    for split, n in (("train", 64), ("val", 16), ("test", 20)):
        classes = read_split_csv(root / f"{split}.csv")
        assert len(classes) == n and {len(v) for v in classes.values()} == {600}
    order = read_class_list(root / "fed-recon-classes.txt")
    assert len(order) == 100 and len({w for w, _ in order}) == 100


@pytest.fixture(scope="module")
def fixture_dir(shared_data: Path, tmp_path_factory) -> Path:
    """Reduced real CSVs (first classes, few images) + random-size JPEGs, and the same in folders."""
    root = tmp_path_factory.mktemp("mini")
    rng = np.random.default_rng(0)
    (root / "images").mkdir()
    for split in ("train", "val", "test"):
        classes = read_split_csv(shared_data / "mini-imagenet" / f"{split}.csv")
        lines = ["filename,label"]
        for wnid in list(classes)[:N_CLASSES]:
            (root / split / wnid).mkdir(parents=True)
            for name in classes[wnid][:PER_CLASS]:
                h, w = rng.integers(60, 140, 2)
                Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / "images" / name)
                (root / split / wnid / name).write_bytes((root / "images" / name).read_bytes())
                lines.append(f"{name},{wnid}")
        (root / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return root


def test_csv_and_folder_layouts_agree(fixture_dir: Path, tmp_path: Path) -> None:
    # csv layout: hide the split folders so the CSV + images/ layout is the one detected
    csv_only = tmp_path / "csv"
    csv_only.mkdir()
    (csv_only / "images").symlink_to(fixture_dir / "images")
    (csv_only / "train.csv").symlink_to(fixture_dir / "train.csv")
    a = load_mini_imagenet(csv_only, "train")
    folders = tmp_path / "folders"
    folders.mkdir()
    (folders / "train").symlink_to(fixture_dir / "train")
    b = load_mini_imagenet(folders, "train")
    assert a.meta["split"] == "train" and len(a.class_ids) == N_CLASSES
    assert a.pixels.shape == (N_CLASSES * PER_CLASS, 3, 84, 84)
    assert a.class_ids == b.class_ids and a.class_ids[0].startswith("n")
    np.testing.assert_array_equal(a.pixels, b.pixels)
    assert load_mini_imagenet(folders, "train", image_size=32).pixels.shape[-1] == 32


def test_csvs_may_live_apart_from_images(fixture_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "images").symlink_to(fixture_dir / "images")
    got = load_mini_imagenet(tmp_path, "val", csv_dir=fixture_dir)
    assert len(got.class_ids) == N_CLASSES and len(got) == N_CLASSES * PER_CLASS


def test_pickle_cache_layout(fixture_dir: Path, tmp_path: Path) -> None:
    ref = load_mini_imagenet(fixture_dir, "test")
    image_data = ref.pixels.transpose(0, 2, 3, 1).copy()
    class_dict = {c: ref.indices(c).tolist() for c in ref.class_ids}
    with open(tmp_path / "mini-imagenet-cache-test.pkl", "wb") as f:
        pickle.dump({"image_data": image_data, "class_dict": class_dict}, f)
    got = load_mini_imagenet(tmp_path, "test")
    assert got.class_ids == ref.class_ids
    np.testing.assert_array_equal(got.pixels, ref.pixels)
    torch_item = got.torch_dataset()[0]
    assert tuple(torch_item[0].shape) == (3, 84, 84) and torch_item[1] == 0


def test_load_by_class_list_crosses_splits(fixture_dir: Path) -> None:
    train = read_split_csv(fixture_dir / "train.csv")
    test = read_split_csv(fixture_dir / "test.csv")
    order = [list(test)[1], list(train)[0], list(test)[0]]
    got = load_mini_imagenet_classes(fixture_dir, order)
    assert got.class_ids == order and len(got) == 3 * PER_CLASS
    with pytest.raises(DataError, match="n99999999"):
        load_mini_imagenet_classes(fixture_dir, ["n99999999"])


def test_bad_data_is_reported(fixture_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        load_mini_imagenet(tmp_path / "nope", "train")
    with pytest.raises(DataError, match="no mini-ImageNet 'train' split"):
        load_mini_imagenet(tmp_path, "train")
    # a CSV naming files that are not in images/
    (tmp_path / "images").mkdir()
    (tmp_path / "train.csv").write_text("filename,label\nn0000000100000001.jpg,n00000001\n")
    with pytest.raises(DataError, match="n0000000100000001.jpg"):
        load_mini_imagenet(tmp_path, "train")
    # an empty class folder, and an image in a wrong mode
    empty = tmp_path / "other" / "val" / "n00000002"
    empty.mkdir(parents=True)
    with pytest.raises(DataError, match="empty class"):
        load_mini_imagenet(tmp_path / "other", "val")
    Image.fromarray(np.zeros((30, 30), np.uint16)).save(empty / "x.png")
    with pytest.raises(DataError, match="mode"):
        load_mini_imagenet(tmp_path / "other", "val")
    (tmp_path / "other" / "mini-imagenet-cache-test.pkl").write_bytes(b"garbage")
    with pytest.raises(DataError, match="pickle"):
        load_mini_imagenet(tmp_path / "other", "test")
    with pytest.raises(ValueError, match="split"):
        load_mini_imagenet(fixture_dir, "training")


def test_raw_jpegs_embed_as_the_loader_does(fixture_dir: Path) -> None:
    from fedrecon.client.encoder import Encoder

    encoder = Encoder.random("mini-imagenet", image_size=84, channels=3, device="cpu")
    assert encoder.preprocessing.mode == "RGB" and encoder.preprocessing.mean[0] == 0.485
    data = load_mini_imagenet(fixture_dir, "train")
    wnid = data.class_ids[0]
    files = sorted((fixture_dir / "train" / wnid).iterdir())
    np.testing.assert_allclose(encoder.embed_images(files), encoder.embed(data.pixels[data.indices(wnid)]),
                               rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):  # already-normalised arrays are refused
        encoder.embed((data.pixels[:2].astype(np.float32) / 255 - 0.45) / 0.22)
