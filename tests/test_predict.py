"""``digitlab predict`` as a user runs it: pipeline models, MLflow models, any image format, bad input."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.register_assert_rewrite("tests.evaluation_fixtures")
from tests.conftest import run  # noqa: E402

pytest_plugins = ["tests.evaluation_fixtures"]

DIGITLAB = str(Path(sys.executable).parent / "digitlab")


def digitlab(*args: str, cwd: Path, env: dict | None = None, check: bool = True):
    return run([DIGITLAB, *args], cwd=cwd, env=env, check=check)


@pytest.fixture(scope="module")
def known_images(evaluated, tmp_path_factory) -> tuple[list[Path], list[str]]:
    """Test images the cnn classifies right with confidence, saved as a user would have them.

    One as an enlarged RGB PNG, one as an enlarged black-on-white JPEG (inverted, as on paper).
    """
    root, _, _ = evaluated
    x_test = np.load(root / "data" / "prepared" / "test.npz")["x"]
    predictions = np.load(root / "reports" / "evaluation" / "cnn" / "predictions.npz")
    confident = np.flatnonzero(
        (predictions["y_pred"] == predictions["y_true"]) & (predictions["probabilities"].max(axis=1) > 0.9)
    )
    chosen = [confident[0], confident[np.argmax(predictions["y_true"][confident] != predictions["y_true"][confident[0]])]]
    out = tmp_path_factory.mktemp("images")
    paths = [out / "digit.png", out / "digit-on-paper.jpg"]
    Image.fromarray(x_test[chosen[0], ..., 0]).resize((64, 64), Image.Resampling.NEAREST).convert("RGB").save(paths[0])
    Image.fromarray(255 - x_test[chosen[1], ..., 0]).resize((120, 96), Image.Resampling.NEAREST).save(paths[1], quality=95)
    return paths, [str(predictions["y_true"][i]) for i in chosen]


def test_predicts_known_test_images(evaluated, known_images):
    root, _, _ = evaluated
    paths, labels = known_images
    result = digitlab("predict", *map(str, paths), "--model", "cnn", "--top-k", "3", cwd=root)
    lines = result.stdout.splitlines()
    assert lines[0] == f"{paths[0]}: {labels[0]}"
    assert lines[4] == f"{paths[1]}: {labels[1]} (colours inverted: light background)"
    assert len(lines) == 8
    probabilities = [float(line.split()[-1].rstrip("%")) for line in lines[1:4]]
    assert probabilities == sorted(probabilities, reverse=True) and probabilities[0] > 50


def test_keras_file_and_registered_mlflow_model(reported, known_images):
    root, _, uri, best = reported
    paths, labels = known_images
    from_file = digitlab("predict", str(paths[0]), "--model", str(root / "models" / "cnn" / "model.keras"), "--top-k", "1", cwd=root)
    assert from_file.stdout.splitlines()[0] == f"{paths[0]}: {labels[0]}"
    registered = digitlab(
        "predict", str(paths[0]), "--model", "models:/digitlab-digits@champion", "--top-k", "10", cwd=root, env={"MLFLOW_TRACKING_URI": uri}
    )
    lines = registered.stdout.splitlines()
    assert lines[0].startswith(f"{paths[0]}: ") and len(lines) == 11
    # The registered model is the best pipeline model: same answer as loading its file directly.
    direct = digitlab("predict", str(paths[0]), "--model", best, "--top-k", "10", cwd=root)
    assert direct.stdout == registered.stdout
    slash_form = digitlab(
        "predict", str(paths[0]), "--model", "models:/digitlab-digits/champion", "--top-k", "10", cwd=root, env={"MLFLOW_TRACKING_URI": uri}
    )
    assert slash_form.stdout == registered.stdout


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("models:/digitlab-digits/champion", "models:/digitlab-digits@champion"),
        ("models:/digitlab-digits/3", "models:/digitlab-digits/3"),
        ("models:/digitlab-digits@champion", "models:/digitlab-digits@champion"),
        ("runs:/abc/model", "runs:/abc/model"),
    ],
)
def test_registry_uri_accepts_the_alias_after_a_slash(given, expected):
    from digitlab.predict import registry_uri

    assert registry_uri(given) == expected


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "nope.png", r"image {d}/nope.png does not exist: expected a PNG or JPEG file"),
        (lambda d: d, r"image {d} is a directory: expected a PNG or JPEG file"),
        (lambda d: (d / "notes.png").write_text("not an image") and d / "notes.png", r"image {d}/notes.png is not an image Pillow can read"),
        (lambda d: (d / "cut.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20) and d / "cut.png", r"image {d}/cut.png is not an image Pillow can read"),
    ],
    ids=["missing", "directory", "not-an-image", "corrupt-png"],
)
def test_bad_images_fail_clearly(tmp_path, make, message):
    path = make(tmp_path)
    result = digitlab("predict", str(path), cwd=tmp_path, check=False)
    assert result.returncode == 2
    assert result.stderr.startswith("digitlab: error: " + message.format(d=tmp_path)), result.stderr
    assert "Traceback" not in result.stderr


def test_bad_models_fail_clearly(tmp_path, known_images):
    image = str(known_images[0][0])
    cases = [
        (["--model", "mlp"], f"{tmp_path}/models/mlp/model.keras is missing: --model mlp expects the pipeline's trained model"),
        (["--model", "missing.keras"], "--model missing.keras: no such file; expected a recipe (linear, mlp, cnn), a .keras file"),
        (["--model", str(tmp_path)], f"--model {tmp_path} is not a .keras file"),
        (["--top-k", "0"], "--top-k 0 is not valid: expected a whole number of at least 1"),
    ]
    for args, message in cases:
        result = digitlab("predict", image, *args, cwd=tmp_path, check=False)
        assert result.returncode == 2, result
        assert result.stderr.startswith(f"digitlab: error: {message}"), result.stderr


# --- Safe loading: an MLflow model loads only from its keras flavor's .keras file, with safe_mode ---


def _tiny_keras_model(lambda_layer: bool = False):
    import keras

    inputs = keras.Input(shape=(8, 8, 1), name="pixels")
    x = keras.layers.Rescaling(1.0 / 255)(inputs)
    if lambda_layer:  # a Lambda runs Python code when loaded: safe_mode refuses it
        x = keras.layers.Lambda(lambda t: t * 2.0)(x)
    outputs = keras.layers.Dense(10, activation="softmax")(keras.layers.Flatten()(x))
    return keras.Model(inputs, outputs)


def _logged(model, sample) -> str:
    """``model`` logged by digitlab's own tracking.log_model in a fresh run; its run id."""
    import mlflow

    from digitlab import tracking

    with mlflow.start_run() as run:
        tracking.log_model(model, sample)
    return run.info.run_id


