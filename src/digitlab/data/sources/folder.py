"""``folder``: the user's own images, one subfolder per class (its name is the class name), read in place.

The user's files are never moved, changed, copied or deleted: the download
stage writes only ``source.json`` (a manifest: the folder's resolved path, its
class names, how many images each holds and which files were skipped) and
preprocess decodes the images straight from ``dataset.path``. DVC watches the
folder itself (``paths.dataset_source``, a dependency of both data stages).

Policy: a file that is not a readable image (a README, a truncated JPEG, a
decompression bomb, an image over ``dataset.max_image_pixels``) is skipped
with one warning line naming it and why, so one bad file in thousands doesn't
stop a run; hidden files (``.DS_Store``) are ignored. It is an error when the
folder is missing or empty, has fewer than two classes, or a class has no
readable image. Every image is decoded by :mod:`digitlab.data.images` (as
``digitlab predict`` decodes the images it classifies), in parallel threads
(Pillow releases the GIL while it decodes and resizes); the order of the
images is the sorted order of their paths whatever the threads do.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field

from digitlab.data.files import resolve_path
from digitlab.data.images import bombs_are_errors, decode_image, open_image
from digitlab.data.raw import SOURCE_FILE, Fetched, RawImages, raw_dir_of
from digitlab.errors import ConfigError, DigitlabError
from digitlab.io import read_json
from digitlab.schema import PositiveInt

from .base import SOURCES, DatasetBase

log = logging.getLogger(__name__)

DEFAULT_MAX_IMAGE_PIXELS = 50_000_000
MANIFEST_KEY = "folder"  # the manifest's key in source.json
_RERUN = "rerun the download stage (dvc repro download)"


@dataclass
class ImageFolder:
    """The images of a folder with one subfolder per class."""

    root: Path
    class_names: list[str]
    files: list[tuple[Path, int]]  # (image, class index), in sorted order
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # (file, why)


def decode_workers() -> int:
    """How many threads decode: one per CPU core this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _decode_or_why(path: Path, shape: tuple[int, int, int] | None, max_pixels: int) -> np.ndarray | str | None:
    """The pixels (None when ``shape`` is None: only checked), or why the file is skipped."""
    try:
        if shape is None:
            open_image(path, max_pixels)
            return None
        return decode_image(path, shape, max_pixels)
    except DigitlabError as exc:
        return str(exc).removeprefix(f"image {path} ")
    except Exception as exc:  # noqa: BLE001 - a hostile file is skipped with its reason, never a traceback
        return f"cannot be decoded ({type(exc).__name__}: {exc})"


def decode_files(paths: Sequence[Path], shape: tuple[int, int, int] | None, max_pixels: int, workers: int | None = None) -> list:
    """:func:`_decode_or_why` of each path, in parallel threads, in the order of ``paths``."""
    with bombs_are_errors(max_pixels), ThreadPoolExecutor(max_workers=workers or decode_workers()) as pool:
        return list(pool.map(partial(_decode_or_why, shape=shape, max_pixels=max_pixels), paths))


def list_image_folder(root: Path | str) -> ImageFolder:
    """The class subfolders and every file in them that may be an image (not yet decoded)."""
    root = Path(root)
    if not root.is_dir():
        raise ConfigError("dataset.path", str(root), "an existing folder with one subfolder of images per class", "The folder does not exist.")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    skipped = [(p, "not in a class subfolder") for p in sorted(root.iterdir()) if p.is_file() and not p.name.startswith(".")]
    if not class_dirs:
        raise DigitlabError(f"image folder {root} is empty: put each class's images in a subfolder named after the class (e.g. {root}/cat/1.png)")
    if len(class_dirs) < 2:
        raise DigitlabError(f"image folder {root} has one class ({class_dirs[0].name}): a classifier needs at least two class subfolders")
    files = [
        (path, index)
        for index, class_dir in enumerate(class_dirs)
        for path in sorted(class_dir.rglob("*"))
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(root).parts)
    ]
    return ImageFolder(root, [d.name for d in class_dirs], files, skipped)


def _keep_readable(folder: ImageFolder, results: list) -> tuple[ImageFolder, list[int]]:
    """The folder without the files whose result is a reason (each warned about), and the kept positions."""
    kept = [i for i, result in enumerate(results) if not isinstance(result, str)]
    skipped = folder.skipped + [(path, results[i]) for i, (path, _) in enumerate(folder.files) if isinstance(results[i], str)]
    for path, why in skipped:
        log.warning("skipping %s: %s", path, why)
    readable = ImageFolder(folder.root, folder.class_names, [folder.files[i] for i in kept], skipped)
    found = {label for _, label in readable.files}
    for index, name in enumerate(folder.class_names):
        if index not in found:
            raise DigitlabError(f"class folder {folder.root / name} holds no readable image (PNG, JPEG, ...): add images or remove the folder")
    return readable, kept


