"""The one image decoder: any image Pillow reads, as uint8 pixels of a given shape.

Used by the folder source (the user's training images) and by ``digitlab
predict`` (the images to classify), so both see an image the same way:
transparent pixels on white, then grayscale (channels 1) or RGB (channels 3),
then resized with Lanczos to the height and width (aspect ratio not kept).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from digitlab.errors import DigitlabError

if TYPE_CHECKING:
    from PIL import Image

_EXPECTED = "expected a PNG or JPEG file (any image Pillow reads)"


def open_image(path: Path | str) -> Image.Image:
    """Open and fully decode an image, failing with a :class:`DigitlabError` that names the file."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.exists():
        raise DigitlabError(f"image {path} does not exist: {_EXPECTED}")
    if path.is_dir():
        raise DigitlabError(f"image {path} is a directory: {_EXPECTED} (pass the files, e.g. {path}/*.png)")
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except UnidentifiedImageError as exc:
        raise DigitlabError(f"image {path} is not an image Pillow can read: {_EXPECTED}") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise DigitlabError(f"image {path} is damaged ({exc}): {_EXPECTED}") from exc


def convert_image(image: Image.Image, image_shape: tuple[int, int, int]) -> np.ndarray:
    """A decoded image as uint8 (H, W, C) of ``image_shape``: transparency on white, L or RGB, Lanczos resize."""
    from PIL import Image

    height, width, channels = image_shape
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        image = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image.alpha_composite(rgba)
    image = image.convert("L" if channels == 1 else "RGB")
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.LANCZOS)
    array = np.asarray(image, dtype=np.uint8)
    return array[..., None] if channels == 1 else array


def decode_image(path: Path | str, image_shape: tuple[int, int, int]) -> np.ndarray:
    """The image at ``path`` as uint8 (H, W, C) of ``image_shape`` (see :func:`convert_image`)."""
    return convert_image(open_image(path), image_shape)
