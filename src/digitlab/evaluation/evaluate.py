"""The evaluate stage: one trained model measured on the test split.

Reads ``<paths.models>/<model>/`` (model.keras with the best weights,
history.csv, train.json, run.json) and the prepared test split; writes to
``<paths.reports>/<model>/``:

- ``metrics.json``: the headline numbers (DVC metrics, flat);
- ``classification_report.json``: per-class precision, recall, F1, support;
- ``confusion.csv``: one row per test image, ``actual,predicted`` class names
  (DVC's confusion template);
- ``predictions.npz``: ``y_true``, ``y_pred``, ``probabilities`` (the report's
  McNemar tests compare models image by image);
- ``figures/*.png``: confusion matrices (counts, row-normalised), training
  curves, ROC curves, misclassified images, learned weights.

Everything is also logged to the model's MLflow training run (metrics
prefixed ``test_``, files under ``evaluation/``, the confusion matrix as a
table), which stays FINISHED.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from digitlab.config import atomic_write_text, project_root
from digitlab.data.prepared import Meta, load_meta, load_split
from digitlab.errors import ConfigError, DigitlabError, require_choice, require_non_negative, require_positive
from digitlab.evaluation import metrics, plots

log = logging.getLogger(__name__)

TRAIN_OUTPUTS = {
    "model": "model.keras",
    "history": "history.csv",
    "train_info": "train.json",
    "run_info": "run.json",
}
HISTORY_COLUMNS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy")
FIGURES = {
    "confusion": "confusion_matrix.png",
    "confusion_normalized": "confusion_matrix_normalized.png",
    "curves": "training_curves.png",
    "roc": "roc.png",
    "errors": "misclassified.png",
    "weights": "weights.png",
}
# Layers that only reshape or rescale pixels: the first learned layer comes after them.
_PASS_THROUGH_LAYERS = {"InputLayer", "Rescaling", "Normalization", "Flatten", "Reshape", "Resizing", "CenterCrop"}
MAX_WEIGHT_MAPS = 50
GRID_COLUMNS = 3


@dataclass(frozen=True)
class TrainOutputs:
    """Where the train stage left one model's files."""

    model: Path
    history: Path
    train_info: Path
    run_info: Path

    def read_info(self) -> dict:
        """train.json's numbers and run.json's MLflow ids, as one record."""
        return read_train_info(self.train_info.parent)

    @classmethod
    def locate(cls, directory: Path, name: str) -> TrainOutputs:
        paths = {key: directory / filename for key, filename in TRAIN_OUTPUTS.items()}
        for path in paths.values():
            if not path.is_file():
                raise DigitlabError(
                    f"{path} is missing: the evaluate stage of model {name!r} expects the train stage's "
                    f"{', '.join(TRAIN_OUTPUTS.values())} in {directory} (run dvc repro train@{name})"
                )
        return cls(**paths)


def read_train_info(directory: Path) -> dict:
    """One model's train.json (numbers) merged with its run.json (MLflow run and model ids)."""
    info = json.loads((directory / TRAIN_OUTPUTS["train_info"]).read_text(encoding="utf-8"))
    run_file = directory / TRAIN_OUTPUTS["run_info"]
    if run_file.is_file():
        info.update(json.loads(run_file.read_text(encoding="utf-8")))
    return info


def check_settings(cfg: DictConfig) -> None:
    """Fail before loading anything when a setting the stage uses is not allowed."""
    require_choice("model", cfg.model, list(cfg.models))
    settings = cfg.evaluate
    require_positive("evaluate.top_k", settings.top_k, integer=True)
    require_positive("evaluate.batch_size", settings.batch_size, integer=True)
    require_non_negative("evaluate.roc_classes", settings.roc_classes, integer=True)
    level = settings.confidence_level
    if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0 < level < 1:
        raise ConfigError("evaluate.confidence_level", level, "a number between 0 and 1 (exclusive), e.g. 0.95")


