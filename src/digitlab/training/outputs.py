"""The train stage's outputs: the one module that writes and reads them.

A recipe's folder (``<paths.models>/<recipe>/``) holds:

- ``model.keras``: the best weights; raw 0-255 pixels in, class probabilities out;
- ``history.csv``: one row per evaluation (:data:`HISTORY_COLUMNS`); row 0 is
  before training;
- ``train.json``: the numbers of the run (DVC metrics: numbers only);
- ``run.json``: where the run lives (MLflow ids and URIs; machine-specific);
- ``curves.png``: loss and accuracy per evaluation.

What an interrupted run resumes from lives elsewhere (:mod:`digitlab.training.checkpoints`),
so that these outputs are all DVC can cache and restore.

Later stages, the report and the test fixtures go through :class:`TrainOutputs`.
"""

from __future__ import annotations

import csv
import io
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from digitlab.errors import DigitlabError
from digitlab.io import atomic_write_json, atomic_write_text, read_json
from digitlab.redact import redact_data

HISTORY_COLUMNS = ("epoch", "step", "loss", "accuracy", "val_loss", "val_accuracy", "learning_rate")


@dataclass(frozen=True)
class TrainMetrics:
    """``train.json``: what a training achieved."""

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


@dataclass(frozen=True)
class RunInfo:
    """``run.json``: where a training's records live."""

    model: str
    dataset: str
    run_id: str | None
    experiment_id: str | None
    tracking_uri: str | None
    model_uri: str | None


@dataclass(frozen=True)
class TrainResult:
    metrics: TrainMetrics
    run: RunInfo


class TrainOutputs:
    """The files of one recipe's training, by name, with their writers and readers."""

    def __init__(self, directory: Path | str, recipe: str = "") -> None:
        self.directory = Path(directory)
        self.recipe = recipe or self.directory.name

    @property
    def model(self) -> Path:
        return self.directory / "model.keras"

    @property
    def history(self) -> Path:
        return self.directory / "history.csv"

    @property
    def metrics(self) -> Path:
        return self.directory / "train.json"

    @property
    def run(self) -> Path:
        return self.directory / "run.json"

    @property
    def curves(self) -> Path:
        return self.directory / "curves.png"

    def require(self, *paths: Path) -> TrainOutputs:
        """Fail, naming the file and the stage to run, when an output a later stage reads is missing.

        ``paths``: the outputs the reader needs (default: the model and every record).
        """
        for path in paths or (self.model, self.history, self.metrics, self.run):
            if not path.is_file():
                raise DigitlabError(f"{path} is missing: run the train stage of recipe {self.recipe!r} first (dvc repro train@{self.recipe})")
        return self

    def write_history(self, rows: list[dict[str, float]]) -> None:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=HISTORY_COLUMNS, lineterminator="\n", extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(self.history, buffer.getvalue())

    def read_history(self):
        """history.csv as a DataFrame with one row per epoch (the last evaluation of each)."""
        import pandas as pd

        history = pd.read_csv(self.history)
        missing = [column for column in HISTORY_COLUMNS if column not in history.columns]
        if missing:
            raise DigitlabError(f"{self.history} lacks the columns {', '.join(missing)}: rerun the train stage (dvc repro train@{self.recipe})")
        # Several rows per epoch when validation ran every N steps: the last one closes the epoch.
        return history.groupby("epoch", as_index=False).last()

    def write_result(self, result: TrainResult) -> None:
        atomic_write_json(self.run, redact_data(asdict(result.run)))  # no password of a tracking URI in a file
        atomic_write_json(self.metrics, asdict(result.metrics))

    def read_result(self) -> TrainResult:
        return TrainResult(_read(TrainMetrics, self.metrics, self.recipe), _read(RunInfo, self.run, self.recipe))


def _read(kind: type, path: Path, recipe: str):
    try:
        data = read_json(path)
        return kind(**{f.name: data[f.name] for f in fields(kind)})
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DigitlabError(f"{path} is missing or not the train stage's {path.name} ({exc}): rerun dvc repro train@{recipe}") from exc
