"""Fixtures for the evaluation, report and predict tests: tiny real Keras models in the train stage's format.

Loaded as a pytest plugin (``pytest_plugins``) so that the session-scoped
models are fitted once per test session, however many modules use them.
Every file is written through the stages' own contracts
(:class:`~digitlab.training.outputs.TrainOutputs`,
:class:`~digitlab.evaluation.outputs.EvaluationOutputs`), so the fixtures
cannot drift from what the stages write.
"""

from __future__ import annotations

import dataclasses
import functools
import shutil
from pathlib import Path

import numpy as np
import pytest

from digitlab.training.outputs import RunInfo, TrainMetrics, TrainOutputs, TrainResult

MODEL_NAMES = ("linear", "mlp", "cnn")
ROOT = Path(__file__).resolve().parents[1]
BATCH_SIZE = 64


@functools.cache
def settings(*overrides: str):
    """The project's configuration (conf/) for the tiny digits data, validated, with Hydra overrides."""
    from digitlab.config import compose
    from digitlab.settings import load_settings

    return load_settings(compose(["dataset=digits", *overrides], ROOT))


def layout(root: Path, *overrides: str):
    """Where the stages read and write in a project at ``root``."""
    from digitlab.settings import Layout

    return Layout.for_settings(settings(*overrides), root)


def evaluation_dir(root: Path, recipe: str) -> Path:
    """Where the evaluate stage writes ``recipe``'s results in a project at ``root``."""
    return layout(root).report_dir(recipe)


