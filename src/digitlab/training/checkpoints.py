"""Checkpoints of a training run and the state that lets an interrupted run resume.

A run's folder, ``<paths.checkpoints>/<recipe>-<fingerprint>/``, is one unit:
``last.keras`` (model + optimizer, saved every ``checkpoint.every_epochs``
evaluations), ``best.keras`` (the best model up to that evaluation) and
``state.json`` (the evaluation count, the optimizer step, the MLflow run id, the
history so far, early-stopping progress and the fingerprint of what the run
trains: recipe, dataset metadata, seed). A checkpoint fills a fresh hidden
folder beside it and swaps it in with one rename
(:func:`digitlab.io.replace_directory`), so a kill at any moment leaves the
previous unit or the new one, never weights from one evaluation with the state
of another. A new best model waits in a staging file beside the unit
(``.<unit>.best-pending.keras``) until the next checkpoint takes it in.

A new run with the same fingerprint continues an unfinished run; the folder is
removed when the run completes. It lies outside the train stage's declared
outputs, so DVC can cache and restore those (run cache, experiment copies)
like any other stage's.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from digitlab.errors import DigitlabError
from digitlab.io import atomic_write_json, replace_directory

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

    @property
    def pending_best(self) -> Path:
        """A new best model not yet part of a checkpoint unit (never read on resume)."""
        return self.directory.with_name(f".{self.directory.name}.best-pending.keras")

    def resumable(self) -> RunState | None:
        """The state of an unfinished run with this folder's fingerprint and a complete unit, else None."""
        self.recover()
        if not self.state_path.is_file() or not _is_archive(self.last):
            return None
        try:
            state = RunState(**json.loads(self.state_path.read_text(encoding="utf-8")))
        except (ValueError, TypeError):
            return None
        if state.fingerprint != self.fingerprint or state.epoch < 1:
            return None
        if state.best_epoch and not _is_archive(self.best):
            return None
        return state

    def recover(self) -> None:
        """Put back the unit a kill took out mid-swap, and drop the leftovers of unfinished checkpoints."""
        parent, name = self.directory.parent, self.directory.name
        if not self.directory.exists():
            for old in sorted(parent.glob(f".{name}.old-*.tmp")):
                if (old / name).is_dir():
                    os.replace(old / name, self.directory)
                    break
        # A best model staged after the unit's evaluation belongs to no checkpoint: the resumed run finds its own.
        self.pending_best.unlink(missing_ok=True)
        self._drop_leftovers()

    def _drop_leftovers(self) -> None:
        """Temporaries of unfinished writes: units (``.NAME.*.tmp``) and staged best models."""
        parent = self.directory.parent
        for pattern in (f".{self.directory.name}.*.tmp*", f".{self.pending_best.name}.*.tmp*"):
            for leftover in parent.glob(pattern):
                shutil.rmtree(leftover, ignore_errors=True) if leftover.is_dir() else leftover.unlink(missing_ok=True)

    def clear(self) -> None:
        self.remove()

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)
        self.pending_best.unlink(missing_ok=True)
        self._drop_leftovers()

    def save_best(self, model) -> None:
        """Stage a new best model; the next :meth:`commit` makes it the unit's ``best.keras``."""
        from digitlab.models import save_model

        self._guarded(lambda: save_model(model, self.pending_best))

    def commit(self, model, state: RunState) -> None:
        """Write ``last.keras``, ``best.keras`` and ``state.json`` as one unit, swapped in with one rename."""
        from digitlab.models import save_model

        def build(tmp: Path) -> None:
            save_model(model, tmp / LAST)
            if self.pending_best.is_file():
                os.replace(self.pending_best, tmp / BEST)
            elif self.best.is_file():
                _link_or_copy(self.best, tmp / BEST)
            atomic_write_json(tmp / STATE, asdict(state))

        self._guarded(lambda: replace_directory(self.directory, build))

    def _guarded(self, write) -> None:
        """Run ``write``; a failed write (disk full, read-only) is one line that says the last checkpoint is kept."""
        try:
            write()
        except OSError as exc:
            raise DigitlabError(
                f"cannot write a checkpoint in {self.directory.parent}: {exc.strerror or exc}; "
                "the previous checkpoint is kept: free space (or fix the folder) and run the same command again to resume"
            ) from exc


def _is_archive(path: Path) -> bool:
    return path.is_file() and zipfile.is_zipfile(path)


def _link_or_copy(source: Path, dest: Path) -> None:
    try:
        os.link(source, dest)
    except OSError:
        shutil.copy2(source, dest)
