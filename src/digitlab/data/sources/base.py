"""What every dataset source shares: the settings of a dataset, their checks, and the registry of sources.

A source is one class (its settings, a pydantic model) in one module of this
package, registered under the name ``dataset.source`` takes::

    @SOURCES.register("mysource")
    class MySourceDataset(DatasetBase):            # or DownloadedDataset, SingleFileDataset
        source: Literal["mysource"]
        native_shape = (28, 28, 1)                 # the facts checked before any I/O
        official_test_split = False
        counts = (5000, 0)
        offline = True

        def fetch(self, raw_dir, *, cache, root): ...   # download stage: raw files into raw_dir
        def read(self, raw_dir): ...                    # preprocess: raw_dir -> RawImages

This module registers nothing itself (the registry imports every module of
the package, this one included).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Annotated, Any, ClassVar
from urllib.parse import urlsplit

from pydantic import AfterValidator, PlainValidator, field_validator

from digitlab.data.fetch import fetch_verified, url_filename
from digitlab.data.files import file_record, link_or_copy
from digitlab.data.raw import Fetched, RawImages
from digitlab.data.split import SplitSizes, check_split_sizes
from digitlab.errors import ConfigError
from digitlab.registry import Registry
from digitlab.schema import Name, NonNegativeInt, PositiveFloat, PositiveInt, Seed, Strict

log = logging.getLogger(__name__)

# The dataset sources by name (the value of `dataset.source`), each a DatasetBase subclass.
SOURCES: Registry[type[DatasetBase]] = Registry("dataset source", "digitlab.data.sources")

SPLIT_SIZE = "a whole number of images >= 1 or a fraction between 0 and 1 (exclusive)"
URL_SCHEMES = ("http", "https", "ftp")


def _split_size(value: Any) -> int | float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(SPLIT_SIZE)
    if (isinstance(value, int) and value < 1) or (isinstance(value, float) and not 0.0 < value < 1.0):
        raise ValueError(SPLIT_SIZE)
    return value


def _url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in URL_SCHEMES or not parts.netloc:
        raise ValueError("an http://, https:// or ftp:// URL (the upstream file or a mirror of it)")
    return value


def _sha256(value: str) -> str:
    if not re.fullmatch(r"[0-9a-f]{64}", value):
        raise ValueError("a sha256 hash: 64 lowercase hexadecimal characters")
    return value


SplitSize = Annotated[int | float, PlainValidator(_split_size)]
Url = Annotated[str, AfterValidator(_url)]
Sha256 = Annotated[str, AfterValidator(_sha256)]


def _error(setting: str, value: Any, allowed: str, hint: str = "") -> ConfigError:
    return ConfigError(f"dataset.{setting}", value, allowed, hint)


class DatasetBase(Strict):
    """The settings every dataset has (``conf/dataset/*.yaml``), and the checks on them that need no I/O."""

    name: Name
    source: str  # each source narrows it to its Literal, the tag of DatasetSettings
    image_shape: list[PositiveInt]
    validation_size: SplitSize
    test_size: SplitSize | None = None
    split_seed: Seed = 0
    subset: PositiveInt | None = None
    # Whether a mirrored image keeps its label: augmentation flips only then (never digits).
    flip_keeps_label: bool = False
    # Train every recipe for at least this many optimizer steps, and stop early no sooner: a small
    # collection's epochs are few steps (dataset=folder: 500). Both reach the train stage through
    # the prepared data's meta.json.
    min_train_steps: NonNegativeInt = 0

    # What is known about the source before reading it.
    native_shape: ClassVar[tuple[int, int, int] | None] = None  # None: images are resized to image_shape
    official_test_split: ClassVar[bool] = False
    counts: ClassVar[tuple[int, int] | None] = None  # (train, test) images; None where the user's data decides
    offline: ClassVar[bool] = False  # works without the internet

    @field_validator("image_shape")
    @classmethod
    def _height_width_channels(cls, value: list[int]) -> list[int]:
        if len(value) != 3 or value[2] not in (1, 3):
            raise ValueError("[height, width, channels] with channels 1 or 3")
        return value

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.image_shape[0], self.image_shape[1], self.image_shape[2])

    @property
    def split_sizes(self) -> SplitSizes:
        return SplitSizes(self.validation_size, self.test_size, self.split_seed)

    def check(self) -> None:
        """The rules across settings (no I/O); a :class:`ConfigError` names the setting, the value and what is allowed."""
        if self.native_shape is not None and self.shape != self.native_shape:
            allowed = f"{list(self.native_shape)}, the shape of source {self.source!r} (its images are not resized)"
            raise _error("image_shape", self.image_shape, allowed)
        if self.test_size is None and not self.official_test_split:
            having = ", ".join(name for name, cls in SOURCES.items() if cls.official_test_split)
            hint = f"null (the official test split) needs a source that has one ({having}); source {self.source!r} has none"
            raise _error("test_size", None, SPLIT_SIZE, hint)
        if isinstance(self.validation_size, float) and isinstance(self.test_size, float) and self.validation_size + self.test_size >= 1.0:
            raise _error("validation_size", self.validation_size, f"a fraction that with dataset.test_size={self.test_size} sums to less than 1")
        self._check_counts()

    def _check_counts(self) -> None:
        if self.counts is None:  # the user's images: counted when read
            return
        train, test = self.counts
        pool = train if self.test_size is None else train + test
        if self.subset is not None:
            if self.subset > pool:
                kept = f" (test_size null keeps the {test} official test images out of the sample)" if self.test_size is None else ""
                raise _error("subset", self.subset, f"at most the {pool} images of source {self.source!r}{kept}")
            pool = self.subset
        check_split_sizes(self.split_sizes, pool, pool, self.name)

    def offline_note(self) -> str | None:
        """Whether this dataset works without the internet: ``""`` always, a condition, or None (it downloads)."""
        return "" if self.offline else None

    def check_outside_outputs(self, data: str, models: str, reports: str, root: Path | None = None) -> None:
        """The rule between the dataset and the stage outputs (``paths``): a source that reads the user's files
        in place refuses files inside an output, which a stage replaces whole. Nothing to check by default."""

    def fetch(self, raw_dir: Path, *, cache: Path, root: Path) -> list[dict[str, Any]] | Fetched:
        """Put the raw files into ``raw_dir`` (a fresh directory); return their records for ``source.json``.

        ``cache`` is the download cache, ``root`` the project root (relative paths are relative to it).
        A :class:`~digitlab.data.raw.Fetched` adds more keys to ``source.json``.
        """
        raise NotImplementedError

    def read(self, raw_dir: Path) -> RawImages:
        """Read what :meth:`fetch` put into ``raw_dir``, in the source's own format."""
        raise NotImplementedError


class DownloadedDataset(DatasetBase):
    """A dataset whose files are downloaded over HTTP(S) or FTP, verified against a sha256, and cached."""

    url: Url
    download_retries: NonNegativeInt = 3  # extra tries after a failed or corrupt transfer
    download_timeout_s: PositiveFloat = 60.0  # per connection attempt / stalled read

    def download(self, url: str, sha256: str, raw_dir: Path, cache: Path) -> dict[str, Any]:
        """Fetch ``url`` through the cache, place it in ``raw_dir``; return its file record."""
        path = fetch_verified(url, sha256, dataset=self.name, cache=cache, retries=self.download_retries, timeout_s=self.download_timeout_s)
        placed = link_or_copy(path, raw_dir / path.name)
        log.info("placed %s in data/raw (%s of the cached file)", path.name, placed)
        return file_record(raw_dir / path.name, url, sha256)


class SingleFileDataset(DownloadedDataset):
    """A downloaded dataset that is one file: ``url`` with its ``sha256``."""

    sha256: Sha256

    @property
    def filename(self) -> str:
        """The file's name in the cache and in ``data/raw``."""
        return url_filename(self.url)

    def fetch(self, raw_dir: Path, *, cache: Path, root: Path) -> list[dict[str, Any]]:
        return [self.download(self.url, self.sha256, raw_dir, cache)]
