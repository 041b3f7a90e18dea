"""The evaluate stage's outputs: the one module that writes and reads them.

A recipe's folder (``<paths.reports>/<recipe>/``) holds:

- ``metrics.json``: the headline numbers, flat (:class:`EvaluationMetrics`; DVC metrics);
- ``classification_report.json``: per-class precision, recall, F1 and support;
- ``confusion.csv``: one row per test image, ``actual,predicted`` class names
  (DVC's confusion template);
- ``predictions.npz``: ``y_true``, ``y_pred``, ``probabilities`` (the report's
  McNemar tests compare recipes image by image);
- ``figures/``: one PNG per registered figure that applies
  (:mod:`digitlab.evaluation.figures`).

The evaluate stage writes them, the report and the test fixtures read and
write them through :class:`EvaluationOutputs` only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from digitlab.errors import DigitlabError
from digitlab.io import atomic_path, atomic_write_json, atomic_write_text, read_json, replace_directory

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

    from digitlab.evaluation.figures import FigureSpec

T = TypeVar("T")


@dataclass(frozen=True)
class EvaluationMetrics:
    """``metrics.json``: one recipe on the test split (numbers only, for ``dvc metrics show``)."""

    accuracy: float
    accuracy_ci_low: float
    accuracy_ci_high: float
    log_loss: float
    top_k_accuracy: float
    precision_macro: float
    recall_macro: float
    f1_macro: float
    precision_weighted: float
    recall_weighted: float
    f1_weighted: float
    roc_auc_micro: float
    roc_auc_macro: float
    n_test: int
    loss: float  # the training objective (cross-entropy plus any weight penalty)
    top_k: int  # the k of top_k_accuracy (evaluate.top_k, capped at the number of classes)
    confidence_level: float  # of the accuracy interval
    throughput_images_per_s: float
    n_params: int

    def numbers(self) -> dict[str, float]:
        """Every finite number, by name (what MLflow gets, prefixed ``test_``)."""
        return {key: float(value) for key, value in asdict(self).items() if np.isfinite(value)}


@dataclass(frozen=True)
class Predictions:
    """``predictions.npz``: labels and predictions per test image, in test-split order."""

    y_true: np.ndarray  # int64 (N,)
    y_pred: np.ndarray  # int64 (N,)
    probabilities: np.ndarray  # float32 (N, K)


class EvaluationOutputs:
    """The files of one recipe's evaluation, by name, with their writers and readers."""

    def __init__(self, directory: Path | str, recipe: str = "") -> None:
        self.directory = Path(directory)
        self.recipe = recipe or self.directory.name

    @property
    def metrics(self) -> Path:
        return self.directory / "metrics.json"

    @property
    def classification_report(self) -> Path:
        return self.directory / "classification_report.json"

    @property
    def confusion(self) -> Path:
        return self.directory / "confusion.csv"

    @property
    def predictions(self) -> Path:
        return self.directory / "predictions.npz"

    @property
    def figures(self) -> Path:
        return self.directory / "figures"

    def figure(self, spec: FigureSpec) -> Path:
        return self.figures / spec.filename

    def _missing(self, path: Path, problem: str = "is missing") -> DigitlabError:
        return DigitlabError(f"{path} {problem}: run the evaluate stage of recipe {self.recipe!r} first (dvc repro evaluate@{self.recipe})")

    def require(self) -> EvaluationOutputs:
        """Fail, naming the file and the stage to run, when an output the report reads is missing."""
        for path in (self.metrics, self.predictions):
            if not path.is_file():
                raise self._missing(path)
        return self

    def replace(self, fill: Callable[[EvaluationOutputs], T]) -> T:
        """Write a whole new set of outputs with ``fill(staging)`` and swap it in at once.

        A failure leaves the previous outputs as they were; a figure that no
        longer applies does not linger from an earlier run.
        """
        return replace_directory(self.directory, lambda tmp: fill(EvaluationOutputs(tmp, self.recipe)))

    # --- writers -----------------------------------------------------------

    def write_metrics(self, metrics: EvaluationMetrics) -> None:
        atomic_write_json(self.metrics, asdict(metrics))

    def write_classification_report(self, report: dict) -> None:
        atomic_write_json(self.classification_report, report)

    def write_confusion(self, y_true: np.ndarray, y_pred: np.ndarray, class_names: Sequence[str]) -> None:
        import pandas as pd

        names = np.asarray(class_names, dtype=object)
        table = pd.DataFrame({"actual": names[y_true], "predicted": names[y_pred]})
        atomic_write_text(self.confusion, table.to_csv(index=False))

    def write_predictions(self, predictions: Predictions) -> None:
        with atomic_path(self.predictions) as tmp:
            np.savez_compressed(
                tmp,
                y_true=np.asarray(predictions.y_true),
                y_pred=np.asarray(predictions.y_pred),
                probabilities=np.asarray(predictions.probabilities, dtype=np.float32),
            )

    def write_figure(self, spec: FigureSpec, figure: Figure) -> Path:
        from digitlab.evaluation import plots

        return plots.save_png(figure, self.figure(spec))

    # --- readers -----------------------------------------------------------

    def read_metrics(self) -> EvaluationMetrics:
        try:
            data = read_json(self.metrics)
            return EvaluationMetrics(**{f.name: data[f.name] for f in fields(EvaluationMetrics)})
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise self._missing(self.metrics, f"is missing or not the evaluate stage's metrics.json ({exc})") from exc

    def read_classification_report(self) -> dict:
        if not self.classification_report.is_file():
            raise self._missing(self.classification_report)
        return read_json(self.classification_report)

    def read_confusion(self) -> pd.DataFrame:
        """confusion.csv: one row per test image, columns ``actual`` and ``predicted`` (class names as text)."""
        import pandas as pd

        if not self.confusion.is_file():
            raise self._missing(self.confusion)
        return pd.read_csv(self.confusion, dtype=str, keep_default_na=False)

    def read_predictions(self) -> Predictions:
        try:
            with np.load(self.predictions) as arrays:
                return Predictions(arrays["y_true"], arrays["y_pred"], arrays["probabilities"])
        except (OSError, ValueError, KeyError) as exc:
            raise self._missing(self.predictions, f"is missing or not the evaluate stage's predictions.npz ({exc})") from exc

    def figure_files(self) -> dict[str, Path]:
        """The registered figures this evaluation has, by key, in the report's order."""
        from digitlab.evaluation.figures import report_order

        return {spec.key: self.figure(spec) for spec in report_order() if self.figure(spec).is_file()}
