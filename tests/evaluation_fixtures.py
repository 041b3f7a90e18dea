"""Fixtures for the evaluation, report and predict tests: tiny real Keras models in the train stage's format.

Loaded as a pytest plugin (``pytest_plugins``) so that the session-scoped
models are fitted once per test session, however many modules use them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

MODEL_NAMES = ("linear", "mlp", "cnn")


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


@pytest.fixture(scope="session")
def trained_models(tiny_prepared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``models/<name>/{model.keras,history.csv,train.json,run.json}`` for linear, mlp and cnn, fitted on 8x8 digits.

    run.json has no MLflow run id; :func:`with_mlflow_runs` adds real runs to a copy.
    """
    import keras

    from digitlab.data.prepared import load_meta, load_split

    keras.utils.set_random_seed(0)
    meta = load_meta(tiny_prepared)
    x_train, y_train = load_split(tiny_prepared, "train")
    x_val, y_val = load_split(tiny_prepared, "val")
    models_dir = tmp_path_factory.mktemp("trained") / "models"
    for name in MODEL_NAMES:
        model = _build(name, meta.image_shape, meta.num_classes)
        fit = model.fit(x_train.astype("float32"), y_train, validation_data=(x_val.astype("float32"), y_val), epochs=3, batch_size=64, verbose=0)
        out = models_dir / name
        out.mkdir(parents=True)
        model.save(out / "model.keras")
        epochs = len(fit.history["loss"])
        history = pd.DataFrame(
            {
                "epoch": np.arange(1, epochs + 1),
                "step": np.arange(1, epochs + 1) * int(np.ceil(len(y_train) / 64)),
                **{key: fit.history[key] for key in ("loss", "accuracy", "val_loss", "val_accuracy")},
                "learning_rate": 0.01,
            }
        )
        history.to_csv(out / "history.csv", index=False)
        best = int(np.argmax(fit.history["val_accuracy"]))
        run_info = {"model": name, "dataset": meta.dataset, "run_id": None, "experiment_id": None, "tracking_uri": None, "model_uri": None}
        (out / "run.json").write_text(json.dumps(run_info), encoding="utf-8")
        info = {
            "best_epoch": best + 1, "epochs": epochs, "steps": int(history["step"].iloc[-1]), "stopped_early": False,
            "train_time_s": 1.0, "initial_val_accuracy": 0.1, "val_accuracy": fit.history["val_accuracy"][best],
            "val_loss": fit.history["val_loss"][best], "params": int(model.count_params()), "images_per_s": 1000.0,
        }
        (out / "train.json").write_text(json.dumps(info), encoding="utf-8")
    return models_dir


def with_mlflow_runs(models_dir: Path, destination: Path, experiment: str) -> dict[str, str]:
    """Copy ``models_dir`` to ``destination`` with one finished MLflow run per model recorded in run.json.

    Uses the current tracking URI (the ``mlflow_uri`` fixture). Returns {model: run_id}.
    """
    import mlflow

    shutil.copytree(models_dir, destination)
    experiment_id = mlflow.set_experiment(experiment).experiment_id
    run_ids = {}
    for name in MODEL_NAMES:
        with mlflow.start_run(run_name=f"train-{name}") as active:
            mlflow.log_metric("val_accuracy", 0.5)
        path = destination / name / "run.json"
        info = json.loads(path.read_text(encoding="utf-8"))
        info.update(run_id=active.info.run_id, experiment_id=experiment_id, tracking_uri=mlflow.get_tracking_uri())
        path.write_text(json.dumps(info), encoding="utf-8")
        run_ids[name] = active.info.run_id
    return run_ids


ROOT = Path(__file__).resolve().parents[1]


def config(*overrides: str):
    """The project's params.yaml for the tiny digits data, with overrides."""
    from digitlab.config import load_params

    return load_params(ROOT / "params.yaml", ["dataset.name=digits", *overrides])


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
        for name in MODEL_NAMES:
            evaluate.run(config(f"model={name}"))
    return root, run_ids, uri


@pytest.fixture(scope="session")
def reported(evaluated) -> tuple[Path, dict[str, str], str, str]:
    """The report stage over ``evaluated``, with the best model logged to MLflow and registered as @champion.

    Returns (root, run ids, store URI, best model name).
    """
    import keras
    import mlflow

    from digitlab.report import build

    root, run_ids, uri = evaluated
    accuracies = {name: json.loads((root / "reports" / name / "metrics.json").read_text())["accuracy"] for name in MODEL_NAMES}
    best = max(accuracies, key=accuracies.get)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        patch.setenv("DVC_ROOT", str(root))
        mlflow.set_tracking_uri(uri)
        # The train stage logs its model the same way (mlflow.keras.log_model, artifact "model").
        with mlflow.start_run(run_id=run_ids[best]):
            info = mlflow.keras.log_model(keras.models.load_model(root / "models" / best / "model.keras"), name="model")
        path = root / "models" / best / "run.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "model_uri": info.model_uri}))
        build.run(config("report.register_alias=champion", "report.registered_model_name=digitlab-digits", "tracking.ui_url=http://127.0.0.1:5000"))
    return root, run_ids, uri, best
