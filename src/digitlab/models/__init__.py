"""Model families, built from validated settings; the one way models are saved and loaded.

Every model takes raw pixels (float32 0-255, shape (N, H, W, C)) and returns
class probabilities: the rescaling to 0-1 is its first layer, so a saved model
needs no preprocessing from whoever loads it (evaluate, predict, MLflow serve).

A family is one module of :mod:`digitlab.models.families` (see
:mod:`digitlab.models.base`). This package imports neither Keras nor
TensorFlow until a model is built, saved or loaded: the configuration schema
imports it for :data:`ArchitectureSettings`.
"""

from __future__ import annotations

import contextlib
import re
import threading
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from digitlab.errors import ConfigError, DigitlabError
from digitlab.io import atomic_path
from digitlab.models.base import BATCH_NORM_MOMENTUM, FAMILIES, Activation, ArchitectureBase
from digitlab.schema import describe_error

__all__ = [
    "BATCH_NORM_MOMENTUM",
    "FAMILIES",
    "Activation",
    "ArchitectureBase",
    "ArchitectureSettings",
    "build_model",
    "load_model",
    "parse_architecture",
    "save_model",
]

# The settings of any registered family, chosen by ``name``: the type of models.<recipe>.model.
ArchitectureSettings = FAMILIES.tagged_union("name")


def parse_architecture(data: Mapping[str, Any], setting: str = "model") -> ArchitectureBase:
    """Validate one architecture's settings (a dict, as in conf/architecture/) into its family's settings.

    Families registered after this package was imported (e.g. by a test) count too.
    """
    try:
        return TypeAdapter(FAMILIES.tagged_union("name")).validate_python(data)
    except ValidationError as exc:
        raise describe_error(exc, data, setting) from None


def build_model(settings: ArchitectureBase, image_shape: Sequence[int], num_classes: int, setting: str = "model", augment: Any = None) -> Any:
    """A ``keras.Model`` (functional) for raw pixels of ``image_shape`` and ``num_classes`` classes.

    Raises :class:`ConfigError` naming the layer and the shapes when the
    architecture does not fit the input (e.g. more pooling than an 8x8 image
    allows), before any training. ``setting`` is where ``settings`` sit in the
    configuration (``models.cnn.model``), for that message. ``augment``, a Keras layer
    (:func:`digitlab.training.augmentation.augmentation_layer`), goes first, on raw pixels.
    """
    import keras

    shape = tuple(int(d) for d in image_shape)
    inputs = keras.Input(shape=shape, name="pixels")
    with _watching_layers() as watch:
        try:
            pixels = keras.layers.Rescaling(1.0 / 255, name="rescale_0_1")(augment(inputs) if augment is not None else inputs)
            outputs = settings.outputs(pixels, num_classes)
        except Exception:
            if watch.misfit is None:
                raise
            raise _misfit_error(settings, watch.misfit, shape, setting) from None
    return keras.Model(inputs, outputs, name=settings.name)


def _misfit_error(settings: ArchitectureBase, misfit: _Misfit, shape: tuple[int, ...], setting: str) -> ConfigError:
    field = settings.misfit_setting
    return ConfigError(
        f"{setting}.{field}",
        getattr(settings, field),
        "an architecture that fits the input",
        f"layer {misfit.layer!r} gets shape {misfit.input_shape} from input images of shape {shape} "
        f"and {misfit.problem}: {settings.misfit_advice}",
    )


def load_model(path: Path) -> Any:
    """The Keras model saved at ``path`` (a .keras file), or a :class:`DigitlabError` naming the file and the reason.

    ``safe_mode`` stays on: a model file cannot run arbitrary code (Lambda layers) when loaded.
    """
    import keras

    path = Path(path)
    if not path.is_file():
        raise DigitlabError(f"cannot load {path} as a Keras model: there is no such file (expected a .keras file from the train stage)")
    if path.suffix == ".keras" and not zipfile.is_zipfile(path):
        # Keras would say "File not found" for a file that is there but is not a .keras archive.
        raise DigitlabError(f"cannot load {path} as a Keras model: it is not a .keras archive (a zip file); is it a whole file from the train stage?")
    try:
        return keras.models.load_model(path, safe_mode=True)
    except Exception as exc:  # Keras raises many kinds for a bad file; the user needs the file and the reason.
        raise DigitlabError(f"cannot load {path} as a Keras model (a .keras file from the train stage): {exc}") from exc


def save_model(model: Any, path: Path) -> None:
    """Save ``model`` to ``path`` (.keras) through a temporary file and a rename: a kill never leaves half a model."""
    with atomic_path(Path(path)) as tmp:
        model.save(tmp)


# Which layer does not fit the input. A family builds its graph with ordinary
# Keras calls, so when the input is too small for it (more pooling than 8x8
# pixels allow) the failure surfaces inside Keras, as a ValueError naming the
# layer's class but not the layer, or as a layer quietly returning a 0-sized
# dimension. While _watching_layers() is active, each Layer.__call__ made by
# this thread records the first layer that fails or returns an empty dimension,
# with the shape it was given.

_LOCK = threading.RLock()  # re-entrant: a family may build a sub-model with build_model
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass
class _Misfit:
    layer: str  # the layer's name
    input_shape: Any  # what it was given, without the batch dimension
    problem: str  # what went wrong, in words that follow "and"


@dataclass
class _Watch:
    misfit: _Misfit | None = None


class _EmptyOutput(Exception):
    """A layer returned a 0-sized dimension (recorded in the :class:`_Watch`)."""


def _shapes(value: Any) -> Any:
    import keras

    shapes = [tuple(t.shape[1:]) for t in keras.tree.flatten(value) if hasattr(t, "shape")]
    return shapes[0] if len(shapes) == 1 else shapes


def _reason(exc: BaseException) -> str:
    """Keras' explanation of a failed layer call, without its colours, wrapper and argument dump."""
    lines = [line.strip() for line in _ANSI.sub("", str(exc)).splitlines()]
    lines = [line for line in lines if line and not line.startswith(("Exception encountered", "Arguments received", "•"))]
    text = (lines[0] if lines else type(exc).__name__).split(". Received")[0].rstrip(".")
    return text[:1].lower() + text[1:]


@contextlib.contextmanager
def _watching_layers() -> Iterator[_Watch]:
    """Record in the yielded :class:`_Watch` the first layer call that fails or returns an empty dimension."""
    import keras

    watch, thread = _Watch(), threading.get_ident()
    with _LOCK:
        original = keras.layers.Layer.__call__

        def watched(layer: Any, *args: Any, **kwargs: Any) -> Any:
            if threading.get_ident() != thread:
                return original(layer, *args, **kwargs)
            given = _shapes(args[0] if args else next(iter(kwargs.values()), None))
            try:
                outputs = original(layer, *args, **kwargs)
            except ValueError as exc:
                watch.misfit = watch.misfit or _Misfit(layer.name, given, _reason(exc))  # the innermost layer wins
                raise
            returned = _shapes(outputs)
            if watch.misfit is None and any(d is not None and d < 1 for d in _flat(returned)):
                watch.misfit = _Misfit(layer.name, given, f"it would output {returned}")
                raise _EmptyOutput(layer.name)
            return outputs

        keras.layers.Layer.__call__ = watched
        try:
            yield watch
        finally:
            keras.layers.Layer.__call__ = original


def _flat(shapes: Any) -> list:
    if isinstance(shapes, list):
        return [d for shape in shapes for d in shape]
    return list(shapes)
