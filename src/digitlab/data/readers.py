"""Readers of the upstream formats: IDX, Keras ``mnist.npz``, CIFAR python tarballs, image folders.

Each reader takes the file(s) exactly as upstream publishes them and returns
numpy arrays; turning them into the prepared format is ``preprocess``'s job.
"""

from __future__ import annotations

import gzip
import logging
import pickle
import tarfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from digitlab.errors import ConfigError, DigitlabError

log = logging.getLogger(__name__)

_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


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


KERAS_NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


def read_keras_npz(path: Path | str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Keras' ``mnist.npz``: ``(x_train, y_train, x_test, y_test)``."""
    try:
        with np.load(path, allow_pickle=False) as arrays:
            missing = [key for key in KERAS_NPZ_KEYS if key not in arrays.files]
            if missing:
                raise DigitlabError(f"{path} lacks the arrays {missing}: expected {list(KERAS_NPZ_KEYS)} as in Keras' mnist.npz")
            return tuple(arrays[key] for key in KERAS_NPZ_KEYS)  # type: ignore[return-value]
    except (OSError, ValueError) as exc:
        raise DigitlabError(f"cannot read {path} as a .npz archive: {exc}") from exc


@dataclass
class CifarData:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: list[str]


def _unpickle(archive: tarfile.TarFile, member: tarfile.TarInfo) -> dict[str, object]:
    handle = archive.extractfile(member)
    if handle is None:
        raise DigitlabError(f"{member.name} in the CIFAR archive is not a file")
    # The batches are Python 2 pickles; the archive's sha256 was verified on download.
    raw = pickle.load(handle, encoding="bytes")
    return {key.decode() if isinstance(key, bytes) else key: value for key, value in raw.items()}


def _cifar_images(batch: dict[str, object]) -> np.ndarray:
    data = np.asarray(batch["data"], dtype=np.uint8)
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


def read_cifar_archive(path: Path | str, label_mode: str = "fine") -> CifarData:
    """A CIFAR-10 or CIFAR-100 python tarball, read in place (nothing extracted to disk).

    CIFAR-10 holds ``data_batch_1..5``, ``test_batch`` and ``batches.meta``;
    CIFAR-100 holds ``train``, ``test`` and ``meta`` with ``fine_labels`` and
    ``coarse_labels`` (``label_mode`` picks one).
    """
    path = Path(path)
    try:
        with tarfile.open(path, "r:*") as archive:
            members = {Path(m.name).name: m for m in archive.getmembers() if m.isfile()}
            if "batches.meta" in members:
                train_names = sorted(n for n in members if n.startswith("data_batch_"))
                if not train_names or "test_batch" not in members:
                    raise DigitlabError(f"{path} lacks data_batch_* or test_batch: not a CIFAR-10 python archive")
                label_key, names_key, meta_name = "labels", "label_names", "batches.meta"
                train_batches = [_unpickle(archive, members[n]) for n in train_names]
                test_batch = _unpickle(archive, members["test_batch"])
            elif "meta" in members and "train" in members and "test" in members:
                if label_mode not in ("fine", "coarse"):
                    raise ConfigError("dataset.label_mode", label_mode, "one of coarse, fine")
                label_key, names_key, meta_name = f"{label_mode}_labels", f"{label_mode}_label_names", "meta"
                train_batches = [_unpickle(archive, members["train"])]
                test_batch = _unpickle(archive, members["test"])
            else:
                raise DigitlabError(f"{path} is not a CIFAR python archive (no batches.meta, or meta/train/test, inside)")
            meta = _unpickle(archive, members[meta_name])
    except (tarfile.TarError, OSError, EOFError, pickle.UnpicklingError) as exc:
        raise DigitlabError(f"cannot read CIFAR archive {path}: {exc}") from exc
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta[names_key]]  # type: ignore[union-attr]
    return CifarData(
        x_train=np.concatenate([_cifar_images(b) for b in train_batches]),
        y_train=np.concatenate([np.asarray(b[label_key], dtype=np.int64) for b in train_batches]),
        x_test=_cifar_images(test_batch),
        y_test=np.asarray(test_batch[label_key], dtype=np.int64),
        class_names=names,
    )


@dataclass
class ImageFolder:
    """The usable images of a folder with one subfolder per class."""

    root: Path
    class_names: list[str]
    files: list[tuple[Path, int]]  # (image, class index), in sorted order
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # (file, why)


def _is_readable_image(path: Path) -> str | None:
    """None if Pillow can decode the whole image, else why not."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as image:
                image.load()
    except UnidentifiedImageError:
        return "not an image Pillow can read"
    except (OSError, ValueError, SyntaxError) as exc:
        return f"damaged image ({exc})"
    return None


def scan_image_folder(root: Path | str) -> ImageFolder:
    """Find the class subfolders and their readable images.

    Policy: a file that is not a readable image (a README, a truncated JPEG)
    is skipped with a warning naming it, so one bad file in thousands doesn't
    stop a run; hidden files (``.DS_Store``) are ignored. It is an error when
    the folder is missing or empty, has fewer than two classes, or a class has
    no readable image.
    """
    root = Path(root)
    if not root.is_dir():
        raise ConfigError("dataset.path", str(root), "an existing folder with one subfolder of images per class", "The folder does not exist.")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    skipped = [(p, "not in a class subfolder") for p in sorted(root.iterdir()) if p.is_file() and not p.name.startswith(".")]
    if not class_dirs:
        raise DigitlabError(f"image folder {root} is empty: put each class's images in a subfolder named after the class (e.g. {root}/cat/1.png)")
    if len(class_dirs) < 2:
        raise DigitlabError(f"image folder {root} has one class ({class_dirs[0].name}): a classifier needs at least two class subfolders")
    files: list[tuple[Path, int]] = []
    for index, class_dir in enumerate(class_dirs):
        found = 0
        for path in sorted(class_dir.rglob("*")):
            if not path.is_file() or any(part.startswith(".") for part in path.relative_to(root).parts):
                continue
            problem = _is_readable_image(path)
            if problem:
                skipped.append((path, problem))
                continue
            files.append((path, index))
            found += 1
        if not found:
            raise DigitlabError(f"class folder {class_dir} holds no readable image (PNG, JPEG, ...): add images or remove the folder")
    for path, why in skipped:
        log.warning("skipping %s: %s", path, why)
    return ImageFolder(root, [d.name for d in class_dirs], files, skipped)


def load_image(path: Path | str, image_shape: tuple[int, int, int]) -> np.ndarray:
    """One image as uint8 (H, W, C), resized to ``image_shape`` (aspect ratio not kept).

    Transparent pixels are put on a white background before the conversion to
    grayscale (channels 1) or RGB (channels 3).
    """
    from PIL import Image

    height, width, channels = image_shape
    with Image.open(path) as image:
        image.load()
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            rgba = image.convert("RGBA")
            image = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            image.alpha_composite(rgba)
        image = image.convert("L" if channels == 1 else "RGB")
        if image.size != (width, height):
            image = image.resize((width, height), Image.Resampling.LANCZOS)
        array = np.asarray(image, dtype=np.uint8)
    return array[..., None] if channels == 1 else array


def read_image_folder(root: Path | str, image_shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """All readable images of a class-per-subfolder folder: ``(x, y, class_names)``."""
    folder = scan_image_folder(root)
    x = np.stack([load_image(path, image_shape) for path, _ in folder.files])
    y = np.array([label for _, label in folder.files], dtype=np.int64)
    return x, y, folder.class_names
