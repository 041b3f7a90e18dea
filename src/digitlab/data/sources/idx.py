"""``idx``: the four IDX files of MNIST-style sets (Fashion-MNIST), from a local copy or downloaded.

The files are read from ``local_dir`` (e.g. the Debian package
dataset-fashion-mnist) when all four are there and intact, else downloaded
from ``url``, a folder serving the four file names.
"""

from __future__ import annotations

import gzip
import logging
import shutil
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field

from digitlab.data.files import file_record, resolve_path, sha256_file
from digitlab.data.raw import RawImages, labels, nhwc
from digitlab.errors import DigitlabError
from digitlab.schema import Strict

from .base import SOURCES, DownloadedDataset, Sha256

log = logging.getLogger(__name__)

_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
IDX_FILES = ("train_images", "train_labels", "test_images", "test_labels")
FileName = Annotated[str, Field(pattern=r"^[^/\\]+$", max_length=255)]
ClassName = Annotated[str, Field(min_length=1)]


def read_idx(path: Path | str) -> np.ndarray:
    """An IDX file (the MNIST / Fashion-MNIST format), gzipped or not, as an array."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            data = handle.read()
    except (OSError, EOFError) as exc:
        raise DigitlabError(f"cannot read IDX file {path}: {exc}") from exc
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES:
        raise DigitlabError(f"{path} is not an IDX file (bad magic number {data[:4].hex()})")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_TYPES[data[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - header != expected:
        raise DigitlabError(f"{path}: IDX header says shape {shape} ({expected} bytes) but {len(data) - header} bytes follow")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)


class IdxFile(Strict):
    """One of the four files: its name (under ``url`` and ``local_dir``) and hashes."""

    name: FileName
    sha256: Sha256  # the upstream file
    # The local copy's, where it differs: the Debian package recompresses the
    # upstream .gz files (same images, other gzip header).
    local_sha256: Sha256 | None = None


class IdxFiles(Strict):
    train_images: IdxFile
    train_labels: IdxFile
    test_images: IdxFile
    test_labels: IdxFile

    def entries(self) -> list[IdxFile]:
        return [getattr(self, key) for key in IDX_FILES]


@SOURCES.register("idx")
class IdxDataset(DownloadedDataset):
    """Train and test images and labels as four IDX files (28x28 grayscale), with the class names in label order."""

    source: Literal["idx"]
    local_dir: str | None = None  # read from here when complete and intact; null: always download
    files: IdxFiles
    class_names: Annotated[list[ClassName], Field(min_length=2)]

    native_shape = (28, 28, 1)
    official_test_split = True
    counts = (60000, 10000)

    def offline_note(self) -> str | None:
        return f"when {self.local_dir} holds its files" if self.local_dir else None

    def fetch(self, raw_dir: Path, *, cache: Path, root: Path) -> list[dict[str, Any]]:
        if self.local_dir and resolve_path(self.local_dir, root).is_dir():
            records = self._copy_local(resolve_path(self.local_dir, root), raw_dir)
            if records is not None:
                return records
        base = self.url if self.url.endswith("/") else self.url + "/"
        return [self.download(base + entry.name, entry.sha256, raw_dir, cache) for entry in self.files.entries()]

    def _copy_local(self, local: Path, raw_dir: Path) -> list[dict[str, Any]] | None:
        """The four files copied from ``local``, or None (nothing left in ``raw_dir``) if one is missing or differs."""
        records = []
        for entry in self.files.entries():
            path = local / entry.name
            expected = entry.local_sha256 or entry.sha256
            actual = sha256_file(path) if path.is_file() else None
            if actual != expected:
                found = "missing" if actual is None else f"not the expected file (sha256 {actual}, expected {expected})"
                log.warning("%s is %s; downloading %s instead", path, found, self.name)
                for record in records:
                    (raw_dir / record["name"]).unlink()
                return None
            shutil.copy2(path, raw_dir / path.name)  # not a link: those are the package's files
            records.append(file_record(raw_dir / path.name, str(path), actual))
        log.info("read %s from %s (no download)", self.name, local)
        return records

    def read(self, raw_dir: Path) -> RawImages:
        x_train, y_train, x_test, y_test = (read_idx(raw_dir / entry.name) for entry in self.files.entries())
        return RawImages(nhwc(x_train), labels(y_train), list(self.class_names), (nhwc(x_test), labels(y_test)))
