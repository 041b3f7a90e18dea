"""Bad input, as a user types it: each case is a real command that must answer with one line
naming the setting (or file), the value and what is allowed, and exit status 2, before any
expensive work, never with a traceback."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from .conftest import ROOT, copy_project, user_env

BIN = Path(sys.executable).parent
LINE = "digitlab: error: "

# (overrides for `digitlab params`, what the one line must contain)
SETTINGS = [
    # wrong types
    (["seed=abc"], "seed='abc' is not valid: expected a valid integer"),
    (["seed=1.5"], "seed=1.5 is not valid: expected a valid integer"),
    (["models.cnn.training.epochs=ten"], "models.cnn.training.epochs='ten' is not valid"),
    (["models.cnn.training.batch_size=[64]"], "models.cnn.training.batch_size=[64] is not valid"),
    (["models.mlp.model.hidden_units=512"], "models.mlp.model.hidden_units=512 is not valid: expected a valid list"),
    (["models.mlp.model.hidden_units=[512,x]"], "models.mlp.model.hidden_units[1]='x' is not valid"),
    (["dataset.image_shape=[28,28]"], "dataset.image_shape=[28, 28] is not valid"),
    (["evaluate.top_k=five"], "evaluate.top_k='five' is not valid"),
    # strings for booleans
    (["models.cnn.training.deterministic=yes"], "models.cnn.training.deterministic='yes' is not valid: expected a valid boolean"),
    (["models.cnn.model.batch_norm=on"], "models.cnn.model.batch_norm='on' is not valid: expected a valid boolean"),
    (["models.mlp.training.early_stopping.enabled='true'"], "models.mlp.training.early_stopping.enabled='true' is not valid"),
    (["tracking.log_models=1"], "tracking.log_models=1 is not valid: expected a valid boolean"),
    # NaN and infinities
    (["models.mlp.model.dropout=nan"], "models.mlp.model.dropout=nan is not valid: expected a finite number"),
    (["models.cnn.optimizer.learning_rate=inf"], "models.cnn.optimizer.learning_rate=inf is not valid"),
    (["models.cnn.optimizer.learning_rate=-inf"], "models.cnn.optimizer.learning_rate=-inf is not valid"),
    (["models.linear.model.l2=nan"], "models.linear.model.l2=nan is not valid"),
    (["evaluate.confidence_level=nan"], "evaluate.confidence_level=nan is not valid"),
    (["tracking.connect_timeout=inf"], "tracking.connect_timeout=inf is not valid"),
    # out of range
    (["seed=-1"], "seed=-1 is not valid: expected a number greater than or equal to 0"),
    (["seed=4294967296"], "seed=4294967296 is not valid: expected a number less than or equal to 4294967295"),
    (["models.cnn.optimizer.learning_rate=0"], "models.cnn.optimizer.learning_rate=0 is not valid: expected a number greater than 0"),
    (["models.cnn.model.dropout=1.0"], "models.cnn.model.dropout=1.0 is not valid: expected a number less than 1"),
    (["optimizer@models.linear.optimizer=sgd", "models.linear.optimizer.momentum=1.5"], "models.linear.optimizer.momentum=1.5 is not valid"),
    (["models.cnn.training.early_stopping.patience=0"], "models.cnn.training.early_stopping.patience=0 is not valid"),
    (["models.cnn.training.early_stopping.min_delta=-0.1"], "models.cnn.training.early_stopping.min_delta=-0.1 is not valid"),
    (["models.cnn.training.early_stopping.start_fraction=1.5"], "models.cnn.training.early_stopping.start_fraction=1.5 is not valid"),
    (["models.cnn.training.early_stopping.min_delta_images=-1"], "models.cnn.training.early_stopping.min_delta_images=-1 is not valid"),
    (["models.cnn.training.label_smoothing=1"], "models.cnn.training.label_smoothing=1 is not valid: expected a number less than 1"),
    (["models.cnn.optimizer.weight_decay=-0.0001"], "models.cnn.optimizer.weight_decay=-0.0001 is not valid: expected a number greater than 0"),
    (["models.mlp.optimizer.ema_momentum=1"], "models.mlp.optimizer.ema_momentum=1 is not valid: expected a number less than 1"),
    (["evaluate.confidence_level=1.5"], "evaluate.confidence_level=1.5 is not valid"),
    (["dataset.validation_size=1.5"], "dataset.validation_size=1.5 is not valid"),
    (["dataset.validation_size=0"], "dataset.validation_size=0 is not valid"),
    (["dataset.validation_size=5000"], "dataset.validation_size=5000 is not valid: expected a size that leaves images to train on"),
    (["dataset.subset=100000"], "dataset.subset=100000 is not valid"),
    (["dataset.test_size=null"], "dataset.test_size=None is not valid"),
    (["dataset.image_shape=[32,32,3]"], "dataset.image_shape=[32, 32, 3] is not valid"),
    (["models.cnn.model.conv_filters=[]"], "models.cnn.model.conv_filters=[] is not valid: expected at least 1 item"),
    # unknown choices and keys
    (["model=resnet"], "model='resnet' is not valid: expected one of the recipes under models: linear, mlp, cnn"),
    (["models.cnn.model.name=resnet"], "models.cnn.model.name='resnet' is not valid: expected one of cnn, linear, mlp"),
    (["models.cnn.optimizer.name=adamw"], "models.cnn.optimizer.name='adamw' is not valid"),
    (["models.cnn.model.activation=relux"], "models.cnn.model.activation='relux' is not valid"),
    (["models.linear.model.kernel_initializer=foo"], "models.linear.model.kernel_initializer='foo' is not valid"),
    (["models.cnn.training.early_stopping.monitor=val_f1"], "models.cnn.training.early_stopping.monitor='val_f1' is not valid"),
    (["+models.cnn.model.filterz=3"], "models.cnn.model.filterz=3 is not valid: expected no such setting"),
    (["dataset.name=my data"], "dataset.name='my data' is not valid: expected a name of letters, digits"),
    # unknown URI schemes
    (["tracking.uri=htp://localhost:5000"], "tracking.uri='htp://localhost:5000' is not valid: expected a URI of an MLflow store"),
    (["tracking.uri=file:///tmp/mlruns"], "tracking.uri='file:///tmp/mlruns' is not valid"),
    (["tracking.uri=sqlite://"], "tracking.uri='sqlite://' is not valid"),
    (["tracking.uri=http://"], "tracking.uri='http://' is not valid"),
    (["tracking.ui_url=localhost:5000"], "tracking.ui_url='localhost:5000' is not valid"),
    (["dataset=mnist", "dataset.url=gopher://example.org/mnist.npz"], "dataset.url='gopher://example.org/mnist.npz' is not valid"),
    (["dataset=mnist", "dataset.sha256=abc"], "dataset.sha256='abc' is not valid"),
]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the project's configuration (what `digitlab params` and the stages read)."""
    dest = tmp_path_factory.mktemp("bad-input") / "project"
    dest.mkdir()
    for name in ("conf", "pipeline"):
        shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy2(ROOT / name, dest / name)
    return dest


