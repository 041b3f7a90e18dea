"""Data augmentation (``conf/augmentation/``): random transforms in the model's training path.

The transforms are Keras preprocessing layers placed right after the model's input, so they
run on the accelerator with the rest of the step, are seeded like the model (``seed``), and
are inactive at inference: ``model.predict``, ``evaluate``, the saved ``model.keras`` and
``digitlab predict`` see every image as it is. Flips are applied only where the dataset says
a mirrored image keeps its label (``dataset.flip_keeps_label``: true for CIFAR and
Fashion-MNIST, never for digits, whose 2 and 5 a mirror would confuse).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field

from digitlab.schema import Strict


class AugmentationSettings(Strict):
    name: str = "none"
    rotation_deg: Annotated[float, Field(ge=0, le=180)] = 0  # random rotation within +-rotation_deg degrees
    zoom: Annotated[float, Field(ge=0, lt=1)] = 0  # random zoom in or out by up to this fraction
    translate: Annotated[float, Field(ge=0, le=0.5)] = 0  # random shift by up to this fraction of height and width
    contrast: Annotated[float, Field(ge=0, lt=1)] = 0  # random contrast change by up to this fraction
    flip: bool = False  # random horizontal flips, where the dataset allows them (dataset.flip_keeps_label)

    def active(self, flip_allowed: bool) -> bool:
        return bool(self.rotation_deg or self.zoom or self.translate or self.contrast or (self.flip and flip_allowed))


def augmentation_layer(settings: AugmentationSettings, flip_allowed: bool, seed: int) -> Any | None:
    """A ``keras.Sequential`` named ``augmentation`` of the transforms ``settings`` asks for, or None (nothing to do).

    It takes raw 0-255 pixels (it comes before the model's rescaling) and fills what a transform
    uncovers with the nearest edge pixels (a background, not a black frame).
    """
    import keras

    layers: list[Any] = []
    if settings.flip and flip_allowed:
        layers.append(keras.layers.RandomFlip("horizontal", seed=seed))
    if settings.rotation_deg:
        layers.append(keras.layers.RandomRotation(settings.rotation_deg / 360, fill_mode="nearest", seed=seed + 1))
    if settings.zoom:
        layers.append(keras.layers.RandomZoom((-settings.zoom, settings.zoom), fill_mode="nearest", seed=seed + 2))
    if settings.translate:
        layers.append(keras.layers.RandomTranslation(settings.translate, settings.translate, fill_mode="nearest", seed=seed + 3))
    if settings.contrast:
        layers.append(keras.layers.RandomContrast(settings.contrast, value_range=(0, 255), seed=seed + 4))
    return keras.Sequential(layers, name="augmentation") if layers else None
