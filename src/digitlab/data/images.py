"""The one image decoder: any image Pillow reads, as uint8 pixels of a given shape.

Used by the folder source (the user's training images) and by ``digitlab
predict`` (the images to classify), so both see an image the same way: the
first frame of an animation, turned upright by its EXIF orientation, 16-bit
and float pixels scaled (not clipped) to 8 bits, transparent pixels on white,
then grayscale (channels 1) or RGB (channels 3), then resized with Lanczos to
the height and width (aspect ratio not kept).

Hostile files fail with a :class:`DigitlabError` naming the file and why: not
an image, truncated or damaged, a decompression bomb (Pillow's
``DecompressionBombError``; its ``DecompressionBombWarning`` too inside
:func:`bombs_are_errors`), or more pixels than ``max_pixels``.
"""

from __future__ import annotations

import contextlib
import struct
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from digitlab.errors import DigitlabError

if TYPE_CHECKING:
    from PIL import Image

_EXPECTED = "expected a PNG or JPEG file (any image Pillow reads)"
# What Pillow raises on a damaged file (struct.error and friends come from broken headers or EXIF blocks).
_DAMAGED = (OSError, SyntaxError, ValueError, TypeError, KeyError, IndexError, EOFError, struct.error)


@contextlib.contextmanager
def bombs_are_errors(max_pixels: int) -> Iterator[None]:
    """While open: Pillow's decompression-bomb limit is ``max_pixels`` and its warning is an error.

    Warning filters and Pillow's limit are process-wide: enter this once, in the
    thread that starts any decoding threads, not in each of them.
    """
    from PIL import Image

    previous = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow's chatter about odd but readable files
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        Image.MAX_IMAGE_PIXELS = max_pixels
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = previous


def _first_frame_upright(image: Image.Image, max_pixels: int | None) -> Image.Image:
    from PIL import ImageOps

    width, height = image.size
    if max_pixels is not None and width * height > max_pixels:
        raise DigitlabError(f"{width}x{height} = {width * height} pixels, over the limit of {max_pixels} (dataset.max_image_pixels)")
    image.seek(0)  # an animated GIF/PNG/WebP: its first frame
    image.load()
    return ImageOps.exif_transpose(image) or image


def open_image(path: Path | str, max_pixels: int | None = None) -> Image.Image:
    """Open and fully decode an image (first frame, EXIF-upright), failing with a :class:`DigitlabError` that names the file."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.exists():
        raise DigitlabError(f"image {path} does not exist: {_EXPECTED}")
    if path.is_dir():
        raise DigitlabError(f"image {path} is a directory: {_EXPECTED} (pass the files, e.g. {path}/*.png)")
    try:
        with Image.open(path) as image:
            return _first_frame_upright(image, max_pixels).copy()
    except UnidentifiedImageError as exc:
        raise DigitlabError(f"image {path} is not an image Pillow can read: {_EXPECTED}") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DigitlabError(f"image {path} has too many pixels, a possible decompression bomb ({exc})") from exc
    except DigitlabError as exc:
        raise DigitlabError(f"image {path} is too large: {exc}") from exc
    except _DAMAGED as exc:
        raise DigitlabError(f"image {path} is damaged ({type(exc).__name__}: {exc}): {_EXPECTED}") from exc


def _eight_bit(image: Image.Image) -> Image.Image:
    """16-bit and 32-bit integer or float grayscale as 8-bit ``L``, scaled from its range (not clipped)."""
    from PIL import Image

    if image.mode.startswith("I;16"):
        pixels = np.asarray(image).astype(np.float64) / 257.0  # 0..65535 -> 0..255
    elif image.mode == "I":  # 32-bit integers: 16-bit PNG/TIFF data in older Pillows
        pixels = np.asarray(image).astype(np.float64)
        pixels = np.clip(pixels, 0, 65535) / 257.0 if pixels.max(initial=0) > 255 else np.clip(pixels, 0, 255)
    else:  # "F": floats in 0..1, else taken as 0..255
        pixels = np.nan_to_num(np.asarray(image, dtype=np.float64))
        pixels = pixels * 255.0 if 0 <= pixels.min(initial=0) and pixels.max(initial=0) <= 1 else pixels
    return Image.fromarray(np.clip(np.round(pixels), 0, 255).astype(np.uint8), mode="L")


def convert_image(image: Image.Image, image_shape: tuple[int, int, int]) -> np.ndarray:
    """A decoded image as uint8 (H, W, C) of ``image_shape``: 8 bits, transparency on white, L or RGB, Lanczos resize."""
    from PIL import Image

    height, width, channels = image_shape
    if image.mode.startswith("I") or image.mode == "F":
        image = _eight_bit(image)
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        image = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image.alpha_composite(rgba)
    image = image.convert("L" if channels == 1 else "RGB")
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.LANCZOS)
    array = np.asarray(image, dtype=np.uint8)
    return array[..., None] if channels == 1 else array


def decode_image(path: Path | str, image_shape: tuple[int, int, int], max_pixels: int | None = None) -> np.ndarray:
    """The image at ``path`` as uint8 (H, W, C) of ``image_shape`` (see :func:`convert_image`)."""
    image = open_image(path, max_pixels)
    try:
        return convert_image(image, image_shape)
    except _DAMAGED as exc:
        raise DigitlabError(f"image {path} cannot be converted ({type(exc).__name__}: {exc}): {_EXPECTED}") from exc
