"""The evaluate stage: one trained recipe measured on the test split.

Reads the train stage's outputs (:class:`~digitlab.training.outputs.TrainOutputs`:
model.keras with the best weights, history.csv, train.json, run.json) and the
prepared test split; writes the evaluate stage's outputs
(:class:`~digitlab.evaluation.outputs.EvaluationOutputs`: metrics.json,
classification_report.json, confusion.csv, predictions.npz, and one PNG per
registered figure under figures/).

Everything is also logged to the recipe's MLflow training run (metrics
prefixed ``test_``, files under ``evaluation/``, the confusion matrix as a
table), which stays FINISHED.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from digitlab.data.prepared import Meta, load_meta, load_split
from digitlab.errors import DigitlabError
from digitlab.evaluation import fonts, metrics
from digitlab.evaluation.figures import EvaluationData, FigureSpec, report_order
from digitlab.evaluation.outputs import EvaluationMetrics, EvaluationOutputs, Predictions
from digitlab.models import load_model
from digitlab.training.outputs import TrainOutputs

if TYPE_CHECKING:
    from digitlab.settings import EvaluateSettings, Layout, Settings
    from digitlab.tracking import TrackingSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HeldOut:
    """The prepared test split and its dataset's description."""

    meta: Meta
    x: np.ndarray
    y: np.ndarray

    @classmethod
    def load(cls, prepared: Path) -> HeldOut:
        meta = load_meta(prepared)
        return cls(meta, *load_split(prepared, "test"))


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


def check_outputs(probabilities: np.ndarray, test: HeldOut, model_path: Path) -> None:
    if probabilities.shape != (len(test.y), test.meta.num_classes):
        raise DigitlabError(
            f"{model_path} returns outputs of shape {probabilities.shape[1:]}, "
            f"expected {test.meta.num_classes} class probabilities for dataset {test.meta.dataset}: retrain it on this dataset"
        )


def measure(model, test: HeldOut, probabilities: np.ndarray, throughput: float, settings: EvaluateSettings) -> EvaluationMetrics:
    """metrics.json's numbers."""
    summary = metrics.summarize(test.y, probabilities, top_k=settings.top_k, confidence_level=settings.confidence_level)
    return EvaluationMetrics(
        **summary,
        loss=model_loss(model, test.x, test.y, settings.batch_size),
        top_k=int(min(settings.top_k, test.meta.num_classes)),
        confidence_level=float(settings.confidence_level),
        throughput_images_per_s=throughput,
        n_params=int(model.count_params()),
    )


def draw_figures(data: EvaluationData, outputs: EvaluationOutputs) -> list[FigureSpec]:
    """Draw and write every registered figure that applies to ``data``; returns those written."""
    fonts.cover(data.recipe, *data.class_names)  # a figure of your own draws the class names with them too
    written = []
    for spec in report_order():
        figure = spec.draw(data)
        if figure is not None:
            outputs.write_figure(spec, figure)
            written.append(spec)
    return written


def write_outputs(outputs: EvaluationOutputs, result: EvaluationMetrics, data: EvaluationData) -> list[FigureSpec]:
    """Every output file, swapped in as one directory; returns the figures written."""

    def fill(staging: EvaluationOutputs) -> list[FigureSpec]:
        figures = draw_figures(data, staging)
        staging.write_confusion(data.y_test, data.y_pred, data.class_names)
        staging.write_predictions(Predictions(data.y_test, data.y_pred, data.probabilities))
        staging.write_classification_report(metrics.classification_report(data.y_test, data.y_pred, data.class_names))
        staging.write_metrics(result)
        return figures

    return outputs.replace(fill)


def log_to_mlflow(tracking: TrackingSettings, trained: TrainOutputs, run_id: str, outputs: EvaluationOutputs) -> None:
    """Add the test results to the recipe's training run without reopening it (it stays FINISHED).

    They go through the run's journal (:mod:`digitlab.journal`): a server that is
    down now gets them later, from ``digitlab sync``, and the stage still succeeds.
    """
    from digitlab import tracking as mlflow_tracking
    from digitlab.errors import TrackingUnavailable
    from digitlab.journal import Journal

    try:
        uri = mlflow_tracking.configure(tracking)
        mlflow_tracking.require_run(run_id, f"run_id in {trained.run}")
    except TrackingUnavailable as exc:
        log.warning("%s", exc)
        uri = mlflow_tracking.resolve_uri(tracking)
    journal = Journal.for_run(run_id, uri)
    journal.start_sender()
    journal.log_metrics({f"test_{key}": value for key, value in outputs.read_metrics().numbers().items()}, step=0)
    for path in (outputs.metrics, outputs.classification_report, *sorted(outputs.figures.iterdir())):
        journal.log_artifact(path, "evaluation" if path.parent != outputs.figures else "evaluation/figures")
    counts = outputs.read_confusion().value_counts().rename("count").reset_index()
    journal.log_table(counts, "evaluation/confusion_matrix.json")
    mlflow_tracking.close_journal(journal, tracking.delivery_timeout_s)


def run(settings: Settings, layout: Layout, recipe: str) -> EvaluationMetrics:
    """Evaluate ``recipe`` on the test split; write and log everything. Returns metrics.json's content."""
    trained = TrainOutputs(layout.model_dir(recipe), recipe).require()
    test = HeldOut.load(layout.prepared)
    train = trained.read_result()
    model = load_model(trained.model)
    log.info("evaluating %s on %d test images (%s)", recipe, len(test.y), test.meta.dataset)

    probabilities, throughput = predict_timed(model, test.x, settings.evaluate.batch_size)
    check_outputs(probabilities, test, trained.model)
    result = measure(model, test, probabilities, throughput, settings.evaluate)
    data = EvaluationData(
        recipe=recipe, meta=test.meta, x_test=test.x, y_test=test.y, probabilities=probabilities, history=trained.read_history(),
        best_epoch=train.metrics.best_epoch, model=model, roc_classes=settings.evaluate.roc_classes,
    )  # fmt: skip
    outputs = EvaluationOutputs(layout.report_dir(recipe), recipe)
    figures = write_outputs(outputs, result, data)
    log.info(
        "%s: test accuracy %.4f [%.4f, %.4f], loss %.4f, macro F1 %.4f, %.0f images/s; %d figures in %s",
        recipe, result.accuracy, result.accuracy_ci_low, result.accuracy_ci_high, result.loss,
        result.f1_macro, throughput, len(figures), outputs.figures,
    )  # fmt: skip

    if train.run.run_id:
        log_to_mlflow(settings.tracking, trained, train.run.run_id, outputs)
        log.info("logged the evaluation to MLflow run %s", train.run.run_id)
    else:
        log.warning("%s has no run_id: the evaluation is not logged to MLflow", trained.run)
    return result