def load_history(path: Path) -> pd.DataFrame:
    history = pd.read_csv(path)
    missing = [column for column in HISTORY_COLUMNS if column not in history.columns]
    if missing:
        raise DigitlabError(f"{path} lacks the columns {', '.join(missing)}: expected the train stage's history.csv with {', '.join(HISTORY_COLUMNS)}")
    # Several rows per epoch when validation ran every N steps: the last one closes the epoch.
    return history.groupby("epoch", as_index=False).last()


def load_keras_model(path: Path):
    import keras

    try:
        return keras.models.load_model(path)
    except Exception as exc:  # Keras raises many kinds for a bad file; the user needs the file and the reason.
        raise DigitlabError(f"cannot load {path} as a Keras model (.keras file from the train stage): {exc}") from exc


def predict_timed(model, x: np.ndarray, batch_size: int) -> tuple[np.ndarray, float]:
    """Softmax probabilities for ``x`` (raw pixels) and the inference throughput in images/s.

    One warm-up batch first, so that graph tracing doesn't count as inference time.
    """
    inputs = x.astype(np.float32)
    model.predict(inputs[:batch_size], batch_size=batch_size, verbose=0)
    start = time.perf_counter()
    probabilities = model.predict(inputs, batch_size=batch_size, verbose=0)
    seconds = time.perf_counter() - start
    return np.asarray(probabilities, dtype=np.float64), len(x) / seconds


def model_loss(model, x: np.ndarray, y: np.ndarray, batch_size: int) -> float:
    """The training objective on ``(x, y)`` (cross-entropy plus any weight penalty), as in history.csv's val_loss."""
    if not model.compiled or model.loss is None:
        model.compile(loss="sparse_categorical_crossentropy")
    results = model.evaluate(x.astype(np.float32), y, batch_size=batch_size, verbose=0, return_dict=True)
    return float(results["loss"])


def _learned_layers(model):
    """Layers in order, nested models flattened."""
    for layer in model.layers:
        if hasattr(layer, "layers"):
            yield from _learned_layers(layer)
        else:
            yield layer


def first_layer_weight_maps(model, image_shape: tuple[int, int, int], class_names: list[str]) -> tuple[np.ndarray, list[str], str] | None:
    """The first learned layer's weights as images, with a title per map and a figure title.

    - a Dense layer over the flattened image: one H x W map per unit (per class
      for a linear model, whose first layer is its output layer);
    - a Conv2D layer: one kernel per filter.
    Colour channels are averaged. ``None`` when the first learned layer is of another kind.
    """
    height, width, channels = image_shape
    for layer in _learned_layers(model):
        kind = type(layer).__name__
        if kind in _PASS_THROUGH_LAYERS:
            continue
        if kind == "Dense":
            kernel = np.asarray(layer.kernel)
            if kernel.shape[0] != height * width * channels:
                return None
            units = kernel.shape[1]
            maps = kernel.reshape(height, width, channels, units).mean(axis=2).transpose(2, 0, 1)
            if layer is model.layers[-1] and units == len(class_names):
                return maps, [f"class {name}" for name in class_names][:MAX_WEIGHT_MAPS], "weights per class (red positive, blue negative)"
            shown = min(units, MAX_WEIGHT_MAPS)
            return maps[:shown], [f"unit {i}" for i in range(shown)], f"first hidden layer, {shown} of {units} units (red positive, blue negative)"
        if kind == "Conv2D":
            kernel = np.asarray(layer.kernel)  # (kh, kw, in_channels, filters)
            filters = kernel.shape[-1]
            shown = min(filters, MAX_WEIGHT_MAPS)
            maps = kernel.mean(axis=2).transpose(2, 0, 1)[:shown]
            return maps, [f"filter {i}" for i in range(shown)], f"first convolution, {shown} of {filters} filters (red positive, blue negative)"
        return None
    return None


