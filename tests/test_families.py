"""The model families: their settings as conf/ writes them, what they refuse, what they build; adding one."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal, get_args

import keras
import numpy as np
import pytest
import yaml
from pydantic import TypeAdapter, ValidationError

from digitlab.errors import ConfigError
from digitlab.models import FAMILIES, ArchitectureBase, ArchitectureSettings, build_model, parse_architecture
from digitlab.models.families.cnn import CnnSettings
from digitlab.models.families.linear import LinearSettings
from digitlab.models.families.mlp import MlpSettings
from digitlab.schema import PositiveInt

CONF = Path(__file__).resolve().parents[1] / "conf"
ARCHITECTURES = sorted(path.stem for path in (CONF / "architecture").glob("*.yaml"))
TINY = {
    "linear": {"name": "linear", "kernel_initializer": "zeros", "l2": 0.0},
    "mlp": {"name": "mlp", "hidden_units": [16, 8], "activation": "relu", "dropout": 0.2, "batch_norm": True, "l2": 1e-4},
    "cnn": {
        "name": "cnn", "conv_filters": [4, 8], "convs_per_block": 2, "kernel_size": 3, "pool_size": 2,
        "activation": "relu", "batch_norm": True, "dense_units": [16], "dropout": 0.3, "l2": 0.0,
    },
}  # fmt: skip


@FAMILIES.register("test_residual")
class ResidualSettings(ArchitectureBase):
    """A family outside digitlab, as a user would write one: a dense layer with a skip connection around it."""

    name: Literal["test_residual"] = "test_residual"
    units: PositiveInt = 8

    def outputs(self, pixels, num_classes: int):
        x = keras.layers.Flatten(name="flatten")(pixels)
        x = keras.layers.Dense(self.units, activation="relu", kernel_regularizer=self.regularizer(), name="dense")(x)
        branch = keras.layers.Dense(self.units, activation="relu", name="residual_dense")(x)
        x = keras.layers.Add(name="skip")([x, branch])
        return keras.layers.Dense(num_classes, activation="softmax", name="softmax")(x)


def conf_architecture(name: str) -> dict:
    return yaml.safe_load((CONF / "architecture" / f"{name}.yaml").read_text(encoding="utf-8"))


def presets() -> list[tuple[str, str, dict]]:
    """(preset, recipe, the recipe's architecture as the preset composes it) for every conf/experiment preset."""
    found = []
    for path in sorted((CONF / "experiment").glob("*.yaml")):
        for recipe, values in (yaml.safe_load(path.read_text(encoding="utf-8")).get("models") or {}).items():
            if "model" in values:
                found.append((path.stem, recipe, {**conf_architecture(recipe), **values["model"]}))
    return found


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_every_conf_architecture_validates_to_its_family_with_the_same_defaults(name):
    data = conf_architecture(name)
    settings = TypeAdapter(ArchitectureSettings).validate_python(data)
    assert type(settings) is FAMILIES[name] and settings.name == name
    # The settings class' defaults are conf/architecture/<name>.yaml's values.
    assert type(settings)().model_dump() == settings.model_dump() == data


def test_conf_has_one_architecture_per_family_and_each_family_is_registered_under_its_name():
    builtin = {name for name, family in FAMILIES.items() if family.__module__.startswith("digitlab.models.families.")}
    assert builtin == set(ARCHITECTURES) == {"linear", "mlp", "cnn"}
    for name, family in FAMILIES.items():
        assert get_args(family.model_fields["name"].annotation) == (name,), name


@pytest.mark.parametrize(("preset", "recipe", "data"), presets(), ids=lambda v: v if isinstance(v, str) else "")
def test_the_presets_architectures_validate_and_build_for_mnist(preset, recipe, data):
    model = build_model(parse_architecture(data, f"models.{recipe}.model"), (28, 28, 1), 10)
    assert model.output_shape == (None, 10), preset


def test_the_tutorial_cnn_preset_is_the_tutorials_network():
    data = next(d for preset, _, d in presets() if preset == "tutorial_cnn")
    model = build_model(parse_architecture(data), (28, 28, 1), 10)
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [(c.filters, c.kernel_size) for c in convs] == [(16, (5, 5)), (36, (5, 5))]
    assert model.get_layer("dense_1").units == 128 and model.count_params() == 242_062


@pytest.mark.parametrize(
    ("data", "setting", "allowed"),
    [
        ({"name": "resnet"}, r"model\.name", "one of cnn, linear, mlp"),
        ({"name": "mlp", "dropout": 1.0}, "model.dropout", "less than 1"),
        ({"name": "cnn", "dropout": -0.1}, "model.dropout", "greater than or equal to 0"),
        ({"name": "linear", "l2": -1e-4}, "model.l2", "greater than or equal to 0"),
        ({"name": "cnn", "batch_norm": "yes"}, "model.batch_norm", "valid boolean"),
        ({"name": "cnn", "conv_filters": []}, "model.conv_filters", "at least 1 item"),
        ({"name": "linear", "kernel_initializer": "foo"}, "model.kernel_initializer", "'glorot_uniform'"),
        ({"name": "mlp", "dropout": math.nan}, "model.dropout", "finite number"),
        ({"name": "mlp", "l2": math.inf}, "model.l2", "finite number"),
        ({"name": "mlp", "hidden_units": [16, 0]}, r"model.hidden_units\[1\]", "greater than 0"),
        ({"name": "mlp", "activation": "relux"}, "model.activation", "'relu'"),
        ({"name": "cnn", "kernel_size": "3"}, "model.kernel_size", "valid integer"),
        ({"name": "cnn", "pool_size": True}, "model.pool_size", "valid integer"),
        ({"name": "cnn", "convs_per_block": 0}, "model.convs_per_block", "greater than 0"),
        ({"name": "cnn", "convs_per_block": [1, 0]}, r"model.convs_per_block\[1\]", "greater than 0$"),
        ({"name": "cnn", "convs_per_block": "2"}, "model.convs_per_block", "valid integer$"),
        ({"name": "cnn", "conv_filters": [8, 16, 16], "convs_per_block": [1, 2]}, "model.convs_per_block", "a list of 3 .one per conv_filters"),
        ({"name": "linear", "hidden_units": [8]}, "model.hidden_units", "no such setting"),
    ],
)
def test_bad_settings_are_refused_naming_the_setting(data, setting, allowed):
    with pytest.raises(ValidationError):
        TypeAdapter(ArchitectureSettings).validate_python(data)
    with pytest.raises(ConfigError, match=rf"^{setting}=.*{allowed}"):
        parse_architecture(data)


def test_settings_are_frozen_and_accept_whole_numbers_where_conf_writes_floats():
    settings = parse_architecture({"name": "mlp", "dropout": 0, "l2": 0})
    assert settings.dropout == 0.0 and isinstance(settings.dropout, float)
    with pytest.raises(ValidationError, match="frozen"):
        settings.dropout = 0.5


@pytest.mark.parametrize("name", sorted(TINY))
@pytest.mark.parametrize(("shape", "classes"), [((8, 8, 1), 10), ((32, 32, 3), 100)])
def test_each_family_builds_for_any_input_and_returns_probabilities_of_raw_pixels(name, shape, classes):
    model = build_model(parse_architecture(TINY[name]), shape, classes)
    assert model.input_shape == (None, *shape) and model.output_shape == (None, classes)
    images = np.random.default_rng(0).integers(0, 256, size=(3, *shape)).astype(np.float32)
    probabilities = model.predict(images, verbose=0)
    assert (probabilities >= 0).all()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_linear_with_zero_initialiser_starts_at_uniform_probabilities():
    model = build_model(LinearSettings(kernel_initializer="zeros"), (8, 8, 1), 10)
    assert model.count_params() == 8 * 8 * 10 + 10
    np.testing.assert_allclose(model.predict(np.full((2, 8, 8, 1), 200, np.float32), verbose=0), 0.1, rtol=1e-6)


def test_mlp_layers_follow_the_config():
    model = build_model(MlpSettings(hidden_units=[16, 8], batch_norm=True, dropout=0.0, activation="tanh", l2=1e-3), (8, 8, 1), 10)
    names = [layer.name for layer in model.layers]
    assert names == ["pixels", "rescale_0_1", "flatten", "dense_1", "batch_norm_1", "tanh_1", "dense_2", "batch_norm_2", "tanh_2", "softmax"]
    assert model.get_layer("batch_norm_1").momentum == 0.9
    assert model.get_layer("dense_1").kernel_regularizer.l2 == pytest.approx(1e-3)
    assert model.get_layer("softmax").kernel_regularizer is None
    no_hidden = build_model(MlpSettings(hidden_units=[]), (8, 8, 1), 10)
    assert no_hidden.count_params() == 8 * 8 * 10 + 10


def test_cnn_blocks_follow_the_config():
    model = build_model(parse_architecture(TINY["cnn"]), (8, 8, 1), 10)
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [layer.name for layer in convs] == ["block1_conv1", "block1_conv2", "block2_conv1", "block2_conv2"]
    assert [layer.filters for layer in convs] == [4, 4, 8, 8]
    assert model.get_layer("block2_pool").output.shape[1:3] == (2, 2)
    assert model.get_layer("block1_dropout").rate == pytest.approx(0.15) and model.get_layer("dense_1_dropout").rate == pytest.approx(0.3)
    plain = build_model(CnnSettings(conv_filters=[4], batch_norm=False, dropout=0.0, dense_units=[]), (8, 8, 1), 10)
    assert [layer.name for layer in plain.layers] == ["pixels", "rescale_0_1", "block1_conv1", "block1_relu1", "block1_pool", "flatten", "softmax"]


def test_cnn_blocks_take_their_own_convolution_counts_and_pool_first_where_asked():
    model = build_model(CnnSettings(conv_filters=[4, 8], convs_per_block=[1, 2], pool_first=True, dense_units=[], dropout=0.0), (8, 8, 1), 10)
    assert [layer.name for layer in model.layers] == [
        "pixels", "rescale_0_1",
        "block1_conv1", "block1_pool", "block1_batch_norm1", "block1_relu1",
        "block2_conv1", "block2_batch_norm1", "block2_relu1", "block2_conv2", "block2_pool", "block2_batch_norm2", "block2_relu2",
        "flatten", "softmax",
    ]  # fmt: skip


def test_pooling_first_without_normalisation_is_the_same_network():
    """Max-pooling before a ReLU gives what pooling after it gives (the ReLU keeps the order of values), on a quarter of
    the pixels: the same weights give the same probabilities."""
    settings = {"conv_filters": [4, 8], "convs_per_block": [1, 2], "batch_norm": False, "dense_units": [16], "dropout": 0.0}
    after, first = (build_model(CnnSettings(**settings, pool_first=flag), (12, 12, 1), 10) for flag in (False, True))
    assert [w.shape for w in after.get_weights()] == [w.shape for w in first.get_weights()]
    first.set_weights(after.get_weights())
    images = np.random.default_rng(0).integers(0, 256, size=(4, 12, 12, 1)).astype(np.float32)
    np.testing.assert_allclose(first.predict(images, verbose=0), after.predict(images, verbose=0), rtol=1e-5, atol=1e-6)


def test_a_new_family_with_a_skip_connection_registers_validates_builds_and_trains():
    assert "test_residual" in FAMILIES
    settings = parse_architecture({"name": "test_residual", "units": 4, "l2": 1e-3}, "models.res.model")
    assert isinstance(settings, ResidualSettings)
    with pytest.raises(ConfigError, match=r"^models\.res\.model\.units=0"):
        parse_architecture({"name": "test_residual", "units": 0}, "models.res.model")

    keras.utils.set_random_seed(0)
    model = build_model(settings, (8, 8, 1), 10)
    skip = model.get_layer("skip")
    assert isinstance(skip, keras.layers.Add)
    assert {tensor._keras_history.operation.name for tensor in skip.input} == {"dense", "residual_dense"}
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
    before = [w.copy() for w in model.get_weights()]
    images = np.random.default_rng(0).integers(0, 256, size=(16, 8, 8, 1)).astype(np.float32)
    loss = model.train_on_batch(images, np.arange(16) % 10)
    assert np.isfinite(loss)
    assert all(not np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
