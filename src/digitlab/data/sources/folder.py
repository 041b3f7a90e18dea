"""``folder``: the user's own images, one subfolder per class (its name is the class name).

Policy: a file that is not a readable image (a README, a truncated JPEG) is
skipped with a warning naming it, so one bad file in thousands doesn't stop a
run; hidden files (``.DS_Store``) are ignored. It is an error when the folder
is missing or empty, has fewer than two classes, or a class has no readable
image. Every image is decoded by :mod:`digitlab.data.images` (as ``digitlab
predict`` decodes the images it classifies).
"""

from __future__ import annotations

import logging
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field

from digitlab.data.files import file_record, resolve_path
from digitlab.data.images import decode_image, open_image
from digitlab.data.raw import RawImages
from digitlab.errors import ConfigError, DigitlabError

from .base import SOURCES, DatasetBase

log = logging.getLogger(__name__)

IMAGES_DIR = "images"  # where data/raw keeps the copies


@dataclass
class ImageFolder:
    """The usable images of a folder with one subfolder per class."""

    root: Path
    class_names: list[str]
    files: list[tuple[Path, int]]  # (image, class index), in sorted order
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # (file, why)


def _problem(path: Path) -> str | None:
    """None if the whole image decodes, else why not."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            open_image(path)
    except DigitlabError as exc:
        from PIL import UnidentifiedImageError

        cause = exc.__cause__
        return "not an image Pillow can read" if isinstance(cause, UnidentifiedImageError) else f"damaged image ({cause or exc})"
    return None


def _class_images(root: Path, class_dir: Path, skipped: list[tuple[Path, str]]) -> list[Path]:
    images = []
    for path in sorted(class_dir.rglob("*")):
        if not path.is_file() or any(part.startswith(".") for part in path.relative_to(root).parts):
            continue
        problem = _problem(path)
        if problem:
            skipped.append((path, problem))
        else:
            images.append(path)
    if not images:
        raise DigitlabError(f"class folder {class_dir} holds no readable image (PNG, JPEG, ...): add images or remove the folder")
    return images


def scan_image_folder(root: Path | str) -> ImageFolder:
    """Find the class subfolders and their readable images (see the module's policy)."""
    root = Path(root)
    if not root.is_dir():
        raise ConfigError("dataset.path", str(root), "an existing folder with one subfolder of images per class", "The folder does not exist.")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    skipped = [(p, "not in a class subfolder") for p in sorted(root.iterdir()) if p.is_file() and not p.name.startswith(".")]
    if not class_dirs:
        raise DigitlabError(f"image folder {root} is empty: put each class's images in a subfolder named after the class (e.g. {root}/cat/1.png)")
    if len(class_dirs) < 2:
        raise DigitlabError(f"image folder {root} has one class ({class_dirs[0].name}): a classifier needs at least two class subfolders")
    files = [(path, index) for index, class_dir in enumerate(class_dirs) for path in _class_images(root, class_dir, skipped)]
    for path, why in skipped:
        log.warning("skipping %s: %s", path, why)
    return ImageFolder(root, [d.name for d in class_dirs], files, skipped)


def read_image_folder(root: Path | str, image_shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """All readable images of a class-per-subfolder folder, decoded to ``image_shape``: ``(x, y, class_names)``."""
    folder = scan_image_folder(root)
    x = np.stack([decode_image(path, image_shape) for path, _ in folder.files])
    y = np.array([label for _, label in folder.files], dtype=np.int64)
    return x, y, folder.class_names


@SOURCES.register("folder")
class FolderDataset(DatasetBase):
    """Images of any size and mode in ``path``, resized to ``image_shape``; the split is a stratified hold-out."""

    source: Literal["folder"]
    path: Annotated[str, Field(min_length=1)]  # absolute, or relative to the project root

    native_shape = None
    official_test_split = False
    counts = None
    offline = True

    def fetch(self, raw_dir: Path, *, cache: Path, root: Path) -> list[dict[str, Any]]:
        """Copy the readable images into ``raw_dir/images`` (copies, not links: DVC's cache must not share the user's files)."""
        folder = scan_image_folder(resolve_path(self.path, root))
        records = []
        for path, _ in folder.files:
            relative = path.relative_to(folder.root)
            dest = raw_dir / IMAGES_DIR / relative
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dest)
            records.append({**file_record(dest, str(path)), "name": str(Path(IMAGES_DIR) / relative)})
        log.info("found %d images in %d classes under %s (%d files skipped)", len(folder.files), len(folder.class_names), folder.root, len(folder.skipped))
        return records

    def read(self, raw_dir: Path) -> RawImages:
        x, y, names = read_image_folder(raw_dir / IMAGES_DIR, self.shape)
        return RawImages(x, y, names)
