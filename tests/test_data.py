"""Datasets and preprocessing: odd image modes, unreadable files, Fashion-MNIST files, official eval transform."""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from _train_data import CLASSES, make_image_folder
from vimamba.data import (DataError, ImageFolderDataset, Preprocessing, build_eval_transform,
                          collate_skipping_unreadable, load_image, open_split, resolve_dataset)
from vimamba.data import fashion_mnist as fm


# ---------------------------------------------------------------------------------------------------- image modes
def test_odd_modes_become_rgb_with_transparency_over_white(tmp_path):
    rgba = Image.new("RGBA", (4, 4), (10, 20, 30, 255))
    rgba.putpixel((0, 0), (10, 20, 30, 0))  # fully transparent pixel
    rgba.save(tmp_path / "rgba.png")
    img = load_image(tmp_path / "rgba.png")
    assert img.mode == "RGB"
    assert img.getpixel((0, 0)) == (255, 255, 255) and img.getpixel((1, 1)) == (10, 20, 30)

    palette = Image.new("P", (2, 2), 0)
    palette.putpalette([200, 100, 50] + [0, 0, 0] * 255)
    palette.info["transparency"] = 1
    palette.putpixel((1, 1), 1)
    palette.save(tmp_path / "p.png", transparency=1)
    img = load_image(tmp_path / "p.png")
    assert img.getpixel((0, 0)) == (200, 100, 50) and img.getpixel((1, 1)) == (255, 255, 255)

    Image.new("L", (2, 2), 77).save(tmp_path / "l.png")
    assert load_image(tmp_path / "l.png").getpixel((0, 0)) == (77, 77, 77)

    Image.new("CMYK", (2, 2), (0, 0, 0, 0)).save(tmp_path / "c.jpg", quality=100)
    r, g, b = load_image(tmp_path / "c.jpg").getpixel((0, 0))
    assert min(r, g, b) > 245  # CMYK "no ink" is white

    # 16-bit grayscale is rescaled to 8 bits, not clipped at 255
    Image.fromarray(np.full((2, 2), 32768, dtype=np.uint16)).save(tmp_path / "g16.png")
    assert load_image(tmp_path / "g16.png", mode="L").getpixel((0, 0)) == 128


def test_image_folder_skips_and_counts_unreadable_files(tmp_path, capsys):
    root = make_image_folder(tmp_path, per_class=(5, 2))
    train = ImageFolderDataset(root / "train", T.ToTensor())
    assert train.classes == list(CLASSES)
    broken = [i for i, (p, _) in enumerate(train.samples) if p.endswith("broken.png")]
    assert len(broken) == 1
    assert train[broken[0]] is None
    assert "broken.png" in capsys.readouterr().err
    images, targets, skipped = collate_skipping_unreadable([train[i] for i in range(len(train))])
    assert skipped == 1 and images.shape == (len(train) - 1, 3, 16, 16)
    assert sorted(set(targets.tolist())) == [0, 1, 2]

    strict = ImageFolderDataset(root / "train", T.ToTensor(), strict=True)
    with pytest.raises(DataError, match="broken.png"):
        strict[broken[0]]


def test_validation_split_keeps_training_labels_when_a_class_is_missing(tmp_path):
    root = make_image_folder(tmp_path, per_class=(2, 2), corrupt=False)
    for f in (root / "val" / CLASSES[0]).iterdir():
        f.unlink()
    (root / "val" / CLASSES[0]).rmdir()
    spec = resolve_dataset(None, root)
    val = open_split(spec, "val")
    assert {label for _, label in val.samples} == {1, 2}  # "left" and "top" keep their training labels


def test_folder_errors_are_clear(tmp_path):
    with pytest.raises(DataError, match="not found"):
        resolve_dataset(None, tmp_path / "missing")
    (tmp_path / "train" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="val"):
        resolve_dataset(None, tmp_path)


# ---------------------------------------------------------------------------------------------------- Fashion-MNIST
def _write_idx(path: Path, array: np.ndarray, truncate: int = 0) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    with gzip.open(path, "wb") as f:
        f.write(data[: len(data) - truncate])


def test_read_idx_round_trip_and_truncation(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "a.gz", array)
    np.testing.assert_array_equal(fm.read_idx(tmp_path / "a.gz"), array)
    _write_idx(tmp_path / "b.gz", array, truncate=5)
    with pytest.raises(DataError, match="truncated"):
        fm.read_idx(tmp_path / "b.gz")


def test_fashion_mnist_absent_offline_explains_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("VIMAMBA_DATA_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(fm, "DEBIAN_DIR", tmp_path / "nowhere")
    monkeypatch.setattr(fm, "_try_apt", lambda log: False)

    def offline(url, root, filename=None, md5=None):
        raise OSError("network is unreachable")

    monkeypatch.setattr("torchvision.datasets.utils.download_url", offline)
    with pytest.raises(DataError) as err:
        fm.ensure_fashion_mnist(log=lambda message: None)
    message = str(err.value)
    assert "apt-get install dataset-fashion-mnist" in message and fm.OFFICIAL_MIRROR in message

    def corrupt(url, root, filename=None, md5=None):
        Path(root, filename).write_bytes(b"not the file")

    monkeypatch.setattr("torchvision.datasets.utils.download_url", corrupt)
    with pytest.raises(DataError, match="MD5"):
        fm.ensure_fashion_mnist(log=lambda message: None)
    assert not any((tmp_path / "cache" / "fashion-mnist").glob("*.gz"))  # the bad download is not kept


@pytest.mark.skipif(fm.find_fashion_mnist() is None, reason="Fashion-MNIST is not installed on this machine")
def test_installed_fashion_mnist_reads():
    test = fm.FashionMNIST(split="test")
    assert len(test) == 10000 and test.images.shape == (10000, 28, 28)
    assert test.targets.bincount().tolist() == [1000] * 10  # the test split is balanced
    img, label = test[0]
    assert img.size == (28, 28) and img.mode == "L" and 0 <= label < 10


# ---------------------------------------------------------------------------------------------------- transforms
def test_official_eval_transform_is_resize_256_bicubic_center_crop_224():
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8))
    ours = build_eval_transform(Preprocessing())(img)
    reference = T.Compose([
        T.Resize(256, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(224), T.ToTensor(),
        T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    ])(img)
    assert ours.shape == (3, 224, 224)
    torch.testing.assert_close(ours, reference)


def test_preprocessing_round_trips_and_validates():
    pre = Preprocessing(img_size=28, in_chans=1, mean=(0.5,), std=(0.25,), crop_pct=1.0)
    assert Preprocessing.from_dict(pre.to_dict()) == pre
    assert pre.image_mode == "L" and pre.with_size(32).img_size == (32, 32)
    with pytest.raises(ValueError, match="one value per channel"):
        Preprocessing(in_chans=1)
