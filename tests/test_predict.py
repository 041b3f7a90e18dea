"""``digitlab predict`` as a user runs it: pipeline models, MLflow models, any image format, bad input."""

from __future__ import annotations

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
