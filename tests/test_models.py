"""Model and optimizer builders: shapes for any input, raw pixels in, probabilities out, clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from digitlab.config import compose
from digitlab.errors import ConfigError
from digitlab.models import build_model, build_optimizer

TINY = {
    "linear": {"name": "linear", "kernel_initializer": "zeros", "l2": 0.0},
    "mlp": {"name": "mlp", "hidden_units": [16, 8], "activation": "relu", "dropout": 0.2, "batch_norm": True, "l2": 1e-4},
    "cnn": {
        "name": "cnn", "conv_filters": [4, 8], "convs_per_block": 2, "kernel_size": 3, "pool_size": 2,
        "activation": "relu", "batch_norm": True, "dense_units": [16], "dropout": 0.3, "l2": 0.0,
    },
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(TINY))
@pytest.mark.parametrize(("shape", "classes"), [((8, 8, 1), 10), ((32, 32, 3), 100)])
def test_builds_for_any_input_and_returns_probabilities_of_raw_pixels(name, shape, classes):
    model = build_model(TINY[name], shape, classes)
    assert model.input_shape == (None, *shape) and model.output_shape == (None, classes)
    pixels = np.random.default_rng(0).integers(0, 256, size=(3, *shape)).astype(np.float32)
    probabilities = model.predict(pixels, verbose=0)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    assert model.layers[0].name == "rescale_0_1"


def test_the_default_recipes_build_for_mnist():
    cfg = compose()
    for name, recipe in cfg.models.items():
        model = build_model(recipe.model, (28, 28, 1), 10)
        assert model.output_shape == (None, 10), name


def test_linear_with_zero_initialiser_starts_at_uniform_probabilities():
    model = build_model(TINY["linear"], (8, 8, 1), 10)
    assert model.count_params() == 8 * 8 * 10 + 10
    probabilities = model.predict(np.full((2, 8, 8, 1), 200, np.float32), verbose=0)
    np.testing.assert_allclose(probabilities, 0.1, rtol=1e-6)


def test_cnn_blocks_follow_the_config():
    model = build_model(TINY["cnn"], (8, 8, 1), 10)
    convs = [layer for layer in model.layers if layer.name.endswith(("conv1", "conv2"))]
    assert [layer.filters for layer in convs] == [4, 4, 8, 8]
    assert model.get_layer("block2_pool").output.shape[1:3] == (2, 2)


def test_too_much_pooling_for_the_input_names_the_layer_and_shapes():
    deep = {**TINY["cnn"], "conv_filters": [4, 4, 4, 4]}
    with pytest.raises(ConfigError, match=r"block4_pool.*\(1, 1, 4\).*\(8, 8, 1\).*zero or negative"):
        build_model(deep, (8, 8, 1), 10, "models.cnn.model")


@pytest.mark.parametrize(
    ("change", "setting"),
    [
        ({"name": "resnet"}, "model.name"),
        ({"hidden_units": [16, 0]}, "model.hidden_units"),
        ({"dropout": 1.0}, "model.dropout"),
        ({"activation": "relux"}, "model.activation"),
    ],
)
def test_bad_architecture_settings_are_named(change, setting):
    with pytest.raises(ConfigError, match=rf"^{setting}="):
        build_model({**TINY["mlp"], **change}, (8, 8, 1), 10)


def test_optimizers_with_clipping_and_schedules():
    sgd = build_optimizer({"name": "sgd", "learning_rate": 0.5, "momentum": 0.9, "clipnorm": 5.0, "schedule": None}, 100)
    assert type(sgd).__name__ == "SGD" and sgd.momentum == 0.9 and sgd.clipnorm == 5.0
    assert type(build_optimizer({"name": "adagrad", "learning_rate": 0.05}, 10)).__name__ == "Adagrad"
    assert type(build_optimizer({"name": "rmsprop", "learning_rate": 0.001}, 10)).__name__ == "RMSprop"
    cosine = build_optimizer({"name": "adam", "learning_rate": 0.1, "schedule": "cosine"}, 100)
    schedule = cosine._learning_rate
    assert float(schedule(0)) == pytest.approx(0.1) and float(schedule(100)) == pytest.approx(0.0, abs=1e-6)
    exponential = build_optimizer({"name": "adam", "learning_rate": 0.1, "schedule": "exponential"}, 100)._learning_rate
    assert float(exponential(100)) == pytest.approx(0.001)


@pytest.mark.parametrize(
    ("optimizer", "setting"),
    [
        ({"name": "adamw", "learning_rate": 0.1}, "optimizer.name"),
        ({"name": "adam", "learning_rate": 0}, "optimizer.learning_rate"),
        ({"name": "adam", "learning_rate": -1e-3}, "optimizer.learning_rate"),
        ({"name": "adam", "learning_rate": 1e-3, "clipnorm": 0}, "optimizer.clipnorm"),
        ({"name": "adam", "learning_rate": 1e-3, "schedule": "linear"}, "optimizer.schedule"),
    ],
)
def test_bad_optimizer_settings_are_named(optimizer, setting):
    with pytest.raises(ConfigError, match=rf"^{setting}="):
        build_optimizer(optimizer, 10)
