"""Checkpoints of a training run and the state that lets an interrupted run resume.

A run's folder, ``<paths.checkpoints>/<recipe>-<fingerprint>/``, holds ``last.keras``
(model + optimizer, saved every ``checkpoint.every_epochs`` evaluations),
``best.keras`` (the best model so far) and ``state.json``: the evaluation count,
the optimizer step, the MLflow run id, the history so far, early-stopping
progress and the fingerprint of what the run trains (recipe, dataset metadata,
seed). A new run with the same fingerprint continues an unfinished run; the
folder is removed when the run completes. It lies outside the train stage's
declared outputs, so DVC can cache and restore those (run cache, experiment
copies) like any other stage's.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from digitlab.io import atomic_write_json

if TYPE_CHECKING:
    from digitlab.settings import Recipe

LAST = "last.keras"
BEST = "best.keras"
STATE = "state.json"


def fingerprint(recipe: Recipe, dataset_meta: dict[str, Any], seed: int) -> str:
    """A hash of everything that decides what a run trains (but not whether it may resume)."""
    settings = recipe.model_dump(mode="json", exclude={"training": {"resume"}})
    payload = json.dumps({"recipe": settings, "dataset": dataset_meta, "seed": seed}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


@dataclass
class RunState:
    """What a run has done so far; saved beside the last checkpoint."""

    fingerprint: str
    run_id: str | None = None
    epoch: int = 0  # evaluations done (Keras epochs)
    step: int = 0  # optimizer steps done
    history: list[dict[str, float]] = field(default_factory=list)
    best_value: float | None = None
    best_epoch: int = 0
    wait: int = 0  # evaluations since the last improvement
    stopped_early: bool = False
    initial_val_accuracy: float | None = None
    initial_val_loss: float | None = None
    train_time_s: float = 0.0  # seconds spent in training, over all resumed sessions


class CheckpointDir:
    """One run's resume folder: ``<paths.checkpoints>/<recipe>-<fingerprint>/``."""

    def __init__(self, directory: Path, fingerprint_: str) -> None:
        self.directory, self.fingerprint = Path(directory), fingerprint_

    @property
    def last(self) -> Path:
        return self.directory / LAST

    @property
    def best(self) -> Path:
        return self.directory / BEST

    @property
    def state_path(self) -> Path:
        return self.directory / STATE

    def resumable(self) -> RunState | None:
        """The state of an unfinished run with this folder's fingerprint that has a last checkpoint, else None."""
        if not self.state_path.is_file() or not self.last.is_file():
            return None
        try:
            state = RunState(**json.loads(self.state_path.read_text(encoding="utf-8")))
        except (ValueError, TypeError):
            return None
        if state.fingerprint != self.fingerprint or state.epoch < 1:
            return None
        return state

    def clear(self) -> None:
        for path in (self.last, self.best, self.state_path):
            path.unlink(missing_ok=True)

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)

    def save_model(self, model, path: Path) -> None:
        from digitlab.models import save_model

        save_model(model, path)

    def save_state(self, state: RunState) -> None:
        atomic_write_json(self.state_path, asdict(state))