def most_confident_errors(y_true: np.ndarray, probabilities: np.ndarray, count: int) -> np.ndarray:
    """Indices of up to ``count`` misclassified images, the most confidently wrong first."""
    y_pred = probabilities.argmax(axis=1)
    wrong = np.flatnonzero(y_pred != y_true)
    confidence = probabilities[wrong, y_pred[wrong]]
    return wrong[np.argsort(-confidence, kind="stable")][:count]


def save_npz(path: Path, **arrays: np.ndarray) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".npz")
    os.close(fd)
    try:
        np.savez_compressed(tmp, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def draw_figures(
    figures_dir: Path,
    *,
    name: str,
    meta: Meta,
    x_test: np.ndarray,
    y_test: np.ndarray,
    probabilities: np.ndarray,
    history: pd.DataFrame,
    best_epoch: int | None,
    weight_maps: tuple[np.ndarray, list[str], str] | None,
    roc_classes: int,
) -> dict[str, Path]:
    names = meta.class_names
    y_pred = probabilities.argmax(axis=1)
    counts = metrics.confusion_matrix(y_test, y_pred, meta.num_classes)
    written = {
        "confusion": plots.save_png(plots.confusion_matrix_figure(counts, names, title=f"Confusion matrix ({name})"), figures_dir / FIGURES["confusion"]),
        "confusion_normalized": plots.save_png(
            plots.confusion_matrix_figure(metrics.normalize_rows(counts), names, normalized=True, title=f"Confusion matrix, row-normalised ({name})"),
            figures_dir / FIGURES["confusion_normalized"],
        ),
        "curves": plots.save_png(
            plots.training_curves_figure({name: history}, {name: best_epoch} if best_epoch is not None else None, title=f"Training curves ({name})"),
            figures_dir / FIGURES["curves"],
        ),
        "roc": plots.save_png(
            plots.roc_figure(y_test, probabilities, names, classes_shown=roc_classes, title=f"ROC curves ({name})"), figures_dir / FIGURES["roc"]
        ),
    }
    errors = most_confident_errors(y_test, probabilities, GRID_COLUMNS * GRID_COLUMNS)
    written["errors"] = plots.save_png(
        plots.image_grid_figure(
            x_test[errors],
            [names[i] for i in y_test[errors]],
            [f"{names[y_pred[i]]} ({probabilities[i, y_pred[i]]:.0%})" for i in errors],
            columns=GRID_COLUMNS,
            title=f"Most confident mistakes ({name})",
        ),
        figures_dir / FIGURES["errors"],
    )
    if weight_maps is not None:
        maps, titles, title = weight_maps
        written["weights"] = plots.save_png(plots.weight_maps_figure(maps, titles, title=f"{name}: {title}"), figures_dir / FIGURES["weights"])
    return written


def confusion_table(y_true: np.ndarray, y_pred: np.ndarray, class_names: list[str]) -> pd.DataFrame:
    """One row per test image: its actual and predicted class name."""
    names = np.asarray(class_names, dtype=object)
    return pd.DataFrame({"actual": names[y_true], "predicted": names[y_pred]})


def log_to_mlflow(cfg: DictConfig, run_id: str, result: dict, outputs_dir: Path, table: pd.DataFrame) -> None:
    """Add the test results to the model's training run without reopening it (it stays FINISHED)."""
    import mlflow
    from mlflow.entities import Metric
    from mlflow.exceptions import MlflowException

    from digitlab import tracking

    uri = tracking.configure(cfg.tracking)
    client = mlflow.MlflowClient(tracking_uri=uri)
    try:
        client.get_run(run_id)
    except MlflowException as exc:
        raise DigitlabError(
            f"MLflow run {run_id} (run_id in {cfg.paths.models}/{cfg.model}/run.json) is not in the store {uri}: "
            "evaluate with the tracking settings the model was trained with, or retrain it"
        ) from exc
    now = int(time.time() * 1000)
    numbers = [Metric(f"test_{key}", float(value), now, 0) for key, value in result.items() if isinstance(value, (int, float)) and np.isfinite(value)]
    client.log_batch(run_id, metrics=numbers)
    for filename in ("metrics.json", "classification_report.json"):
        client.log_artifact(run_id, str(outputs_dir / filename), "evaluation")
    client.log_artifacts(run_id, str(outputs_dir / "figures"), "evaluation/figures")
    counts = table.value_counts().rename("count").reset_index()
    client.log_table(run_id, counts, "evaluation/confusion_matrix.json")


def run(cfg: DictConfig) -> dict:
    """Evaluate ``cfg.model`` on the test split; write and log everything. Returns metrics.json's content."""
    check_settings(cfg)
    name = str(cfg.model)
    root = project_root()
    prepared_dir = root / cfg.paths.data / "prepared"
    train_outputs = TrainOutputs.locate(root / cfg.paths.models / name, name)
    outputs_dir = root / cfg.paths.reports / name
    settings = cfg.evaluate

    meta = load_meta(prepared_dir)
    x_test, y_test = load_split(prepared_dir, "test")
    train_info = train_outputs.read_info()
    history = load_history(train_outputs.history)
    model = load_keras_model(train_outputs.model)
    log.info("evaluating %s on %d test images (%s)", name, len(y_test), meta.dataset)

    probabilities, throughput = predict_timed(model, x_test, settings.batch_size)
    if probabilities.shape != (len(y_test), meta.num_classes):
        raise DigitlabError(
            f"{train_outputs.model} returns outputs of shape {probabilities.shape[1:]}, "
            f"expected {meta.num_classes} class probabilities for dataset {meta.dataset}: retrain it on this dataset"
        )
    result = {
        **metrics.summarize(y_test, probabilities, top_k=settings.top_k, confidence_level=settings.confidence_level),
        "loss": model_loss(model, x_test, y_test, settings.batch_size),
        "top_k": int(min(settings.top_k, meta.num_classes)),
        "confidence_level": float(settings.confidence_level),
        "throughput_images_per_s": throughput,
        "n_params": int(model.count_params()),
    }
    y_pred = probabilities.argmax(axis=1)

    outputs_dir.mkdir(parents=True, exist_ok=True)
    figures = draw_figures(
        outputs_dir / "figures",
        name=name,
        meta=meta,
        x_test=x_test,
        y_test=y_test,
        probabilities=probabilities,
        history=history,
        best_epoch=train_info.get("best_epoch"),
        weight_maps=first_layer_weight_maps(model, meta.image_shape, meta.class_names),
        roc_classes=settings.roc_classes,
    )
    table = confusion_table(y_test, y_pred, meta.class_names)
    atomic_write_text(outputs_dir / "confusion.csv", table.to_csv(index=False))
    save_npz(outputs_dir / "predictions.npz", y_true=y_test, y_pred=y_pred, probabilities=probabilities.astype(np.float32))
    atomic_write_text(
        outputs_dir / "classification_report.json",
        json.dumps(metrics.classification_report(y_test, y_pred, meta.class_names), indent=2) + "\n",
    )
    atomic_write_text(outputs_dir / "metrics.json", json.dumps(result, indent=2) + "\n")
    log.info(
        "%s: test accuracy %.4f [%.4f, %.4f], loss %.4f, macro F1 %.4f, %.0f images/s; %d figures in %s",
        name, result["accuracy"], result["accuracy_ci_low"], result["accuracy_ci_high"], result["loss"],
        result["f1_macro"], throughput, len(figures), outputs_dir / "figures",
    )

    run_id = train_info.get("run_id")
    if run_id:
        log_to_mlflow(cfg, run_id, result, outputs_dir, table)
        log.info("logged the evaluation to MLflow run %s", run_id)
    else:
        log.warning("%s has no run_id: the evaluation is not logged to MLflow", train_outputs.train_info)
    return result