def one_line_exit_2(command: list[str], cwd: Path, expected: str) -> None:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=180)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, f"exit {result.returncode}\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    assert lines and lines[-1].startswith(LINE) and expected in lines[-1], result.stderr
    assert sum(line.startswith(LINE) for line in lines) == 1, result.stderr


@pytest.mark.parametrize(("overrides", "expected"), SETTINGS, ids=[" ".join(o) for o, _ in SETTINGS])
def test_bad_setting(project: Path, overrides: list[str], expected: str) -> None:
    before = (project / "params.yaml").read_bytes()
    one_line_exit_2([str(BIN / "digitlab"), "params", *overrides], project, expected)
    assert (project / "params.yaml").read_bytes() == before


PARAMS_FILES = [
    ("dataset: [unclosed\n", "is not valid YAML at line"),
    ("- a\n- list\n", "does not hold a mapping of settings"),
    ("seed: 42\n", "dataset=None is not valid"),
    ("dataset: {name: x, source: nope, image_shape: [8, 8, 1], validation_size: 1}\n", "dataset.source='nope' is not valid: expected one of"),
]


@pytest.mark.parametrize(("text", "expected"), PARAMS_FILES, ids=["malformed", "list", "incomplete", "unknown-source"])
def test_bad_params_file(project: Path, tmp_path: Path, text: str, expected: str) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(text)
    one_line_exit_2([sys.executable, "-m", "pipeline.preprocess", "--params", str(params)], project, expected)


