"""Readers of the upstream formats (IDX, Keras npz, CIFAR pickles) and of the user's image folder."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from digitlab.data.download import download_dataset
from digitlab.data.preprocess import prepare_dataset
from digitlab.data.prepared import load_split
from digitlab.data.images import decode_image, open_image
from digitlab.data.sources import parse_dataset
from digitlab.data.sources.cifar import read_cifar_archive
from digitlab.data.sources.folder import read_image_folder, scan_image_folder
from digitlab.data.sources.idx import read_idx
from digitlab.data.sources.keras_npz import read_keras_npz
from digitlab.errors import ConfigError, DigitlabError
from tests.data_helpers import cifar_tarball_bytes, idx_bytes, keras_npz_bytes, labelled_images
from tests.stack_fixtures import require

DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


def test_idx_round_trip_and_bad_files(tmp_path: Path) -> None:
    images, labels = labelled_images(7, (28, 28), 10)
    (tmp_path / "images.gz").write_bytes(idx_bytes(images))
    (tmp_path / "labels.gz").write_bytes(idx_bytes(labels))
    np.testing.assert_array_equal(read_idx(tmp_path / "images.gz"), images)
    np.testing.assert_array_equal(read_idx(tmp_path / "labels.gz"), labels)

    (tmp_path / "short.gz").write_bytes(idx_bytes(images)[:-40])
    with pytest.raises(DigitlabError, match="short.gz"):
        read_idx(tmp_path / "short.gz")
    (tmp_path / "text").write_bytes(b"hello world, not IDX")
    with pytest.raises(DigitlabError, match="not an IDX file"):
        read_idx(tmp_path / "text")


def test_idx_reads_the_real_fashion_mnist_test_set() -> None:
    require("Debian package dataset-fashion-mnist", None if DEBIAN_FASHION.is_dir() else f"{DEBIAN_FASHION} is missing")
    images = read_idx(DEBIAN_FASHION / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(DEBIAN_FASHION / "t10k-labels-idx1-ubyte.gz")
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [1000] * 10


def test_keras_npz_keys(tmp_path: Path) -> None:
    (tmp_path / "mnist.npz").write_bytes(keras_npz_bytes(n_train=30, n_test=10))
    x_train, y_train, x_test, y_test = read_keras_npz(tmp_path / "mnist.npz")
    assert x_train.shape == (30, 28, 28) and x_test.shape == (10, 28, 28)
    assert len(y_train) == 30 and len(y_test) == 10

    np.savez(tmp_path / "wrong.npz", x_train=x_train, y_train=y_train)
    with pytest.raises(DigitlabError, match="x_test"):
        read_keras_npz(tmp_path / "wrong.npz")


def test_cifar10_and_cifar100_pickled_batches(tmp_path: Path) -> None:
    (tmp_path / "c10.tar.gz").write_bytes(cifar_tarball_bytes("cifar10", per_batch=4, n_test=6))
    cifar = read_cifar_archive(tmp_path / "c10.tar.gz")
    assert cifar.x_train.shape == (20, 32, 32, 3) and cifar.x_test.shape == (6, 32, 32, 3)
    assert cifar.class_names == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    # Channel-first rows of 3072 bytes become HWC: pixel (0, 0) red is byte 0, green byte 1024.
    flat = labelled_images(4, (3072,), 10, seed=1)[0]
    assert cifar.x_train[0, 0, 0, 0] == flat[0, 0] and cifar.x_train[0, 0, 0, 1] == flat[0, 1024]

    (tmp_path / "c100.tar.gz").write_bytes(cifar_tarball_bytes("cifar100", per_batch=4, n_test=6))
    fine = read_cifar_archive(tmp_path / "c100.tar.gz", "fine")
    coarse = read_cifar_archive(tmp_path / "c100.tar.gz", "coarse")
    assert len(fine.class_names) == 100 and len(coarse.class_names) == 20
    np.testing.assert_array_equal(coarse.y_train, fine.y_train // 5)
    with pytest.raises(ConfigError, match="label_mode"):
        read_cifar_archive(tmp_path / "c100.tar.gz", "medium")

    (tmp_path / "broken.tar.gz").write_bytes(b"\x1f\x8b not really")
    with pytest.raises(DigitlabError, match="broken.tar.gz"):
        read_cifar_archive(tmp_path / "broken.tar.gz")


def _save(image: Image.Image, path: Path, **kwargs: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """Three classes of mixed sizes, modes and formats, plus a non-image and a truncated JPEG."""
    root = tmp_path / "images"
    _save(Image.new("RGB", (50, 60), (255, 0, 0)), root / "cat" / "red.jpg", quality=95)
    _save(Image.new("RGBA", (40, 30), (0, 0, 0, 0)), root / "cat" / "transparent.png")
    _save(Image.new("L", (28, 28), 200), root / "dog" / "gray.png")
    palette = Image.new("P", (10, 10), 1)
    palette.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    _save(palette, root / "dog" / "palette.png")
    _save(Image.new("RGB", (300, 20), (0, 255, 0)), root / "emu" / "wide.jpeg")
    (root / "emu" / "notes.txt").write_text("not an image")
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(buffer, format="JPEG")
    (root / "emu" / "truncated.jpg").write_bytes(buffer.getvalue()[:200])
    (root / "emu" / ".DS_Store").write_bytes(b"\0\0")
    return root


def test_folder_reader_mixed_sizes_modes_and_formats(image_folder: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        x, y, names = read_image_folder(image_folder, (28, 28, 1))
    assert names == ["cat", "dog", "emu"]
    assert x.shape == (5, 28, 28, 1) and x.dtype == np.uint8
    assert y.tolist() == [0, 0, 1, 1, 2]
    red, transparent, gray, blue, green = (int(img.mean()) for img in x)
    assert abs(red - 76) <= 2 and transparent == 255 and gray == 200  # L = 0.299 R; transparency on white
    assert abs(blue - 29) <= 2 and abs(green - 150) <= 2
    warned = caplog.text
    assert "notes.txt" in warned and "truncated.jpg" in warned and ".DS_Store" not in warned

    rgb, _, _ = read_image_folder(image_folder, (16, 12, 3))
    assert rgb.shape == (5, 16, 12, 3)
    assert rgb[0, 8, 6].tolist()[0] > 240 and rgb[0, 8, 6].tolist()[1] < 15  # still red


def test_folder_errors_missing_empty_one_class_unreadable_class(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="dataset.path"):
        scan_image_folder(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DigitlabError, match="is empty"):
        scan_image_folder(tmp_path / "empty")
    _save(Image.new("L", (8, 8)), tmp_path / "one" / "only" / "a.png")
    with pytest.raises(DigitlabError, match="one class"):
        scan_image_folder(tmp_path / "one")
    _save(Image.new("L", (8, 8)), tmp_path / "bad" / "good" / "a.png")
    (tmp_path / "bad" / "broken").mkdir()
    (tmp_path / "bad" / "broken" / "a.png").write_bytes(b"PNG? no")
    with pytest.raises(DigitlabError, match="no readable image"):
        scan_image_folder(tmp_path / "bad")


def test_folder_dataset_through_both_stages(tmp_path: Path) -> None:
    """download records the folder (no copy) in data/raw/<name>; preprocess reads the images in place, resizes and splits them."""
    root = tmp_path / "photos"
    for label, colour in (("circles", 40), ("squares", 220)):
        for i in range(10):
            _save(Image.new("L", (20 + i, 30), colour + i), root / label / f"{i}.png")
    (root / "squares" / "readme.md").write_text("skip me")
    config = parse_dataset({"name": "shapes", "source": "folder", "path": "photos", "image_shape": [12, 12, 1], "validation_size": 0.2, "test_size": 4, "split_seed": 0})
    before = {path: path.read_bytes() for path in root.rglob("*")if path.is_file()}
    record = download_dataset(config, tmp_path / "data" / "raw" / "shapes", tmp_path / "cache", root=tmp_path)
    assert record["files"] == [] and [p.name for p in (tmp_path / "data" / "raw" / "shapes").iterdir()] == ["source.json"]
    assert record["folder"] == {
        "path": str(root.resolve()), "class_names": ["circles", "squares"], "images": 20, "per_class": {"circles": 10, "squares": 10},
        "skipped": [{"file": "squares/readme.md", "why": "is not an image Pillow can read: expected a PNG or JPEG file (any image Pillow reads)"}],
    }  # fmt: skip
    meta = prepare_dataset(config, tmp_path / "data" / "raw" / "shapes", tmp_path / "data" / "prepared")
    assert {path: path.read_bytes() for path in root.rglob("*") if path.is_file()} == before
    assert meta.class_names == ["circles", "squares"] and meta.image_shape == (12, 12, 1)
    assert meta.counts == {"train": {"circles": 6, "squares": 6}, "val": {"circles": 2, "squares": 2}, "test": {"circles": 2, "squares": 2}}
    x, y = load_split(tmp_path / "data" / "prepared", "train")
    assert x.shape == (12, 12, 12, 1)
    assert (x[y == 0].mean() < 100) and (x[y == 1].mean() > 200)
    assert (tmp_path / "data" / "prepared" / "samples.png").stat().st_size > 1000


def test_one_decoder_for_training_images_and_predictions(image_folder: Path, tmp_path: Path) -> None:
    """decode_image is what the folder source trains on; open_image names the file it cannot read."""
    x, _, _ = read_image_folder(image_folder, (20, 24, 3))
    files = [image_folder / "cat" / "red.jpg", image_folder / "cat" / "transparent.png", image_folder / "dog" / "gray.png",
             image_folder / "dog" / "palette.png", image_folder / "emu" / "wide.jpeg"]  # fmt: skip
    for path, image in zip(files, x):
        np.testing.assert_array_equal(decode_image(path, (20, 24, 3)), image)
    same_size = decode_image(image_folder / "dog" / "gray.png", (28, 28, 1))
    assert same_size.shape == (28, 28, 1) and (same_size == 200).all()  # no resize when the size matches

    for path, message in (
        (image_folder / "emu" / "notes.txt", "is not an image Pillow can read"),
        (image_folder / "emu" / "truncated.jpg", "is damaged"),
        (tmp_path / "nowhere.png", "does not exist"),
        (image_folder, "is a directory"),
    ):
        with pytest.raises(DigitlabError, match=message) as error:
            open_image(path)
        assert str(path) in str(error.value)
