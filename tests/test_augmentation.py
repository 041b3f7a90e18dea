"""Data augmentation (conf/augmentation/, digitlab.training.augmentation): chosen per recipe, by default
light for your own images; random transforms in the training path only, seeded; flips only where the
dataset allows them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from digitlab.errors import ConfigError
from digitlab.training.augmentation import augmentation_layer

from .conftest import ROOT, tiny_settings


def layer_names(layer) -> list[str]:
    return [type(sublayer).__name__ for sublayer in layer.layers] if layer is not None else []


def test_none_by_default_light_for_your_own_images_and_any_recipe_can_choose():
    default = tiny_settings()
    assert {name: recipe.augmentation.name for name, recipe in default.models.items()} == {"linear": "none", "mlp": "none", "cnn": "none"}
    folder = tiny_settings("dataset=folder")
    assert {recipe.augmentation.name for recipe in folder.models.values()} == {"light"}
    chosen = tiny_settings("dataset=folder", "augmentation@models.cnn.augmentation=strong", "augmentation@models.linear.augmentation=none")
    assert (chosen.models["cnn"].augmentation.name, chosen.models["linear"].augmentation.name, chosen.models["mlp"].augmentation.name) == ("strong", "none", "light")
    assert chosen.models["cnn"].augmentation.rotation_deg == 20


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("models.cnn.augmentation.rotation_deg=200", "models.cnn.augmentation.rotation_deg=200 is not valid: expected a number less than or equal to 180"),
        ("models.mlp.augmentation.zoom=1.5", "models.mlp.augmentation.zoom=1.5 is not valid: expected a number less than 1"),
    ],
)
def test_a_bad_augmentation_setting_is_one_line_naming_it(override: str, message: str):
    with pytest.raises(ConfigError) as error:
        tiny_settings(override)
    assert str(error.value) == message


def test_flips_only_where_a_mirror_keeps_the_label():
    strong = tiny_settings("augmentation@models.cnn.augmentation=strong").models["cnn"].augmentation
    assert tiny_settings().dataset.flip_keeps_label is False  # digits
    assert tiny_settings("dataset=fashion_mnist").dataset.flip_keeps_label is True
    assert layer_names(augmentation_layer(strong, flip_allowed=False, seed=1)) == ["RandomRotation", "RandomZoom", "RandomTranslation", "RandomContrast"]
    assert layer_names(augmentation_layer(strong, flip_allowed=True, seed=1))[0] == "RandomFlip"
    assert augmentation_layer(tiny_settings().models["cnn"].augmentation, flip_allowed=True, seed=1) is None  # none: no layer at all


def test_the_transforms_act_in_training_only_and_are_seeded():
    import keras

    from digitlab.models import build_model

    settings = tiny_settings("augmentation@models.cnn.augmentation=strong")
    recipe = settings.models["cnn"]
    images = np.random.default_rng(0).integers(0, 256, (16, 8, 8, 1)).astype("float32")

    def model(seed: int):
        keras.utils.set_random_seed(0)
        return build_model(recipe.model, (8, 8, 1), 10, "models.cnn.model", augmentation_layer(recipe.augmentation, False, seed))

    augmented = model(seed=7)
    keras.utils.set_random_seed(0)
    plain = build_model(recipe.model, (8, 8, 1), 10)
    plain.set_weights(augmented.get_weights())  # the augmentation layers have no weights
    np.testing.assert_allclose(augmented.predict(images, verbose=0), plain.predict(images, verbose=0), rtol=1e-6)
    trained = augmented(images, training=True).numpy()
    assert not np.allclose(trained, plain(images, training=True).numpy()), "the transforms did nothing in training"
    np.testing.assert_allclose(model(seed=7)(images, training=True).numpy(), trained, rtol=1e-6)  # the same seed: the same transforms


@pytest.mark.slow
def test_a_training_with_augmentation_saves_a_model_that_predicts_unchanged(tiny_prepared: Path, tmp_path: Path, monkeypatch):
    from digitlab.models import load_model
    from digitlab.training.loop import train

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "prepared").symlink_to(tiny_prepared)
    monkeypatch.setattr(sys, "argv", [str(ROOT / "pipeline" / "train.py")])
    settings = tiny_settings(
        "model=cnn", "augmentation@models.cnn.augmentation=light", f"paths.data={tmp_path / 'data'}",
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}", f"output_dir={tmp_path / 'out'}", "tracking.log_models=false",
        "tracking.system_metrics=false",
    )  # fmt: skip
    result = train(settings)
    assert result.metrics.val_accuracy > 0.5, result.metrics
    model = load_model(tmp_path / "out" / "model.keras")  # safe_mode: the augmentation layers are plain Keras
    assert "augmentation" in [layer.name for layer in model.layers]
    with np.load(tiny_prepared / "val.npz") as split:
        x, y = split["x"].astype("float32"), split["y"]
    first, second = model.predict(x, verbose=0), model.predict(x, verbose=0)
    np.testing.assert_array_equal(first, second)  # inference sees the images as they are
    assert abs(float((first.argmax(axis=1) == y).mean()) - result.metrics.val_accuracy) < 1e-6


def test_a_small_collection_trains_at_least_min_train_steps_and_stops_no_sooner():
    training = tiny_settings().models["cnn"].training  # batch 64, 3 epochs
    assert tiny_settings("dataset=folder").dataset.min_train_steps == 500
    plan = training.plan(490)  # 8 steps a pass: 24 steps
    assert (plan.total_steps, plan.evaluations, plan.first_stop) == (24, 3, 0)
    small = training.plan(490, min_steps=500)  # stretched: still 3 evaluations, of 167 steps (the last 166), not 63 of 8
    assert (small.total_steps, small.steps_per_eval, small.evaluations, small.first_stop) == (500, 167, 3, 3)
    every_step = training.model_copy(update={"eval_every_steps": 100}).plan(490, min_steps=500)  # an explicit period is kept
    assert (every_step.total_steps, every_step.steps_per_eval, every_step.evaluations) == (500, 100, 5)
    large = training.plan(50_000, min_steps=500)  # 782 steps a pass: epochs decide
    assert (large.total_steps, large.first_stop) == (3 * 782, 1)


@pytest.mark.slow
def test_your_own_folder_trains_with_light_augmentation_for_at_least_500_steps(project: Path):
    """The real stages by hand on a small folder: preprocess carries min_train_steps into meta.json, train runs 500 steps."""
    import json
    import os

    from PIL import Image

    rng = np.random.default_rng(0)
    for label in ("a", "b", "c"):
        for i in range(12):
            (project / "data" / "images" / label).mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(project / "data" / "images" / label / f"{i}.png")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}"}
    data = ["dataset=folder", "dataset.image_shape=[8,8,1]"]
    for stage in ("download", "preprocess"):
        subprocess.run([sys.executable, "-m", f"pipeline.{stage}", *data], cwd=project, env=env, check=True, capture_output=True)
    meta = json.loads((project / "data" / "prepared" / "meta.json").read_text())
    assert meta["min_train_steps"] == 500 and meta["flip_keeps_label"] is False
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.train", "model=linear", *data, "models.linear.training.epochs=1", f"output_dir={project / 'out'}",
         "tracking.log_models=false", "tracking.system_metrics=false"],
        cwd=project, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    trained = json.loads((project / "out" / "train.json").read_text())
    assert (trained["steps"], trained["epochs"]) == (500, 1), "500 steps in the one evaluation its epochs give, not 500 evaluations"
    from digitlab.models import load_model

    assert "augmentation" in [layer.name for layer in load_model(project / "out" / "model.keras").layers]
