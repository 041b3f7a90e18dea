"""Splits and subsets: stratified, deterministic, disjoint (the dataset settings' checks: test_sources.py)."""

from __future__ import annotations

import numpy as np
import pytest

from digitlab.data.prepared import SPLITS
from digitlab.data.split import SplitSizes, split_dataset, stratified_subset
from digitlab.errors import ConfigError, DigitlabError


def tagged(n: int, classes: int, imbalance: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Images whose first two pixels encode their index, so every image is identifiable."""
    x = np.zeros((n, 4, 4, 1), dtype=np.uint8)
    x[:, 0, 0, 0], x[:, 0, 1, 0] = np.arange(n) // 256, np.arange(n) % 256
    y = (np.arange(n) % classes) if not imbalance else np.where(np.arange(n) < n * 0.7, 0, np.arange(n) % classes)
    return x, y.astype(np.int64)


def ids(x: np.ndarray) -> set[int]:
    return set((x[:, 0, 0, 0].astype(int) * 256 + x[:, 0, 1, 0]).tolist())


def test_split_is_disjoint_complete_and_stratified() -> None:
    x, y = tagged(1000, 4, imbalance=True)
    splits = split_dataset(x, y, SplitSizes(100, 0.2, seed=0))
    sets = {name: ids(splits[name][0]) for name in SPLITS}
    assert [len(sets[s]) for s in SPLITS] == [700, 100, 200]
    assert not (sets["train"] & sets["val"]) and not (sets["train"] & sets["test"]) and not (sets["val"] & sets["test"])
    assert sets["train"] | sets["val"] | sets["test"] == set(range(1000))
    overall = np.bincount(y) / len(y)
    for name in SPLITS:
        share = np.bincount(splits[name][1], minlength=4) / len(splits[name][1])
        np.testing.assert_allclose(share, overall, atol=0.02)
        # Labels travel with their images.
        index = splits[name][0][:, 0, 0, 0].astype(int) * 256 + splits[name][0][:, 0, 1, 0]
        np.testing.assert_array_equal(splits[name][1], y[index])


def test_split_is_deterministic_by_seed() -> None:
    x, y = tagged(300, 3)
    a = split_dataset(x, y, SplitSizes(30, 60, seed=7))
    b = split_dataset(x, y, SplitSizes(30, 60, seed=7))
    c = split_dataset(x, y, SplitSizes(30, 60, seed=8))
    for name in SPLITS:
        np.testing.assert_array_equal(a[name][0], b[name][0])
    assert ids(a["test"][0]) != ids(c["test"][0])


def test_official_test_split_is_kept_and_validation_comes_from_train() -> None:
    x, y = tagged(600, 10)
    x_test, y_test = x[500:], y[500:]
    splits = split_dataset(x[:500], y[:500], SplitSizes(50, None), official_test=(x_test, y_test))
    assert splits["test"][0] is x_test
    assert ids(splits["val"][0]) | ids(splits["train"][0]) == set(range(500))
    assert np.bincount(splits["val"][1]).tolist() == [5] * 10
    # A test size instead pools the official test images and holds out a stratified sample.
    pooled = split_dataset(x[:500], y[:500], SplitSizes(50, 100), official_test=(x_test, y_test))
    assert len(pooled["test"][1]) == 100 and ids(pooled["train"][0]) | ids(pooled["val"][0]) | ids(pooled["test"][0]) == set(range(600))


def test_split_errors() -> None:
    x, y = tagged(20, 2)
    with pytest.raises(ConfigError, match="validation_size"):
        split_dataset(x, y, SplitSizes(10, 10))  # nothing left to train on
    with pytest.raises(DigitlabError, match="stratified"):
        split_dataset(x, y, SplitSizes(1, 5))  # fewer validation images than classes
    with pytest.raises(DigitlabError, match="official test split"):
        split_dataset(x, y, SplitSizes(5, None))


def test_subset_is_stratified_deterministic_and_sorted() -> None:
    _, y = tagged(1000, 4, imbalance=True)
    keep = stratified_subset(y, 200, seed=0)
    assert len(keep) == 200 and len(set(keep.tolist())) == 200 and (np.diff(keep) > 0).all()
    np.testing.assert_allclose(np.bincount(y[keep]) / 200, np.bincount(y) / 1000, atol=0.01)
    np.testing.assert_array_equal(keep, stratified_subset(y, 200, seed=0))
    assert set(keep.tolist()) != set(stratified_subset(y, 200, seed=1).tolist())
    np.testing.assert_array_equal(stratified_subset(y, 1000, seed=0), np.arange(1000))  # all of them: unchanged
    with pytest.raises(ConfigError, match="dataset.subset=1001"):
        stratified_subset(y, 1001, seed=0)
    with pytest.raises(DigitlabError, match="stratified subset"):
        stratified_subset(y, 3, seed=0)  # fewer images than classes
