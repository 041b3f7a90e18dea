"""The preprocess stage: ``data/raw/<dataset>`` -> ``data/prepared`` (see :mod:`digitlab.data.prepared`).

Reads only the raw directory the download stage wrote (through the dataset's
source; an image folder is read in place, from the path its manifest records), brings every source to uint8 (N, H, W, C) with int64 labels, takes
the stratified ``subset`` if one is set, splits, and writes the splits,
``meta.json`` and ``samples.png`` into a fresh directory that replaces
``data/prepared`` whole.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from digitlab.data.files import sha256_file
from digitlab.data.prepared import SPLITS, Meta, save_meta, save_split
from digitlab.data.raw import RawImages, read_source
from digitlab.data.sources import DatasetBase
from digitlab.data.split import Split, split_dataset, stratified_subset
from digitlab.io import atomic_path, replace_directory

log = logging.getLogger(__name__)

SAMPLES_FILE = "samples.png"


def take_subset(raw: RawImages, dataset: DatasetBase) -> RawImages:
    """The stratified ``dataset.subset`` of the images the splits are drawn from (all of ``raw`` without one).

    With ``test_size`` set, the official test images (if any) join the pool
    first, as :func:`~digitlab.data.split.split_dataset` would pool them; with
    ``test_size: null`` the sample is of the training images and the official
    test split stays whole.
    """
    if dataset.subset is None:
        return raw
    if dataset.test_size is not None and raw.official_test is not None:
        raw = RawImages(np.concatenate([raw.x, raw.official_test[0]]), np.concatenate([raw.y, raw.official_test[1]]), raw.class_names)
    keep = stratified_subset(raw.y, dataset.subset, dataset.split_seed)
    log.info("took a stratified subset of %d of %d images (split_seed %d)", len(keep), len(raw.y), dataset.split_seed)
    return RawImages(raw.x[keep], raw.y[keep], raw.class_names, raw.official_test)


def save_samples_grid(path: Path, x: np.ndarray, y: np.ndarray, class_names: list[str]) -> Path:
    """A 3x3 grid of the first nine images with their labels, as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from digitlab.evaluation import fonts
    from digitlab.evaluation.plots import short_text

    fonts.cover(*class_names)  # before the axes' titles exist
    figure, axes = plt.subplots(3, 3, figsize=(6, 6.4))
    for index, axis in enumerate(axes.flat):
        axis.axis("off")
        if index < len(x):
            image = x[index]
            axis.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray" if image.shape[-1] == 1 else None, vmin=0, vmax=255)
            axis.set_title(short_text(class_names[int(y[index])]), fontsize=10)
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=100, format="png")
    plt.close(figure)
    return path


def _write_prepared(directory: Path, dataset: DatasetBase, class_names: list[str], splits: dict[str, Split]) -> Meta:
    counts, checksums = {}, {}
    for split in SPLITS:
        x, y = splits[split]
        path = save_split(directory, split, x, y)
        checksums[path.name] = sha256_file(path)
        counts[split] = {name: int((y == index).sum()) for index, name in enumerate(class_names)}
        log.info("wrote %s: %d images", path.name, len(y))
    meta = Meta(dataset.name, list(class_names), dataset.shape, counts, checksums, dataset.flip_keeps_label, dataset.min_train_steps)
    save_meta(directory, meta)
    save_samples_grid(directory / SAMPLES_FILE, *splits["train"], class_names)
    return meta


def prepare_dataset(dataset: DatasetBase, raw_dir: Path, prepared_dir: Path) -> Meta:
    """Turn ``raw_dir`` into the prepared format in ``prepared_dir``; return its metadata.

    ``dataset`` is validated settings (its ``check()`` passed), the ones the
    download stage that wrote ``raw_dir`` ran with.
    """
    read_source(raw_dir, dataset.name, dataset.source)
    raw = dataset.read(raw_dir)
    raw.check(dataset.shape, dataset.name)
    official = f" + {len(raw.official_test[1])} official test images" if raw.official_test else ""
    log.info("read %s from %s: %d images%s, %d classes", dataset.name, raw_dir, len(raw.y), official, len(raw.class_names))
    raw = take_subset(raw, dataset)
    splits = split_dataset(raw.x, raw.y, dataset.split_sizes, official_test=raw.official_test, name=dataset.name)
    meta = replace_directory(prepared_dir, lambda directory: _write_prepared(directory, dataset, raw.class_names, splits))
    sizes = "/".join(str(sum(meta.counts[s].values())) for s in SPLITS)
    log.info("wrote %s: train/val/test = %s images of shape %s, meta.json, %s", prepared_dir, sizes, list(dataset.shape), SAMPLES_FILE)
    return meta
