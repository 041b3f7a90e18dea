"""The train stage: validate, build, fit with early stopping and checkpoints, save, track.

Outputs in ``cfg.output_dir`` (else ``<root>/<paths.models>/<model>``):
``model.keras`` (best weights; raw pixels in, probabilities out), ``history.csv``
(one row per evaluation; row 0 is before training, its training loss and accuracy
on a sample of up to 5,000 images), ``train.json`` (metrics
for DVC), ``curves.png`` and ``checkpoints/`` (see
:mod:`digitlab.training.checkpoints`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from digitlab import tracking
from digitlab.config import atomic_write_text, project_root
from digitlab.data.prepared import load_meta, load_split
from digitlab.training.settings import Recipe, recipe_from_config

log = logging.getLogger("digitlab.training")


# Training images the untrained model is scored on for history row 0 (the split is
# already shuffled). No full pass: on 55,000 CNN inputs it costs a third of an epoch,
# and a sample tells the same (about chance).
INITIAL_TRAIN_SAMPLE = 5000

# Identifiers, not measurements: they go to run.json, the numbers to train.json.
RUN_KEYS = ("model", "dataset", "run_id", "experiment_id", "tracking_uri", "model_uri")


@dataclass(frozen=True)
class TrainResult:
    """What ``train.json`` and ``run.json`` hold together."""

    model: str
    dataset: str
    run_id: str
    experiment_id: str
    tracking_uri: str
    model_uri: str | None
    best_epoch: int
    epochs: int
    steps: int
    stopped_early: bool
    train_time_s: float
    initial_val_accuracy: float
    val_accuracy: float
    val_loss: float
    trainable_params: int
    images_per_s: float

    def to_json(self) -> dict:
        return asdict(self)

    def metrics_json(self) -> dict:
        """The numbers of ``train.json`` (DVC metrics: ``dvc metrics show`` stays a table of numbers)."""
        return {key: value for key, value in self.to_json().items() if key not in RUN_KEYS}

    def run_json(self) -> dict:
        """Where the run lives: ``run.json`` (MLflow ids and URIs)."""
        return {key: value for key, value in self.to_json().items() if key in RUN_KEYS}


def output_dir(cfg: DictConfig, model: str) -> Path:
    if cfg.get("output_dir"):
        return Path(cfg.output_dir)
    return project_root() / cfg.paths.models / model


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Treat SIGTERM (``kill``, a stopped container) like Ctrl-C, so the run is closed properly."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"stopped by signal {signal.Signals(signum).name}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def train(cfg: DictConfig, callbacks: Sequence = ()) -> TrainResult:
    """Train the recipe ``cfg.model`` on ``<paths.data>/prepared``; resume it when it was interrupted.

    ``callbacks`` are extra Keras callbacks, run after digitlab's own.
    """
    recipe = recipe_from_config(cfg)
    prepared = project_root() / cfg.paths.data / "prepared"
    meta = load_meta(prepared)
    uri = tracking.configure(cfg.tracking)
    import keras
    import tensorflow as tf

    from digitlab.models import build_model

    keras.utils.set_random_seed(int(cfg.seed))
    if recipe.training["deterministic"]:
        tf.config.experimental.enable_op_determinism()
    # Built before any output or MLflow run exists: a model that does not fit the input fails here.
    model = build_model(recipe.model, meta.image_shape, meta.num_classes, f"models.{recipe.name}.model")

    from digitlab.training.checkpoints import CheckpointDir, RunState, fingerprint

    out = output_dir(cfg, recipe.name)
    checkpoints = CheckpointDir(out / "checkpoints")
    run_fingerprint = fingerprint(asdict(recipe), meta.to_json(), int(cfg.seed))
    state = checkpoints.resumable(run_fingerprint) if recipe.training["resume"] else None
    if state is not None:
        log.info("resuming %s from %s: evaluation %d, step %d", recipe.name, checkpoints.last, state.epoch, state.step)
        model = keras.models.load_model(checkpoints.last)
    else:
        checkpoints.clear()
        state = RunState(run_fingerprint)
    resumed_run = state.run_id if state.run_id and tracking.run_exists(state.run_id) else None

    with _sigterm_as_interrupt():
        run = tracking.start_run(cfg, recipe.name, meta.dataset, resumed_run)
        try:
            state.run_id = run.info.run_id
            if resumed_run is None:
                _log_config(cfg)
            result = _fit_and_save(cfg, recipe, model, meta, prepared, out, checkpoints, state, uri, run, callbacks)
        except BaseException as error:
            tracking.end_run_failed(error)
            raise
        import mlflow

        mlflow.end_run()
    return result


def _log_config(cfg: DictConfig) -> None:
    import mlflow

    mlflow.log_params(tracking.flat_params(cfg))
    mlflow.log_text(OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")


def _fit_and_save(cfg, recipe: Recipe, model, meta, prepared: Path, out: Path, checkpoints, state, uri: str, run, extra_callbacks) -> TrainResult:
    import keras
    import mlflow
    import numpy as np

    from digitlab.models import build_optimizer
    from digitlab.training import callbacks as cb
    from digitlab.training.curves import plot_curves
    from digitlab.training.inputs import evaluation_dataset, training_dataset

    training = recipe.training
    x_train, y_train = load_split(prepared, "train")
    x_val, y_val = load_split(prepared, "val")
    batch_size = int(training["batch_size"])
    train_size = len(y_train)
    steps_per_eval, total_epochs, total_steps = recipe.schedule(train_size)
    initial_sample = (x_train[:INITIAL_TRAIN_SAMPLE].copy(), y_train[:INITIAL_TRAIN_SAMPLE].copy()) if state.epoch == 0 else None
    train_data = training_dataset(x_train, y_train, batch_size, int(training["shuffle_buffer"]), int(cfg.seed))
    # tf.data keeps its own copy of the images: dropping ours takes a whole copy
    # of the training set off the process's peak memory (benchmarks/TUNING.md).
    del x_train, y_train
    val_data = evaluation_dataset(x_val, y_val, max(batch_size, 256))
    history_path = out / "history.csv"

    def log_metrics(metrics: dict[str, float], step: int) -> None:
        mlflow.log_metrics(metrics, step=step)

    if state.epoch == 0:
        model.compile(
            optimizer=build_optimizer(recipe.optimizer, total_steps, f"models.{recipe.name}.optimizer"),
            loss="sparse_categorical_crossentropy",
            metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        )
        before_val = model.evaluate(val_data, verbose=0, return_dict=True)
        before_train = model.evaluate(evaluation_dataset(*initial_sample, max(batch_size, 256)), verbose=0, return_dict=True)
        row = {
            "epoch": 0, "step": 0, "loss": float(before_train["loss"]), "accuracy": float(before_train["accuracy"]),
            "val_loss": float(before_val["loss"]), "val_accuracy": float(before_val["accuracy"]),
            "learning_rate": cb.current_learning_rate(model),
        }  # fmt: skip
        state.history = [row]
        state.initial_val_accuracy, state.initial_val_loss = row["val_accuracy"], row["val_loss"]
        cb.write_history(history_path, state.history)
        log_metrics({key: value for key, value in row.items() if key not in ("epoch", "step")}, 0)
        log.info("before training: val_accuracy %.4f val_loss %.4f", row["val_accuracy"], row["val_loss"])
    else:
        # The history file may be ahead of the checkpoint when the run was killed in between.
        cb.write_history(history_path, state.history)

    own_callbacks = [
        cb.StopOnNaN(recipe),
        cb.RecordEvaluation(state, history_path, total_epochs, log_metrics),
        cb.KeepBestAndStopEarly(state, recipe, checkpoints),
        cb.SaveLastCheckpoint(state, checkpoints, int(training["checkpoint"]["every_epochs"]), total_epochs),
    ]
    if total_steps % steps_per_eval:
        own_callbacks.append(cb.StopAtStep(total_steps))
    steps_before = state.step
    if state.epoch < total_epochs and not state.stopped_early:
        log.info(
            "training %s on %s: %d train / %d validation images, %d evaluations of %d steps (batch %d)",
            recipe.name, meta.dataset, train_size, len(y_val), total_epochs, steps_per_eval, batch_size,
        )  # fmt: skip
        started = time.perf_counter()
        model.fit(
            train_data,
            epochs=total_epochs,
            initial_epoch=state.epoch,
            steps_per_epoch=steps_per_eval,
            validation_data=val_data,
            callbacks=[*own_callbacks, *extra_callbacks],
            shuffle=False,  # the tf.data pipeline shuffles, with the run's seed
            verbose=0,
        )
        fit_time = time.perf_counter() - started
    else:
        fit_time = 0.0

    final = keras.models.load_model(checkpoints.best) if training["early_stopping"]["restore_best_weights"] and checkpoints.best.is_file() else model
    final_val = final.evaluate(val_data, verbose=0, return_dict=True)
    checkpoints.save_model(final, out / "model.keras")
    figure = plot_curves(state.history, f"{recipe.name} on {meta.dataset}")
    figure.savefig(out / "curves.png", dpi=110)

    mlflow.log_metrics({"best_val_accuracy": float(final_val["accuracy"]), "best_val_loss": float(final_val["loss"])})
    mlflow.log_artifact(str(out / "curves.png"))
    mlflow.log_artifact(str(out / "history.csv"))
    if checkpoints.best.is_file():
        mlflow.log_artifact(str(checkpoints.best), "checkpoints")
    model_uri = _log_model(final, x_val[:8]) if cfg.tracking.get("log_models", True) else None

    trained_steps = state.step - steps_before
    result = TrainResult(
        model=recipe.name,
        dataset=meta.dataset,
        run_id=run.info.run_id,
        experiment_id=run.info.experiment_id,
        tracking_uri=uri,
        model_uri=model_uri,
        best_epoch=state.best_epoch,
        epochs=state.epoch,
        steps=state.step,
        stopped_early=state.stopped_early,
        train_time_s=round(state.train_time_s, 3),
        initial_val_accuracy=float(state.initial_val_accuracy),
        val_accuracy=float(final_val["accuracy"]),
        val_loss=float(final_val["loss"]),
        trainable_params=int(sum(np.prod(w.shape) for w in final.trainable_weights)),
        images_per_s=round(trained_steps * int(training["batch_size"]) / fit_time, 1) if fit_time > 0 else 0.0,
    )
    atomic_write_text(out / "run.json", json.dumps(result.run_json(), indent=2) + "\n")
    atomic_write_text(out / "train.json", json.dumps(result.metrics_json(), indent=2) + "\n")
    state.completed = True
    checkpoints.save_state(state)
    log.info(
        "%s: val_accuracy %.4f (best evaluation %d of %d, %d steps, %.1fs); MLflow run %s",
        recipe.name, result.val_accuracy, result.best_epoch, result.epochs, result.steps, result.train_time_s, result.run_id,
    )  # fmt: skip
    return result


def _log_model(model, sample) -> str:
    """Log ``model`` as an MLflow model with an input signature; returns its URI."""
    import keras
    import mlflow
    import numpy as np
    import tensorflow as tf
    from mlflow.models import infer_signature

    sample = np.asarray(sample, dtype=np.float32)
    signature = infer_signature(sample, model.predict(sample, verbose=0))
    # Named requirements: MLflow's inference would import the model in a subprocess (slow).
    requirements = [f"tensorflow=={tf.__version__}", f"keras=={keras.__version__}", f"numpy=={np.__version__}"]
    info = mlflow.keras.log_model(model, name="model", signature=signature, pip_requirements=requirements)
    return info.model_uri