def image(path: Path, size: tuple[int, int], mode: str = "L") -> Path:
    from PIL import Image

    Image.new(mode, size, 0).save(path)
    return path


def test_predict_refuses_a_truncated_image(tmp_path: Path) -> None:
    whole = image(tmp_path / "whole.png", (64, 64))
    (tmp_path / "cut.png").write_bytes(whole.read_bytes()[:60])
    one_line_exit_2([str(BIN / "digitlab"), "predict", str(tmp_path / "cut.png")], tmp_path, "cut.png")


def test_predict_refuses_a_decompression_bomb(tmp_path: Path) -> None:
    bomb = image(tmp_path / "bomb.png", (30_000, 30_000), "1")  # 900 megapixels, a few kB on disk
    one_line_exit_2([str(BIN / "digitlab"), "predict", str(bomb)], tmp_path, "bomb.png")


def test_predict_refuses_a_file_that_is_not_a_model(tmp_path: Path) -> None:
    picture = image(tmp_path / "digit.png", (28, 28))
    fake = tmp_path / "model.keras"
    fake.write_text("not a model")
    one_line_exit_2([str(BIN / "digitlab"), "predict", str(picture), "--model", str(fake)], tmp_path, "model.keras")


def test_folder_with_a_class_left_empty_after_skipping(project: Path, tmp_path: Path) -> None:
    images = tmp_path / "images"
    for name in ("cat", "dog"):
        (images / name).mkdir(parents=True)
    for i in range(3):
        image(images / "cat" / f"{i}.png", (16, 16))
    (images / "dog" / "notes.png").write_text("not an image")
    one_line_exit_2(
        [sys.executable, "-m", "pipeline.download", "dataset=folder", f"dataset.path={images}", f"paths.data={tmp_path / 'data'}"],
        project, "dog",
    )  # fmt: skip
    assert not (tmp_path / "data").exists() or not any((tmp_path / "data").rglob("*.npz"))


def test_at_least_forty_cases() -> None:
    assert len(SETTINGS) + len(PARAMS_FILES) + 4 >= 40


def test_a_valid_odd_image_is_not_refused(tmp_path: Path) -> None:
    """Odd but valid images (1x1, 16-bit, CMYK) are decoded, not refused."""
    from digitlab.data.images import decode_image

    for name, size, mode in (("one.png", (1, 1), "L"), ("deep.png", (8, 8), "I;16"), ("print.jpg", (8, 8), "CMYK")):
        pixels = decode_image(image(tmp_path / name, size, mode), (28, 28, 1))
        assert pixels.shape == (28, 28, 1) and pixels.dtype == np.uint8


@pytest.mark.parametrize("stage", ["download", "train"])
def test_a_stage_run_by_a_python_without_digitlab_says_so_in_one_line(project: Path, stage: str) -> None:
    """`dvc repro` outside the activated environment runs the stages with another `python` from PATH: a traceback
    ending in ModuleNotFoundError. (``-S``: this Python without its site-packages, where digitlab is installed.)"""
    one_line_exit_2([sys.executable, "-S", "-m", f"pipeline.{stage}", "--params", "params.yaml"], project,
                    "has no digitlab installed: run the pipeline in the project's environment")  # fmt: skip


def test_dvc_outside_the_environment_runs_a_stage_that_says_so_in_one_line(tmp_path: Path) -> None:
    """A real `dvc repro` whose `python` on PATH has no digitlab (a Python started without its site-packages)."""
    project = copy_project(tmp_path / "project")
    shim = tmp_path / "other-python"
    shim.mkdir()
    (shim / "python").write_text(f"#!/bin/sh\nexec {sys.executable} -S \"$@\"\n")
    (shim / "python").chmod(0o755)
    env = user_env()
    env["PATH"] = f"{shim}:{env['PATH']}"
    done = subprocess.run([str(BIN / "dvc"), "repro", "download"], cwd=project, env=env, capture_output=True, text=True, timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode != 0 and "Traceback" not in output, output
    lines = [line for line in output.splitlines() if line.startswith(LINE)]
    assert len(lines) == 1 and f"python={sys.executable}" in lines[0] and "has no digitlab installed" in lines[0], output
    assert "exited with 2" in output, output
