"""The model API: raw pixels in, probabilities out; misfits named before training; the one save and load."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from typing import Literal

import keras
import numpy as np
import pytest

from digitlab.errors import ConfigError, DigitlabError
from digitlab.models import FAMILIES, ArchitectureBase, build_model, load_model, parse_architecture, save_model
from digitlab.schema import NonNegativeInt

TINY_CNN = {
    "name": "cnn", "conv_filters": [4, 8], "convs_per_block": 2, "kernel_size": 3, "pool_size": 2,
    "activation": "relu", "batch_norm": True, "dense_units": [16], "dropout": 0.3, "l2": 0.0,
}  # fmt: skip
TINY_MLP = {"name": "mlp", "hidden_units": [16, 8], "activation": "relu", "dropout": 0.2, "batch_norm": True, "l2": 1e-4}


@FAMILIES.register("test_rows")
class RowsSettings(ArchitectureBase):
    """A test family keeping only the first ``rows`` rows of the image: 0 rows is an empty tensor, not a Keras error."""

    name: Literal["test_rows"] = "test_rows"
    rows: NonNegativeInt = 4

    def outputs(self, pixels, num_classes: int):
        x = keras.layers.Lambda(lambda t, rows: t[:, :rows], arguments={"rows": self.rows}, name="first_rows")(pixels)
        x = keras.layers.Flatten(name="flatten")(x)
        return keras.layers.Dense(num_classes, activation="softmax", name="softmax")(x)


def pixels(shape: tuple[int, ...], n: int = 3) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(n, *shape)).astype(np.float32)


def test_a_model_is_functional_takes_raw_pixels_and_is_named_after_its_family():
    model = build_model(parse_architecture(TINY_MLP), (8, 8, 1), 10)
    assert isinstance(model, keras.Model) and not isinstance(model, keras.Sequential) and model.name == "mlp"
    assert model.input_shape == (None, 8, 8, 1) and model.output_shape == (None, 10)
    assert [layer.name for layer in model.layers[:3]] == ["pixels", "rescale_0_1", "flatten"]
    # Rescaling is inside the model: 255 everywhere is what 1.0 everywhere would be to the layers after it.
    inner = keras.Model(model.get_layer("rescale_0_1").output, model.output)
    raw = model.predict(np.full((1, 8, 8, 1), 255.0, np.float32), verbose=0)
    np.testing.assert_allclose(raw, inner.predict(np.ones((1, 8, 8, 1), np.float32), verbose=0), rtol=1e-6)


def test_the_same_seed_gives_the_same_initial_weights():
    settings = parse_architecture(TINY_CNN)
    keras.utils.set_random_seed(42)
    first = build_model(settings, (8, 8, 1), 10).get_weights()
    keras.utils.set_random_seed(42)
    second = build_model(settings, (8, 8, 1), 10).get_weights()
    assert len(first) == len(second) and all(np.array_equal(a, b) for a, b in zip(first, second))


def test_too_much_pooling_for_the_input_names_the_setting_the_layer_and_the_shapes():
    deep = parse_architecture({**TINY_CNN, "conv_filters": [4, 4, 4, 4]})
    with pytest.raises(ConfigError, match=r"^models\.cnn\.model\.conv_filters=\[4, 4, 4, 4\] is not valid: expected an architecture that fits") as caught:
        build_model(deep, (8, 8, 1), 10, "models.cnn.model")
    message = str(caught.value)
    assert "layer 'block4_pool' gets shape (1, 1, 4) from input images of shape (8, 8, 1)" in message
    assert "zero or negative" in message and "use fewer conv_filters blocks or a smaller pool_size" in message
    assert "\x1b" not in message and "Arguments received" not in message  # Keras' colours and argument dump are dropped


def test_a_pool_larger_than_the_image_fails_at_the_first_block():
    wide = parse_architecture({**TINY_CNN, "conv_filters": [4], "pool_size": 9})
    with pytest.raises(ConfigError, match=r"layer 'block1_pool' gets shape \(8, 8, 4\) from input images of shape \(8, 8, 1\)"):
        build_model(wide, (8, 8, 1), 10)
    build_model(wide, (9, 9, 1), 10)  # fits a larger image


def test_a_layer_returning_an_empty_dimension_is_a_misfit_named_by_family():
    with pytest.raises(ConfigError, match=r"^models\.r\.model\.name='test_rows'.*layer 'first_rows' gets shape \(8, 8, 1\).*it would output \(0, 8, 1\)"):
        build_model(RowsSettings(rows=0), (8, 8, 1), 10, "models.r.model")
    assert build_model(RowsSettings(rows=2), (8, 8, 1), 10).output_shape == (None, 10)


def test_layers_called_after_a_build_are_not_watched():
    build_model(RowsSettings(rows=2), (8, 8, 1), 10)
    assert keras.layers.Dense(3)(np.ones((1, 2), np.float32)).shape == (1, 3)
    assert keras.layers.Layer.__call__.__name__ == "__call__"


def test_a_family_that_does_not_implement_outputs_says_so():
    class Unfinished(ArchitectureBase):
        name: Literal["unfinished"] = "unfinished"

    with pytest.raises(NotImplementedError, match="Unfinished does not implement outputs"):
        build_model(Unfinished(), (8, 8, 1), 10)


def test_save_and_load_round_trip_atomically(tmp_path):
    model = build_model(parse_architecture(TINY_CNN), (8, 8, 1), 10)
    path = tmp_path / "out" / "model.keras"
    save_model(model, path)
    save_model(model, path)  # over an existing file
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.keras"]  # no temporary file left
    loaded = load_model(path)
    assert [layer.name for layer in loaded.layers] == [layer.name for layer in model.layers]
    np.testing.assert_array_equal(loaded.predict(pixels((8, 8, 1)), verbose=0), model.predict(pixels((8, 8, 1)), verbose=0))


def test_a_failed_save_leaves_the_previous_model(tmp_path):
    path = tmp_path / "model.keras"
    save_model(build_model(parse_architecture(TINY_MLP), (8, 8, 1), 10), path)
    before = path.read_bytes()

    class Broken:
        def save(self, filepath):
            filepath.write_bytes(b"half a model")
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        save_model(Broken(), path)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["model.keras"]


def test_loading_a_file_that_is_not_a_model_names_the_file(tmp_path):
    bad = tmp_path / "model.keras"
    bad.write_text("not a model")
    with pytest.raises(DigitlabError, match=rf"cannot load {bad} as a Keras model: it is not a .keras archive"):
        load_model(bad)
    with zipfile.ZipFile(tmp_path / "empty.keras", "w") as archive:
        archive.writestr("readme.txt", "a zip file, but no model in it")
    with pytest.raises(DigitlabError, match=rf"cannot load {tmp_path / 'empty.keras'} as a Keras model \(a .keras file from the train stage\): "):
        load_model(tmp_path / "empty.keras")
    with pytest.raises(DigitlabError, match=rf"cannot load {tmp_path / 'missing.keras'} as a Keras model: there is no such file"):
        load_model(tmp_path / "missing.keras")


def test_loading_runs_no_code_from_the_file(tmp_path):
    """safe_mode: a Lambda layer (arbitrary Python) in a model file is refused, with the file named."""
    path = tmp_path / "lambda.keras"
    save_model(build_model(RowsSettings(rows=2), (8, 8, 1), 10), path)
    with pytest.raises(DigitlabError, match=rf"cannot load {path} as a Keras model.*safe_mode"):
        load_model(path)


def test_importing_the_package_and_validating_settings_imports_no_keras():
    code = (
        "import sys; from pydantic import TypeAdapter; from digitlab.models import ArchitectureSettings; "
        "TypeAdapter(ArchitectureSettings).validate_python({'name': 'cnn'}); "
        "assert not {'keras', 'tensorflow'} & set(sys.modules), sorted(m for m in sys.modules if m.startswith(('keras', 'tensorflow')))[:5]"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