def _build(name: str, image_shape: tuple[int, int, int], num_classes: int):
    import keras
    from keras import layers

    body = {
        "linear": [layers.Flatten(), layers.Dense(num_classes, activation="softmax")],
        "mlp": [layers.Flatten(), layers.Dense(16, activation="relu"), layers.Dense(num_classes, activation="softmax")],
        "cnn": [layers.Conv2D(4, 3, activation="relu"), layers.Flatten(), layers.Dense(num_classes, activation="softmax")],
    }[name]
    model = keras.Sequential([keras.Input(image_shape), layers.Rescaling(1 / 255), *body], name=name)
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def _scores(model, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    result = model.evaluate(x.astype("float32"), y, batch_size=256, verbose=0, return_dict=True)
    return float(result["loss"]), float(result["accuracy"])


def _history_rows(before: dict[str, float], fitted: dict[str, list[float]], steps_per_epoch: int) -> list[dict[str, float]]:
    """history.csv's rows as the train stage writes them: row 0 before training, then one per epoch."""
    rows = [{"epoch": 0, "step": 0, **before, "learning_rate": 0.01}]
    for index in range(len(fitted["loss"])):
        scores = {key: float(fitted[key][index]) for key in ("loss", "accuracy", "val_loss", "val_accuracy")}
        rows.append({"epoch": index + 1, "step": (index + 1) * steps_per_epoch, **scores, "learning_rate": 0.01})
    return rows


def write_trained(outputs: TrainOutputs, model, splits: dict[str, tuple[np.ndarray, np.ndarray]], dataset: str) -> None:
    """Fit ``model`` briefly and write its train-stage outputs through :class:`TrainOutputs`."""
    from digitlab.models import save_model

    (x_train, y_train), (x_val, y_val) = splits["train"], splits["val"]
    loss, accuracy = _scores(model, x_train, y_train)
    val_loss, val_accuracy = _scores(model, x_val, y_val)
    before = {"loss": loss, "accuracy": accuracy, "val_loss": val_loss, "val_accuracy": val_accuracy}
    fit = model.fit(x_train.astype("float32"), y_train, validation_data=(x_val.astype("float32"), y_val), epochs=3, batch_size=BATCH_SIZE, verbose=0)
    save_model(model, outputs.model)
    steps_per_epoch = int(np.ceil(len(y_train) / BATCH_SIZE))
    rows = _history_rows(before, fit.history, steps_per_epoch)
    outputs.write_history(rows)
    best = int(np.argmax(fit.history["val_accuracy"]))
    metrics = TrainMetrics(
        best_epoch=best + 1, epochs=len(rows) - 1, steps=int(rows[-1]["step"]), stopped_early=False, train_time_s=1.0,
        initial_val_accuracy=val_accuracy, val_accuracy=float(fit.history["val_accuracy"][best]),
        val_loss=float(fit.history["val_loss"][best]), trainable_params=int(model.count_params()), images_per_s=1000.0,
    )  # fmt: skip
    run = RunInfo(model=outputs.recipe, dataset=dataset, run_id=None, experiment_id=None, tracking_uri=None, model_uri=None)
    outputs.write_result(TrainResult(metrics, run))


@pytest.fixture(scope="session")
def trained_models(tiny_prepared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``models/<name>/`` (model.keras, history.csv, train.json, run.json) for linear, mlp and cnn, fitted on 8x8 digits.

    run.json has no MLflow run id; :func:`with_mlflow_runs` adds real runs to a copy.
    """
    import keras

    from digitlab.data.prepared import load_meta, load_split

    keras.utils.set_random_seed(0)
    meta = load_meta(tiny_prepared)
    splits = {split: load_split(tiny_prepared, split) for split in ("train", "val")}
    models_dir = tmp_path_factory.mktemp("trained") / "models"
    for name in MODEL_NAMES:
        write_trained(TrainOutputs(models_dir / name, name), _build(name, meta.image_shape, meta.num_classes), splits, meta.dataset)
    return models_dir


def update_run(outputs: TrainOutputs, **changes) -> None:
    """Change fields of a recipe's run.json (through the train stage's contract)."""
    result = outputs.read_result()
    outputs.write_result(dataclasses.replace(result, run=dataclasses.replace(result.run, **changes)))


def with_mlflow_runs(models_dir: Path, destination: Path, experiment: str) -> dict[str, str]:
    """Copy ``models_dir`` to ``destination`` with one finished MLflow run per model recorded in run.json.

    Uses the current tracking URI (the ``mlflow_uri`` fixture). Returns {model: run_id}.
    """
    import mlflow

    from digitlab import tracking

    shutil.copytree(models_dir, destination)
    # As the train stage finds or creates it (artifacts beside a SQLite store).
    experiment_id = tracking.experiment_id(tracking.TrackingSettings(experiment=experiment), "digits")
    mlflow.set_experiment(experiment_id=experiment_id)
    run_ids = {}
    for name in MODEL_NAMES:
        with mlflow.start_run(experiment_id=experiment_id, run_name=f"train-{name}") as active:
            mlflow.log_metric("val_accuracy", 0.5)
        update_run(TrainOutputs(destination / name, name), run_id=active.info.run_id, experiment_id=experiment_id, tracking_uri=mlflow.get_tracking_uri())
        run_ids[name] = active.info.run_id
    return run_ids


def make_project(root: Path, tiny_prepared: Path, trained_models: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """A project layout (data/prepared, models/) with the tiny models and their MLflow runs; returns run ids."""
    shutil.copytree(tiny_prepared, root / "data" / "prepared")
    run_ids = with_mlflow_runs(trained_models, root / "models", "digitlab-digits")
    monkeypatch.setenv("DVC_ROOT", str(root))
    return run_ids


@pytest.fixture(scope="session")
def evaluated(tiny_prepared, trained_models, tmp_path_factory) -> tuple[Path, dict[str, str], str]:
    """All three tiny models evaluated once in a project dir with its own MLflow store: (root, run ids, store URI)."""
    import mlflow

    from digitlab.evaluation import evaluate

    root = tmp_path_factory.mktemp("evaluated")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)
        run_ids = make_project(root, tiny_prepared, trained_models, patch)
        config, where = settings(), layout(root)
        for name in MODEL_NAMES:
            evaluate.run(config, where, name)
    return root, run_ids, uri


@pytest.fixture(scope="session")
def reported(evaluated) -> tuple[Path, dict[str, str], str, str]:
    """The report stage over ``evaluated``, with the best model logged to MLflow and registered as @champion.

    Returns (root, run ids, store URI, best model name).
    """
    import mlflow

    from digitlab.evaluation.outputs import EvaluationOutputs
    from digitlab.models import load_model
    from digitlab.report import build

    root, run_ids, uri = evaluated
    accuracies = {name: EvaluationOutputs(evaluation_dir(root, name), name).read_metrics().accuracy for name in MODEL_NAMES}
    best = max(accuracies, key=accuracies.get)
    overrides = ("report.register_alias=champion", "report.registered_model_name=digitlab-digits", "tracking.ui_url=http://127.0.0.1:5000")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        patch.setenv("DVC_ROOT", str(root))
        mlflow.set_tracking_uri(uri)
        # The train stage logs its model the same way (mlflow.keras.log_model, artifact "model").
        trained = TrainOutputs(root / "models" / best, best)
        with mlflow.start_run(run_id=run_ids[best]):
            info = mlflow.keras.log_model(load_model(trained.model), name="model")
        update_run(trained, model_uri=info.model_uri)
        build.run(settings(*overrides), layout(root, *overrides))
    return root, run_ids, uri, best


# --- fake stage outputs (no Keras): for report tests over any set of recipes -------------------


def write_fake_training(outputs: TrainOutputs, dataset: str, epochs: int = 3) -> None:
    """A recipe's train-stage outputs without a model (the report reads no model), through :class:`TrainOutputs`."""
    rows = [
        {"epoch": e, "step": 10 * e, "loss": 2.3 / (e + 1), "accuracy": 0.1 + 0.25 * e, "val_loss": 2.3 / (e + 1) + 0.1,
         "val_accuracy": 0.1 + 0.2 * e, "learning_rate": 0.01}
        for e in range(epochs + 1)
    ]  # fmt: skip
    outputs.write_history(rows)
    metrics = TrainMetrics(
        best_epoch=epochs, epochs=epochs, steps=10 * epochs, stopped_early=False, train_time_s=1.0, initial_val_accuracy=0.1,
        val_accuracy=rows[-1]["val_accuracy"], val_loss=rows[-1]["val_loss"], trainable_params=100, images_per_s=1000.0,
    )  # fmt: skip
    outputs.write_result(TrainResult(metrics, RunInfo(outputs.recipe, dataset, None, None, None, None)))


def write_fake_evaluation(outputs, meta, y_true: np.ndarray, seed: int) -> None:
    """A recipe's evaluate-stage outputs from random predictions (better with a higher ``seed``), through
    :class:`~digitlab.evaluation.outputs.EvaluationOutputs`; the figures that need no model are drawn."""
    from digitlab.evaluation import metrics
    from digitlab.evaluation.figures import FIGURES, EvaluationData
    from digitlab.evaluation.outputs import EvaluationMetrics, Predictions

    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(len(y_true), meta.num_classes))
    logits[np.arange(len(y_true)), y_true] += 1.0 + 0.5 * seed
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    y_pred = probabilities.argmax(axis=1)
    summary = metrics.summarize(y_true, probabilities, top_k=5, confidence_level=0.95)
    outputs.write_predictions(Predictions(y_true, y_pred, probabilities))
    outputs.write_confusion(y_true, y_pred, meta.class_names)
    outputs.write_classification_report(metrics.classification_report(y_true, y_pred, meta.class_names))
    data = EvaluationData(outputs.recipe, meta, np.zeros((len(y_true), *meta.image_shape), np.uint8), y_true, probabilities, None, None, None)
    for key in ("confusion", "roc"):
        outputs.write_figure(FIGURES[key], FIGURES[key].draw(data))
    outputs.write_metrics(
        EvaluationMetrics(**summary, loss=summary["log_loss"], top_k=5, confidence_level=0.95, throughput_images_per_s=1000.0, n_params=100)
    )


def fake_project(root: Path, tiny_prepared: Path, recipes: list[str]) -> None:
    """A project whose recipes were trained and evaluated (fakes written through the stages' contracts)."""
    from digitlab.data.prepared import load_meta, load_split
    from digitlab.evaluation.outputs import EvaluationOutputs

    shutil.copytree(tiny_prepared, root / "data" / "prepared")
    meta = load_meta(root / "data" / "prepared")
    _, y_test = load_split(root / "data" / "prepared", "test")
    for seed, recipe in enumerate(recipes):
        write_fake_training(TrainOutputs(root / "models" / recipe, recipe), meta.dataset)
        write_fake_evaluation(EvaluationOutputs(evaluation_dir(root, recipe), recipe), meta, y_test, seed)
