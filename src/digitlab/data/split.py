"""Train / validation / test splits: stratified, deterministic by seed, disjoint by construction."""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import train_test_split

from digitlab.data.datasets import check_split_sizes
from digitlab.errors import DigitlabError

Split = tuple[np.ndarray, np.ndarray]


def _stratified(indices: np.ndarray, labels: np.ndarray, size: int, seed: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        return train_test_split(indices, test_size=size, stratify=labels, random_state=seed)
    except ValueError as exc:
        raise DigitlabError(
            f"cannot draw a stratified {what} split of {size} images from {len(indices)}: {exc} "
            "(each class needs at least 2 images, and the split at least one image per class)"
        ) from exc


def split_dataset(
    x: np.ndarray,
    y: np.ndarray,
    *,
    validation_size: int | float,
    test_size: int | float | None,
    seed: int,
    official_test: Split | None = None,
    name: str = "dataset",
) -> dict[str, Split]:
    """Split into ``train``, ``val`` and ``test``.

    ``test_size=None`` takes ``official_test`` as the test split and draws the
    validation split from ``(x, y)``. Otherwise the official test images (if
    any) join the pool and both hold-outs are drawn from it, stratified by
    class. Sizes are image counts or fractions of all images. Every image
    lands in exactly one split, because the splits partition one index array.
    """
    if test_size is None:
        if official_test is None:
            raise DigitlabError(f"dataset.test_size=None needs an official test split, and {name} has none: set a size")
        pool_x, pool_y = x, y
        total = len(y)
    else:
        if official_test is not None:
            pool_x, pool_y = np.concatenate([x, official_test[0]]), np.concatenate([y, official_test[1]])
        else:
            pool_x, pool_y = x, y
        total = len(pool_y)
    settings = {"name": name, "validation_size": validation_size, "test_size": test_size}
    n_val, n_test = check_split_sizes(settings, len(pool_y), total)

    indices = np.arange(len(pool_y))
    if test_size is not None:
        indices, test_indices = _stratified(indices, pool_y, n_test, seed, "test")
        test = (pool_x[test_indices], pool_y[test_indices])
    else:
        test = official_test  # type: ignore[assignment]
    train_indices, val_indices = _stratified(indices, pool_y[indices], n_val, seed, "validation")
    return {
        "train": (pool_x[train_indices], pool_y[train_indices]),
        "val": (pool_x[val_indices], pool_y[val_indices]),
        "test": test,
    }
