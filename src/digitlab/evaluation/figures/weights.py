"""The first learned layer's weights as images (Dense over the image, or Conv2D kernels); other models have none."""

from __future__ import annotations

import numpy as np

from digitlab.evaluation import plots
from digitlab.evaluation.figures import EvaluationData, Placement, figure

# Layers that only reshape or rescale pixels: the first learned layer comes after them.
PASS_THROUGH_LAYERS = {"InputLayer", "Rescaling", "Normalization", "Flatten", "Reshape", "Resizing", "CenterCrop"}
MAX_WEIGHT_MAPS = 50
NOTE = (
    "Red: positive weights (evidence for), blue: negative (evidence against), white: zero; "
    "one colour scale per picture, symmetric around zero."
)


def _learned_layers(model):
    """Layers in order, nested models flattened."""
    for layer in model.layers:
        if hasattr(layer, "layers"):
            yield from _learned_layers(layer)
        else:
            yield layer


def _dense_maps(layer, model, image_shape: tuple[int, int, int], class_names: list[str]):
    height, width, channels = image_shape
    kernel = np.asarray(layer.kernel)
    if kernel.shape[0] != height * width * channels:
        return None
    units = kernel.shape[1]
    maps = kernel.reshape(height, width, channels, units).mean(axis=2).transpose(2, 0, 1)
    if layer is model.layers[-1] and units == len(class_names):
        return maps, [f"class {name}" for name in class_names][:MAX_WEIGHT_MAPS], "weights per class (red positive, blue negative)"
    shown = min(units, MAX_WEIGHT_MAPS)
    return maps[:shown], [f"unit {i}" for i in range(shown)], f"first hidden layer, {shown} of {units} units (red positive, blue negative)"


def _conv_maps(layer):
    kernel = np.asarray(layer.kernel)  # (kh, kw, in_channels, filters)
    filters = kernel.shape[-1]
    shown = min(filters, MAX_WEIGHT_MAPS)
    maps = kernel.mean(axis=2).transpose(2, 0, 1)[:shown]
    return maps, [f"filter {i}" for i in range(shown)], f"first convolution, {shown} of {filters} filters (red positive, blue negative)"


def first_layer_weight_maps(model, image_shape: tuple[int, int, int], class_names: list[str]) -> tuple[np.ndarray, list[str], str] | None:
    """The first learned layer's weights as images, with a title per map and a figure title.

    - a Dense layer over the flattened image: one H x W map per unit (per class
      for a linear model, whose first layer is its output layer);
    - a Conv2D layer: one kernel per filter.
    Colour channels are averaged. ``None`` when the first learned layer is of another kind.
    """
    for layer in _learned_layers(model):
        kind = type(layer).__name__
        if kind in PASS_THROUGH_LAYERS:
            continue
        if kind == "Dense":
            return _dense_maps(layer, model, image_shape, class_names)
        if kind == "Conv2D":
            return _conv_maps(layer)
        return None
    return None


@figure(
    "weights",
    filename="weights.png",
    title="What the models learned: first-layer weights",
    placement=Placement.WIDE,
    note=NOTE,
    order=60,
)
def draw(data: EvaluationData):
    found = first_layer_weight_maps(data.model, data.meta.image_shape, data.class_names)
    if found is None:
        return None
    maps, titles, title = found
    return plots.weight_maps_figure(maps, titles, title=f"{data.recipe}: {title}")
