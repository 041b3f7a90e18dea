"""``cifar``: the CIFAR-10 and CIFAR-100 python tarballs (50,000 train + 10,000 test 32x32 colour images)."""

from __future__ import annotations

import codecs
import pickle
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from digitlab.data.files import sha256_file
from digitlab.data.raw import RawImages
from digitlab.errors import ConfigError, DigitlabError

from .base import SOURCES, SingleFileDataset


@dataclass
class CifarData:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: list[str]


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as a Python 3 pickle (protocol < 3) rebuilds ``bytes``: latin-1 only."""
    if encoding not in ("latin1", "latin-1"):
        raise DigitlabError(f"a CIFAR pickle asks for the codec {encoding!r}: refused (only latin1 rebuilds bytes)")
    return codecs.encode(text, "latin1")


# Everything a CIFAR batch is made of: numpy arrays (their reconstruction, type and dtype),
# plain containers and, in pickles written by Python 3 at protocol 2, bytes. Nothing else loads.
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    *((module, name) for module in ("builtins", "__builtin__") for name in ("dict", "list", "tuple", "bytes", "bytearray", "str", "int", "float", "bool")),
}


class CifarUnpickler(pickle.Unpickler):
    """An unpickler that builds only what CIFAR batches hold; any other class or function is refused before it runs."""

    def find_class(self, module: str, name: str) -> object:
        if (module, name) == ("_codecs", "encode"):
            return _latin1_encode
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise DigitlabError(f"a CIFAR pickle asks for {module}.{name}, which no CIFAR batch holds: refused, nothing of it was run")


def _unpickle(archive: tarfile.TarFile, member: tarfile.TarInfo) -> dict[str, object]:
    handle = archive.extractfile(member)
    if handle is None:
        raise DigitlabError(f"{member.name} in the CIFAR archive is not a file")
    # The batches are Python 2 pickles (keys and text as bytes); only what they hold is built.
    try:
        raw = CifarUnpickler(handle, encoding="bytes").load()
    except DigitlabError as exc:
        raise DigitlabError(f"CIFAR archive {archive.name}, {member.name}: {exc}") from None
    if not isinstance(raw, dict):
        raise DigitlabError(f"{member.name} in the CIFAR archive holds a {type(raw).__name__}, not a batch (a dict)")
    return {key.decode() if isinstance(key, bytes) else key: value for key, value in raw.items()}


def verify_archive(path: Path, sha256: str) -> None:
    """``path`` still has the configured sha256 (checked before anything in it is unpickled)."""
    actual = sha256_file(path)
    if actual != sha256:
        raise DigitlabError(
            f"{path} has sha256 {actual}, not the configured {sha256} (dataset.sha256): it changed since the download "
            "stage verified it; nothing of it was unpickled. Rerun it (dvc repro -f download)"
        )


def _cifar_images(batch: dict[str, object]) -> np.ndarray:
    data = np.asarray(batch["data"], dtype=np.uint8)
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


def _batches(archive: tarfile.TarFile, path: Path, label_mode: str) -> tuple[list[dict], dict, dict, str, str]:
    """(train batches, test batch, meta, label key, label-names key) of a CIFAR-10 or CIFAR-100 archive."""
    members = {Path(m.name).name: m for m in archive.getmembers() if m.isfile()}
    if "batches.meta" in members:
        train_names = sorted(n for n in members if n.startswith("data_batch_"))
        if not train_names or "test_batch" not in members:
            raise DigitlabError(f"{path} lacks data_batch_* or test_batch: not a CIFAR-10 python archive")
        if label_mode != "fine":
            raise ConfigError("dataset.label_mode", label_mode, "fine (CIFAR-10 has one set of labels; coarse is CIFAR-100's)")
        train = [_unpickle(archive, members[n]) for n in train_names]
        return train, _unpickle(archive, members["test_batch"]), _unpickle(archive, members["batches.meta"]), "labels", "label_names"
    if "meta" in members and "train" in members and "test" in members:
        if label_mode not in ("fine", "coarse"):
            raise ConfigError("dataset.label_mode", label_mode, "one of coarse, fine")
        train = [_unpickle(archive, members["train"])]
        meta = _unpickle(archive, members["meta"])
        return train, _unpickle(archive, members["test"]), meta, f"{label_mode}_labels", f"{label_mode}_label_names"
    raise DigitlabError(f"{path} is not a CIFAR python archive (no batches.meta, or meta/train/test, inside)")


def read_cifar_archive(path: Path | str, label_mode: str = "fine", sha256: str | None = None) -> CifarData:
    """A CIFAR-10 or CIFAR-100 python tarball, read in place (nothing extracted to disk).

    CIFAR-10 holds ``data_batch_1..5``, ``test_batch`` and ``batches.meta``;
    CIFAR-100 holds ``train``, ``test`` and ``meta`` with ``fine_labels`` and
    ``coarse_labels`` (``label_mode`` picks one). With ``sha256`` the file is
    verified first; the pickles are loaded by :class:`CifarUnpickler`, which
    builds nothing but arrays and plain containers.
    """
    path = Path(path)
    if sha256 is not None:
        verify_archive(path, sha256)
    try:
        with tarfile.open(path, "r:*") as archive:
            train_batches, test_batch, meta, label_key, names_key = _batches(archive, path, label_mode)
    except (tarfile.TarError, OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        raise DigitlabError(f"cannot read CIFAR archive {path}: {exc}") from exc
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta[names_key]]  # type: ignore[union-attr]
    return CifarData(
        x_train=np.concatenate([_cifar_images(b) for b in train_batches]),
        y_train=np.concatenate([np.asarray(b[label_key], dtype=np.int64) for b in train_batches]),
        x_test=_cifar_images(test_batch),
        y_test=np.asarray(test_batch[label_key], dtype=np.int64),
        class_names=names,
    )


@SOURCES.register("cifar")
class CifarDataset(SingleFileDataset):
    """A CIFAR python tarball from ``url``; for CIFAR-100 ``label_mode`` picks the 100 fine or 20 coarse classes."""

    source: Literal["cifar"]
    label_mode: Literal["fine", "coarse"] = "fine"  # CIFAR-100's label set; CIFAR-10 has only "fine"

    native_shape = (32, 32, 3)
    official_test_split = True
    counts = (50000, 10000)

    def read(self, raw_dir: Path) -> RawImages:
        cifar = read_cifar_archive(raw_dir / self.filename, self.label_mode, self.sha256)
        return RawImages(cifar.x_train, cifar.y_train, cifar.class_names, (cifar.x_test, cifar.y_test))
