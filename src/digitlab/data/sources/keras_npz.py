"""``keras_npz``: Keras' ``mnist.npz`` (60,000 train + 10,000 test 28x28 digits), downloaded and verified."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np

from digitlab.data.raw import DIGIT_NAMES, RawImages, labels, nhwc
from digitlab.errors import DigitlabError

from .base import SOURCES, SingleFileDataset

KERAS_NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


def read_keras_npz(path: Path | str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Keras' ``mnist.npz``: ``(x_train, y_train, x_test, y_test)``."""
    try:
        with np.load(path, allow_pickle=False) as arrays:
            missing = [key for key in KERAS_NPZ_KEYS if key not in arrays.files]
            if missing:
                raise DigitlabError(f"{path} lacks the arrays {missing}: expected {list(KERAS_NPZ_KEYS)} as in Keras' mnist.npz")
            return tuple(arrays[key] for key in KERAS_NPZ_KEYS)  # type: ignore[return-value]
    except (OSError, ValueError) as exc:
        raise DigitlabError(f"cannot read {path} as a .npz archive: {exc}") from exc


@SOURCES.register("keras_npz")
class KerasNpzDataset(SingleFileDataset):
    """One ``.npz`` with ``x_train``, ``y_train``, ``x_test``, ``y_test`` (uint8 28x28 digits), from ``url``."""

    source: Literal["keras_npz"]

    native_shape = (28, 28, 1)
    official_test_split = True
    counts = (60000, 10000)

    def read(self, raw_dir: Path) -> RawImages:
        x_train, y_train, x_test, y_test = read_keras_npz(raw_dir / self.filename)
        return RawImages(nhwc(x_train), labels(y_train), DIGIT_NAMES, (nhwc(x_test), labels(y_test)))
