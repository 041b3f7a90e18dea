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
    # models:/NAME/ALIAS (the form of MLflow's UI) is read as models:/NAME@ALIAS: test_registry_uri_accepts_the_alias_after_a_slash.


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


def test_a_keras_flavor_model_loads_by_run_and_by_alias_without_mlflow_loaders(mlflow_uri, sample, monkeypatch, tmp_path):
    import tempfile

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
    temp = tmp_path / "temp"  # the process's temp folder while it loads
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    for uri in (f"runs:/{run_id}/model", "models:/tiny@champion", "models:/tiny/champion", f"models:/tiny/{version}"):
        np.testing.assert_allclose(_load(uri, mlflow_uri).predict(sample, verbose=0), expected, rtol=1e-5, err_msg=uri)
        assert not list(temp.iterdir()), f"{uri}: a download left behind in the temp folder"


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


# --- --normalize: a digit picture normalised the way MNIST's digits were made ---


def _digit_picture(digit: str, canvas: tuple[int, int], height: int, at: tuple[int, int], dark_ink: bool = True) -> Image.Image:
    """``digit`` in Pillow's bundled font, its ink ``height`` pixels tall, its box's top-left at ``at``."""
    from PIL import ImageDraw, ImageFont

    probe = ImageFont.load_default(size=100)
    left, top, right, bottom = probe.getbbox(digit)
    font = ImageFont.load_default(size=round(100 * height / (bottom - top)))
    left, top, _, _ = font.getbbox(digit)
    paper, ink = (240, 20) if dark_ink else (0, 255)
    image = Image.new("L", canvas, paper)
    ImageDraw.Draw(image).text((at[0] - left, at[1] - top), digit, font=font, fill=ink)
    return image


def _ink_box(pixels: np.ndarray) -> tuple[int, int]:
    rows, cols = np.flatnonzero(pixels.any(axis=1)), np.flatnonzero(pixels.any(axis=0))
    return int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)


@pytest.mark.parametrize("digit", list("0123456789"))
def test_normalised_digit_has_its_mass_centred_and_fits_20x20(digit):
    from scipy import ndimage

    from digitlab.predict import normalize_mnist

    pixels = normalize_mnist(_digit_picture(digit, (400, 260), 150, (20, 90)))
    assert pixels.shape == (28, 28) and pixels.dtype == np.float32
    assert pixels.max() == pytest.approx(255.0, abs=1) and pixels.min() >= 0
    centre = ndimage.center_of_mass(pixels)
    assert abs(centre[0] - 13.5) <= 1 and abs(centre[1] - 13.5) <= 1, centre
    height, width = _ink_box(pixels > 0)
    assert max(height, width) == 20 and min(height, width) <= 20, (height, width)