def scan_image_folder(root: Path | str, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS, workers: int | None = None) -> ImageFolder:
    """The class subfolders and their readable images (each decoded once to check it; see the module's policy)."""
    folder = list_image_folder(root)
    return _keep_readable(folder, decode_files([path for path, _ in folder.files], None, max_pixels, workers))[0]


def read_image_folder(
    root: Path | str, image_shape: tuple[int, int, int], max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS, workers: int | None = None
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """All readable images of a class-per-subfolder folder, decoded to ``image_shape``: ``(x, y, class_names)``."""
    folder = list_image_folder(root)
    results = decode_files([path for path, _ in folder.files], image_shape, max_pixels, workers)
    readable, kept = _keep_readable(folder, results)
    x = np.stack([results[i] for i in kept])
    y = np.array([label for _, label in readable.files], dtype=np.int64)
    return x, y, readable.class_names


def folder_manifest(folder: ImageFolder) -> dict[str, Any]:
    """What ``source.json`` records about a scanned folder (no copy of the images is kept)."""
    per_class = {name: 0 for name in folder.class_names}
    for _, label in folder.files:
        per_class[folder.class_names[label]] += 1
    skipped = [{"file": str(path.relative_to(folder.root)), "why": why} for path, why in folder.skipped]
    return {"path": str(folder.root), "class_names": folder.class_names, "images": len(folder.files), "per_class": per_class, "skipped": skipped}


def _overlap(folder: Path, output: Path) -> bool:
    return folder == output or output in folder.parents or folder in output.parents


@SOURCES.register("folder")
class FolderDataset(DatasetBase):
    """Images of any size and mode in ``path``, resized to ``image_shape``; the split is a stratified hold-out."""

    source: Literal["folder"]
    path: Annotated[str, Field(min_length=1)]  # absolute, or relative to the project root
    max_image_pixels: PositiveInt = DEFAULT_MAX_IMAGE_PIXELS  # larger images are skipped (decompression bombs)

    native_shape = None
    official_test_split = False
    counts = None
    offline = True

    def check_outside_outputs(self, data: str, models: str, reports: str, root: Path | None = None) -> None:
        """``path`` may neither lie in nor hold a stage output (a stage replaces its output whole)."""
        from digitlab.config import project_root

        root = (root or project_root()).resolve()
        folder = resolve_path(self.path, root).resolve()
        outputs = {
            f"{data}/raw/{self.name} (the download stage's output)": raw_dir_of(root / data, self.name),
            f"{data}/prepared": root / data / "prepared",
            models: root / models,
            reports: root / reports,
        }
        for label, output in outputs.items():
            if _overlap(folder, output.resolve()):
                allowed = "a folder that neither lies in nor holds a stage output"
                raise ConfigError("dataset.path", self.path, allowed, f"{folder} overlaps {label}; keep your images elsewhere, e.g. data/images")

    def fetch(self, raw_dir: Path, *, cache: Path, root: Path) -> Fetched:
        """Check the folder's images and record them in ``source.json``; nothing is copied (preprocess reads them in place)."""
        folder = scan_image_folder(resolve_path(self.path, root).resolve(), self.max_image_pixels)
        log.info("found %d images in %d classes under %s (%d files skipped)", len(folder.files), len(folder.class_names), folder.root, len(folder.skipped))
        return Fetched([], {MANIFEST_KEY: folder_manifest(folder)})

    def read(self, raw_dir: Path) -> RawImages:
        manifest = read_json(raw_dir / SOURCE_FILE).get(MANIFEST_KEY)
        if not isinstance(manifest, dict) or "path" not in manifest:
            raise DigitlabError(f"{raw_dir / SOURCE_FILE} does not describe an image folder: {_RERUN}")
        x, y, names = read_image_folder(Path(manifest["path"]), self.shape, self.max_image_pixels)
        if names != manifest["class_names"] or len(y) != manifest["images"]:
            then = f"{manifest['images']} images in {len(manifest['class_names'])} classes"
            raise DigitlabError(f"image folder {manifest['path']} changed since the download stage listed it ({then}, now {len(y)} in {len(names)}): {_RERUN}")
        return RawImages(x, y, names)
