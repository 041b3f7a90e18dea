"""The raw dataset on disk, the contract between the download stage and preprocess.

Each dataset has its own raw directory, ``data/raw/<dataset name>``
(:func:`raw_dir_of`), so that a project's own files under ``data/raw/`` never
collide with a stage output. It holds the dataset's files as its source
publishes them (or, for a source that is a Python package, its arrays in
``<name>.npz``; for an image folder, read in place, nothing), and
``source.json``::

    {"dataset": NAME, "source": SOURCE,
     "files": [{"name": PATH IN THE RAW DIRECTORY, "sha256": HASH, "bytes": SIZE, "origin": URL, PATH OR PACKAGE}, ...],
     ...}  # and what else the source records (:class:`Fetched`), e.g. an image folder's manifest under "folder"

The download stage writes it (:func:`write_source`); preprocess checks it
(:func:`read_source`) and hands the directory to the source's reader, which
returns :class:`RawImages`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from digitlab.data.files import file_record
from digitlab.errors import DigitlabError
from digitlab.io import atomic_path, atomic_write_json, read_json

SOURCE_FILE = "source.json"
DIGIT_NAMES = [str(digit) for digit in range(10)]
_RERUN = "run the download stage first (dvc repro download)"


def raw_dir_of(data: Path, dataset: str) -> Path:
    """The download stage's output for ``dataset``: ``<paths.data>/raw/<dataset name>``."""
    return Path(data) / "raw" / dataset


@dataclass
class Fetched:
    """What a source's ``fetch`` put into the raw directory: file records, and more for ``source.json``."""

    files: list[dict[str, Any]]
    about: dict[str, Any] = field(default_factory=dict)  # extra keys of source.json (the folder source's manifest)


@dataclass
class RawImages:
    """A dataset as a source reads it: uint8 NHWC images, int64 labels, and an official test split if it has one."""

    x: np.ndarray
    y: np.ndarray
    class_names: list[str]
    official_test: tuple[np.ndarray, np.ndarray] | None = None

    def check(self, shape: tuple[int, int, int], name: str) -> None:
        """Shapes, lengths and label ranges as the settings promise, else a :class:`DigitlabError`."""
        parts = [("train", self.x, self.y)] + ([("test", *self.official_test)] if self.official_test else [])
        for part, x, y in parts:
            if x.shape[1:] != shape:
                raise DigitlabError(f"{name}: raw {part} images have shape {x.shape[1:]}, expected {shape}")
            if len(x) != len(y):
                raise DigitlabError(f"{name}: {len(x)} raw {part} images but {len(y)} labels")
            if len(y) and (y.min() < 0 or y.max() >= len(self.class_names)):
                raise DigitlabError(f"{name}: raw {part} labels run {y.min()}..{y.max()}, expected 0..{len(self.class_names) - 1}")


def nhwc(x: np.ndarray) -> np.ndarray:
    """uint8 images as (N, H, W, C): a channel axis is added to (N, H, W)."""
    x = np.asarray(x)
    if x.dtype != np.uint8:
        raise DigitlabError(f"expected uint8 pixels, got {x.dtype}")
    return x[..., None] if x.ndim == 3 else x


def labels(y: np.ndarray) -> np.ndarray:
    return np.asarray(y).astype(np.int64).reshape(-1)


def save_arrays(path: Path, x: np.ndarray, y: np.ndarray, origin: str) -> dict[str, Any]:
    """Images and labels as ``path`` (npz with ``x`` and ``y``); return its file record."""
    with atomic_path(path) as tmp:
        np.savez_compressed(tmp, x=x, y=y)
    return file_record(path, origin)


def load_arrays(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` of a file :func:`save_arrays` wrote."""
    with np.load(path) as arrays:
        return arrays["x"], arrays["y"]


def write_source(directory: Path, dataset: str, source: str, files: list[dict[str, Any]], about: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write ``source.json`` into ``directory`` (``about``: the source's extra keys); return the record."""
    record = {"dataset": dataset, "source": source, "files": files, **(about or {})}
    atomic_write_json(directory / SOURCE_FILE, record)
    return record


def read_source(raw_dir: Path, dataset: str, source: str) -> dict[str, Any]:
    """``source.json`` of ``raw_dir``, checked to be for ``dataset`` of ``source`` and to match the files there."""
    path = raw_dir / SOURCE_FILE
    if not path.is_file():
        raise DigitlabError(f"{path} is missing: {_RERUN}")
    record = read_json(path)
    if (record.get("dataset"), record.get("source")) != (dataset, source):
        held = f"dataset {record.get('dataset')!r} of source {record.get('source')!r}"
        raise DigitlabError(f"{raw_dir} holds {held}, not {dataset!r} of source {source!r}: {_RERUN}")
    for entry in record["files"]:
        file = raw_dir / entry["name"]
        if not file.is_file() or file.stat().st_size != entry["bytes"]:
            raise DigitlabError(f"{file} is missing or changed since the download stage wrote it: rerun it (dvc repro -f download)")
    return record