def _closest(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Mean absolute difference and correlation of ``a`` and ``b`` at their best alignment within a pixel.

    The centre of mass moves a digit by whole pixels (as MNIST's), so two renderings
    whose centres differ by a hair either side of a half pixel land a pixel apart.
    """
    best = min(((np.abs(np.roll(a, (dy, dx), (0, 1)) - b).mean(), dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)))
    return float(best[0]), float(np.corrcoef(np.roll(a, best[1:], (0, 1)).ravel(), b.ravel())[0, 1])


@pytest.mark.parametrize("digit", list("0123456789"))
def test_an_off_centre_digit_on_paper_normalises_like_the_same_digit_mnist_like(digit):
    from digitlab.predict import normalize_mnist

    on_paper = normalize_mnist(_digit_picture(digit, (500, 300), 200, (330, 40)))  # off to the right, dark on light
    # The same glyph as MNIST's: light on black, 20 pixels tall in 28x28 (drawn 10x larger, then shrunk by area).
    large = _digit_picture(digit, (280, 280), 200, (100, 40), dark_ink=False)
    mnist_like = normalize_mnist(large.resize((28, 28), Image.Resampling.BOX))
    difference, correlation = _closest(on_paper, mnist_like)
    assert difference < 12 and correlation > 0.9, (difference, correlation)
    # And a normalised digit is a fixed point: normalising it again changes next to nothing.
    difference, correlation = _closest(on_paper, normalize_mnist(Image.fromarray(on_paper.astype(np.uint8))))
    assert difference < 6 and correlation > 0.98, (difference, correlation)


def test_normalisation_copes_with_uneven_lighting_and_noise():
    from digitlab.predict import normalize_mnist

    clean = _digit_picture("4", (300, 300), 160, (60, 70))
    pixels = np.asarray(clean, dtype=np.float64)
    ramp = np.linspace(1.0, 0.55, pixels.shape[1])[None, :]  # the right side in shadow
    noisy = np.clip(pixels * ramp + np.random.default_rng(0).normal(0, 15, pixels.shape), 0, 255).astype(np.uint8)
    expected, got = normalize_mnist(clean), normalize_mnist(Image.fromarray(noisy))
    assert _ink_box(got > 60) == _ink_box(expected > 60)
    assert np.corrcoef(expected.ravel(), got.ravel())[0, 1] > 0.95


def test_a_blank_picture_normalises_to_a_black_field():
    from digitlab.predict import normalize_mnist

    assert not normalize_mnist(Image.new("L", (50, 40), 230)).any()


def test_mnist_normalisation_scales_to_another_input_size():
    from digitlab.predict import normalized_input

    picture = _digit_picture("3", (200, 200), 120, (30, 30))
    pixels = normalized_input(picture, (8, 8, 1), dark_ink=None)
    assert pixels.shape == (8, 8, 1) and pixels.max() > 100 and pixels[0].max() < 50
    rgb = normalized_input(picture, (28, 28, 3), dark_ink=None)
    assert rgb.shape == (28, 28, 3) and np.array_equal(rgb[..., 0], rgb[..., 2])


def _meta_dir(root: Path, dataset: str, shape: tuple[int, int, int], classes: list[str] | None = None) -> Path:
    from digitlab.data.prepared import Meta, save_meta

    directory = root / dataset
    directory.mkdir()
    save_meta(directory, Meta(dataset, classes or [str(i) for i in range(10)], shape, {}, {}))
    return directory


@pytest.mark.parametrize(
    ("dataset", "shape", "classes", "expected"),
    [
        ("mnist_5k", (28, 28, 1), None, "mnist"),
        ("mnist", (28, 28, 1), None, "mnist"),
        ("mnist_1k", (28, 28, 1), None, "mnist"),
        ("digits", (8, 8, 1), None, "none"),
        ("fashion_mnist", (28, 28, 1), ["T-shirt/top", *map(str, range(1, 10))], "none"),
        ("cifar10", (32, 32, 3), None, "none"),
        ("folder", (28, 28, 1), None, "none"),
    ],
)
def test_auto_normalises_as_mnist_only_for_mnist_like_digit_sets(tmp_path, dataset, shape, classes, expected):
    from digitlab.predict import choose_normalize

    prepared = _meta_dir(tmp_path, dataset, shape, classes)
    assert choose_normalize("auto", prepared, shape) == expected
    assert choose_normalize("none", prepared, shape) == "none" and choose_normalize("mnist", prepared, shape) == "mnist"


def test_auto_is_none_without_meta_or_for_a_model_of_another_shape(tmp_path):
    from digitlab.predict import choose_normalize

    assert choose_normalize("auto", tmp_path / "nothing", (28, 28, 1)) == "none"
    assert choose_normalize("auto", _meta_dir(tmp_path, "mnist_5k", (28, 28, 1)), (32, 32, 1)) == "none"


def test_normalize_none_is_the_old_behaviour(tiny_prepared, tmp_path):
    """--normalize none (and auto on a digits project) feeds the model exactly what predict fed it before."""
    from digitlab.predict import _border_mean, model_inputs, predict, to_model_input

    root = tmp_path / "project"
    (root / "data").mkdir(parents=True)
    (root / "data" / "prepared").symlink_to(tiny_prepared)
    model, model_path = _tiny_keras_model(), tmp_path / "tiny.keras"
    model.save(model_path)
    pictures = [_digit_picture("5", (90, 60), 40, (10, 5)), _digit_picture("1", (30, 30), 20, (8, 4), dark_ink=False)]
    paths = []
    for i, picture in enumerate(pictures):
        paths.append(tmp_path / f"{i}.png")
        picture.save(paths[-1])
    old = []
    for picture in pictures:  # predict's loop before --normalize existed
        pixels = to_model_input(picture, (8, 8, 1))
        old.append(255.0 - pixels if _border_mean(pixels) > 128 else pixels)
    inputs, inverted = model_inputs(pictures, (8, 8, 1), "auto", "none", True)
    np.testing.assert_array_equal(inputs, np.stack(old))
    assert inverted == [True, False]
    expected = model.predict(np.stack(old), verbose=0)
    for normalize in ("none", "auto"):
        for prediction, row in zip(predict(paths, str(model_path), top_k=1, root=root, normalize=normalize), expected):
            assert prediction.label == str(int(np.argmax(row))) and not prediction.normalized
            assert prediction.top[0][1] == pytest.approx(float(row.max()), rel=1e-5)
    assert all(p.normalized for p in predict(paths, str(model_path), top_k=1, root=root, normalize="mnist"))


def test_a_bad_normalize_value_is_one_line(tmp_path):
    image = tmp_path / "digit.png"
    Image.new("L", (28, 28)).save(image)
    result = digitlab("predict", str(image), "--normalize", "mnsit", cwd=tmp_path, check=False)
    assert result.returncode == 2, result
    assert result.stderr == "digitlab: error: --normalize mnsit is not valid: expected auto, mnist or none\n"
