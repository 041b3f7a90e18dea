"""The prepared dataset on disk, the contract between preprocess and everything after it.

A prepared directory (``data/prepared``) holds:

- ``train.npz``, ``val.npz``, ``test.npz``: ``x`` uint8 of shape (N, H, W, C)
  (pixels 0-255; normalisation is the model input pipeline's job) and ``y``
  int64 class indices of shape (N,);
- ``meta.json``: ``dataset``, ``class_names``, ``image_shape`` [H, W, C],
  ``num_classes``, ``counts`` {split: {class_name: n}}, ``checksums``
  {file: sha256};
- ``samples.png``: a 3x3 grid of training images with their labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from digitlab.errors import DigitlabError
from digitlab.io import atomic_path, atomic_write_json, read_json

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Meta:
    dataset: str
    class_names: list[str]
    image_shape: tuple[int, int, int]
    counts: dict[str, dict[str, int]]
    checksums: dict[str, str]
    # What the dataset's settings tell every training of it (dataset.flip_keeps_label, dataset.min_train_steps):
    # carried with the data, which the train stage depends on, so a change reruns preprocess and train.
    flip_keeps_label: bool = False
    min_train_steps: int = 0

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to_json(self) -> dict:
        return {
            "dataset": self.dataset,
            "class_names": list(self.class_names),
            "image_shape": list(self.image_shape),
            "num_classes": self.num_classes,
            "counts": self.counts,
            "checksums": self.checksums,
            "flip_keeps_label": self.flip_keeps_label,
            "min_train_steps": self.min_train_steps,
        }


def load_meta(directory: Path | str) -> Meta:
    path = Path(directory) / "meta.json"
    if not path.is_file():
        raise DigitlabError(f"{path} is missing: run the preprocess stage first (dvc repro preprocess)")
    raw = read_json(path)
    return Meta(
        dataset=raw["dataset"],
        class_names=[str(name) for name in raw["class_names"]],
        image_shape=tuple(int(d) for d in raw["image_shape"]),
        counts=raw.get("counts", {}),
        checksums=raw.get("checksums", {}),
        flip_keeps_label=bool(raw.get("flip_keeps_label", False)),
        min_train_steps=int(raw.get("min_train_steps", 0)),
    )


def load_split(directory: Path | str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(x, y)`` of one split: uint8 images (N, H, W, C) and int64 labels (N,)."""
    if split not in SPLITS:
        raise DigitlabError(f"split {split!r} does not exist: expected one of {', '.join(SPLITS)}")
    path = Path(directory) / f"{split}.npz"
    if not path.is_file():
        raise DigitlabError(f"{path} is missing: run the preprocess stage first (dvc repro preprocess)")
    with np.load(path) as arrays:
        return arrays["x"], arrays["y"].astype(np.int64)


def save_split(directory: Path | str, split: str, x: np.ndarray, y: np.ndarray) -> Path:
    """Write one split atomically (temporary file, then rename)."""
    if x.dtype != np.uint8 or x.ndim != 4:
        raise ValueError(f"x must be uint8 of shape (N, H, W, C), got {x.dtype} {x.shape}")
    path = Path(directory) / f"{split}.npz"
    with atomic_path(path) as tmp:
        np.savez_compressed(tmp, x=x, y=np.asarray(y, dtype=np.int64))
    return path


def save_meta(directory: Path | str, meta: Meta) -> Path:
    return atomic_write_json(Path(directory) / "meta.json", meta.to_json())
