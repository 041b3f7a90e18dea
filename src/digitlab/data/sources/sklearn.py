"""``sklearn``: scikit-learn's bundled 1,797 8x8 digits (offline; pixel values 0-16, scaled to 0-255 when read)."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import numpy as np

from digitlab.data.raw import DIGIT_NAMES, RawImages, labels, load_arrays, nhwc, save_arrays

from .base import SOURCES, DatasetBase


@SOURCES.register("sklearn")
class SklearnDigitsDataset(DatasetBase):
    """``sklearn.datasets.load_digits()``: 8x8 grayscale digits, no official test split."""

    source: Literal["sklearn"]

    native_shape = (8, 8, 1)
    official_test_split = False
    counts = (1797, 0)
    offline = True

    def fetch(self, raw_dir: Path, *, cache: Path, root: Path) -> list[dict[str, Any]]:
        from sklearn.datasets import load_digits

        digits = load_digits()
        # Stored as published (pixel values 0-16); read() scales them to 0-255.
        origin = f"sklearn.datasets.load_digits (scikit-learn {metadata.version('scikit-learn')})"
        return [save_arrays(raw_dir / f"{self.name}.npz", digits.images.astype(np.uint8), digits.target.astype(np.int64), origin)]

    def read(self, raw_dir: Path) -> RawImages:
        x, y = load_arrays(raw_dir / f"{self.name}.npz")
        x = np.round(x.astype(np.float64) * (255.0 / 16.0)).astype(np.uint8)
        return RawImages(nhwc(x), labels(y), DIGIT_NAMES)