@pytest.fixture
def sample(tiny_prepared: Path, mlflow_uri: str) -> np.ndarray:
    """Test pixels; the runs of the test go to an experiment of its own store (not one a fixture before left active)."""
    import mlflow

    mlflow.set_experiment("predict-safe-loading")
    return np.load(tiny_prepared / "test.npz")["x"][:4].astype(np.float32)


def _load(uri: str, store: str):
    from digitlab.predict import _load_mlflow_model
    from digitlab.tracking import TrackingSettings

    return _load_mlflow_model(uri, TrackingSettings(uri=store))


def test_a_keras_flavor_model_loads_by_run_and_by_alias_without_mlflow_loaders(mlflow_uri, sample, monkeypatch):
    import mlflow

    model = _tiny_keras_model()
    run_id = _logged(model, sample)
    version = mlflow.register_model(f"runs:/{run_id}/model", "tiny").version
    mlflow.MlflowClient().set_registered_model_alias("tiny", "champion", version)

    def forbidden(*args, **kwargs):
        raise AssertionError("MLflow's loaders import a model's code/ and unpickle its custom objects")

    monkeypatch.setattr(mlflow.keras, "load_model", forbidden)
    monkeypatch.setattr(mlflow.tensorflow, "load_model", forbidden)
    expected = model.predict(sample, verbose=0)
    for uri in (f"runs:/{run_id}/model", "models:/tiny@champion", "models:/tiny/champion", f"models:/tiny/{version}"):
        np.testing.assert_allclose(_load(uri, mlflow_uri).predict(sample, verbose=0), expected, rtol=1e-5, err_msg=uri)


