"""Subsets and train / validation / test splits: stratified, deterministic by seed, disjoint by construction."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from digitlab.errors import ConfigError, DigitlabError

Split = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class SplitSizes:
    """How to split: sizes are image counts (int) or fractions of all images (float); ``test=None`` keeps an official test split."""

    validation: int | float
    test: int | float | None
    seed: int = 0


def split_count(value: int | float, total: int) -> int:
    """A split size from the settings as a number of images out of ``total``."""
    return value if isinstance(value, int) else int(round(value * total))


def check_split_sizes(sizes: SplitSizes, train_pool: int, total: int, name: str = "the dataset") -> tuple[int, int]:
    """(validation, test) image counts, or a :class:`ConfigError` if no training image would be left.

    ``train_pool`` is the number of images the validation (and a non-official
    test) split are taken from; ``total`` what fractions are fractions of.
    """
    n_test = 0 if sizes.test is None else split_count(sizes.test, total)
    n_val = split_count(sizes.validation, total)
    if sizes.test is not None and n_test < 1:
        raise ConfigError("dataset.test_size", sizes.test, f"a size that leaves at least 1 test image out of {total}")
    if n_val < 1:
        raise ConfigError("dataset.validation_size", sizes.validation, f"a size that leaves at least 1 validation image out of {total}")
    if n_val + n_test >= train_pool:
        raise ConfigError(
            "dataset.validation_size",
            sizes.validation,
            f"a size that leaves images to train on: validation ({n_val}) + test ({n_test}) images must be fewer "
            f"than the {train_pool} images of {name} they are taken from",
        )
    return n_val, n_test


def _stratified(indices: np.ndarray, labels: np.ndarray, size: int, seed: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        # Imported here: scikit-learn takes seconds to import, and validating settings imports this module.
        from sklearn.model_selection import train_test_split

        return train_test_split(indices, test_size=size, stratify=labels, random_state=seed)
    except ValueError as exc:
        raise DigitlabError(
            f"cannot draw a stratified {what} of {size} images from {len(indices)}: {exc} "
            "(each class needs at least 2 images, and the sample at least one image per class)"
        ) from exc


def stratified_subset(y: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Indices (ascending) of a stratified sample of ``size`` of the labels ``y``, deterministic by ``seed``."""
    if size > len(y):
        raise ConfigError("dataset.subset", size, f"at most the {len(y)} images there are to sample from")
    indices = np.arange(len(y))
    if size == len(y):
        return indices
    _, kept = _stratified(indices, y, size, seed, "subset")
    return np.sort(kept)


def split_dataset(x: np.ndarray, y: np.ndarray, sizes: SplitSizes, *, official_test: Split | None = None, name: str = "dataset") -> dict[str, Split]:
    """Split into ``train``, ``val`` and ``test``.

    ``sizes.test=None`` takes ``official_test`` as the test split and draws the
    validation split from ``(x, y)``. Otherwise the official test images (if
    any) join the pool and both hold-outs are drawn from it, stratified by
    class. Every image lands in exactly one split, because the splits
    partition one index array.
    """
    if sizes.test is None:
        if official_test is None:
            raise DigitlabError(f"dataset.test_size=None needs an official test split, and {name} has none: set a size")
        pool_x, pool_y = x, y
    elif official_test is not None:
        pool_x, pool_y = np.concatenate([x, official_test[0]]), np.concatenate([y, official_test[1]])
    else:
        pool_x, pool_y = x, y
    n_val, n_test = check_split_sizes(sizes, len(pool_y), len(pool_y), name)

    indices = np.arange(len(pool_y))
    if sizes.test is not None:
        indices, test_indices = _stratified(indices, pool_y, n_test, sizes.seed, "test split")
        test = (pool_x[test_indices], pool_y[test_indices])
    else:
        test = official_test  # type: ignore[assignment]
    train_indices, val_indices = _stratified(indices, pool_y[indices], n_val, sizes.seed, "validation split")
    return {
        "train": (pool_x[train_indices], pool_y[train_indices]),
        "val": (pool_x[val_indices], pool_y[val_indices]),
        "test": test,
    }