def test_a_model_with_a_lambda_layer_is_refused_in_one_line(mlflow_uri, sample, tmp_path):
    run_id = _logged(_tiny_keras_model(lambda_layer=True), sample)
    image = tmp_path / "digit.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(image)
    uri = f"runs:/{run_id}/model"
    result = digitlab("predict", str(image), "--model", uri, cwd=tmp_path, env={"MLFLOW_TRACKING_URI": mlflow_uri}, check=False)
    assert result.returncode == 2, result
    assert result.stderr.startswith(f"digitlab: error: refusing MLflow model {uri}: its Keras file does not load in Keras' safe_mode")
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_a_model_that_ships_code_is_refused(mlflow_uri, sample, tmp_path):
    import mlflow
    import yaml

    from digitlab.errors import DigitlabError

    saved = tmp_path / "model"
    mlflow.keras.save_model(_tiny_keras_model(), str(saved))
    (saved / "code").mkdir()
    (saved / "code" / "evil.py").write_text("raise SystemExit('imported the model code')\n")
    mlmodel = yaml.safe_load((saved / "MLmodel").read_text())
    mlmodel["flavors"]["python_function"]["code"] = "code"
    (saved / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(saved), "model")
    with pytest.raises(DigitlabError, match=rf"refusing MLflow model runs:/{run.info.run_id}/model: it ships Python code \(code"):
        _load(f"runs:/{run.info.run_id}/model", mlflow_uri)


def test_a_pyfunc_only_model_is_refused(mlflow_uri, sample):
    import mlflow
    from mlflow.pyfunc import PythonModel

    from digitlab.errors import DigitlabError

    class Echo(PythonModel):  # a pyfunc-only model: no keras flavor
        def predict(self, model_input: list[str], params=None) -> list[str]:
            return model_input

    with mlflow.start_run() as run:
        mlflow.pyfunc.log_model(name="model", python_model=Echo())
    with pytest.raises(DigitlabError, match=r"it has no keras flavor \(flavors: python_function\)"):
        _load(f"runs:/{run.info.run_id}/model", mlflow_uri)


# --- Hostile images: too many pixels to decode is refused before decoding ---


def _png_header(path: Path, width: int, height: int) -> Path:
    """A PNG that claims ``width`` x ``height`` pixels (Pillow checks the size when it opens the file)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize(("width", "height"), [(10_000, 10_000), (40_000, 40_000)], ids=["oversized", "bomb"])
def test_decompression_bombs_are_refused_naming_the_file(tmp_path, width, height):
    path = _png_header(tmp_path / "huge.png", width, height)
    result = digitlab("predict", str(path), cwd=tmp_path, check=False)
    assert result.returncode == 2, result
    # The shared decoder names it a possible decompression bomb; predict's own guard says too large to decode safely.
    assert re.match(rf"digitlab: error: image {re.escape(str(path))} (has too many pixels|is too large to decode safely)", result.stderr), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_predict_refuses_a_decompression_bomb_whatever_the_decoder_does(tmp_path, monkeypatch):
    """predict's own guard: Pillow's bomb warning is an error and its bomb error one line naming the file."""
    import warnings

    from digitlab import predict as predict_module
    from digitlab.errors import DigitlabError

    def warns(path):
        warnings.warn("Image size (100000000 pixels) exceeds limit", Image.DecompressionBombWarning, stacklevel=1)
        raise AssertionError("the warning must stop the decoding")

    monkeypatch.setattr(predict_module, "open_image", warns)
    with pytest.raises(DigitlabError, match=rf"^image {re.escape(str(tmp_path / 'x.png'))} is too large to decode safely"):
        predict_module.read_image(tmp_path / "x.png")
