"""Keras callbacks of a training run. They share one :class:`RunState`, which the
last-checkpoint callback saves, so a resumed run continues their bookkeeping."""

from __future__ import annotations

import logging
import math
import os
import sys
import time

import keras

from digitlab import interrupts
from digitlab.errors import DigitlabError
from digitlab.training.checkpoints import CheckpointDir, RunState
from digitlab.training.outputs import TrainOutputs
from digitlab.training.schedule import EarlyStoppingSettings

log = logging.getLogger("digitlab.training")

# The history columns MLflow records per evaluation (epoch and step index them).
LOGGED_COLUMNS = ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate")


def current_learning_rate(model) -> float:
    return float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))


def log_row(row: dict[str, float]) -> None:
    """One history row as an MLflow metrics step of the active run (through its journal: never waits for the server)."""
    from digitlab import tracking

    tracking.active_run().journal.log_metrics({key: row[key] for key in LOGGED_COLUMNS}, step=int(row["epoch"]))


def heartbeat() -> None:
    """Tell whoever looks for abandoned runs (:mod:`digitlab.runs`) that the active run is alive."""
    from digitlab import tracking
    from digitlab.runs import HEARTBEAT_TAG

    tracking.active_run().journal.set_tags({HEARTBEAT_TAG: str(int(time.time()))})


class RaiseWhenInterrupted(keras.callbacks.Callback):
    """Raise a recorded stop (:mod:`digitlab.interrupts`) again at the next batch, in case the first was dropped."""

    def _check(self, *_args, **_kwargs) -> None:
        interrupts.raise_if_stopped()

    on_train_batch_end = on_test_batch_end = on_epoch_end = _check


class StopOnNaN(keras.callbacks.Callback):
    """A loss that is no longer a number ends the run with an error that says what to change."""

    def __init__(self, recipe: str, learning_rate: float) -> None:
        super().__init__()
        self.recipe, self.learning_rate = recipe, learning_rate

    def on_epoch_end(self, epoch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is None or not math.isfinite(loss):
            setting = f"models.{self.recipe}.optimizer"
            raise DigitlabError(
                f"training diverged: the loss became {loss} in evaluation period {epoch + 1}; "
                f"lower {setting}.learning_rate (now {self.learning_rate}) or set {setting}.clipnorm"
            )


class AveragedWeights(keras.callbacks.SwapEMAWeights):
    """With ``optimizer.ema_momentum``: the averaged weights are what validation scores and what the
    callbacks after this one save (best and last checkpoints); the raw weights take the steps.

    Between an evaluation's end and the next one's start the model holds the average and the
    optimizer's average slots the raw weights (Keras' ``swap_on_epoch``), so a checkpoint holds
    them that way round too: a resumed run starts with them swapped (``resumed``). Put it first;
    :attr:`at_stop` goes last.
    """

    def __init__(self, resumed: bool) -> None:
        super().__init__(swap_on_epoch=True)
        self._ema_weights_in_model = resumed
        self.at_stop = _AverageAtStop(self)

    def keep_average(self) -> None:
        """Make the average what ``fit`` copies into the model at its end, if the model holds it now."""
        if self._ema_weights_in_model:
            self._finalize_ema_values()


class _AverageAtStop(keras.callbacks.Callback):
    """Keep the average in the model when training stops early: ``fit`` ends by copying the
    optimizer's average slots into the model, which Keras' callback prepares for the last
    evaluation only."""

    def __init__(self, swap: AveragedWeights) -> None:
        super().__init__()
        self.swap = swap

    def on_epoch_end(self, epoch, logs=None):
        if self.model.stop_training:
            self.swap.keep_average()


class RecordEvaluation(keras.callbacks.Callback):
    """One history row, one MLflow metrics step and one progress line per evaluation."""

    def __init__(self, state: RunState, outputs: TrainOutputs, total_epochs: int) -> None:
        super().__init__()
        self.state, self.outputs, self.total_epochs = state, outputs, total_epochs
        self._time_before = 0.0
        self._started = 0.0
        self._epoch_started = 0.0

    def on_train_begin(self, logs=None):
        self._time_before = self.state.train_time_s
        self._started = time.perf_counter()

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        row = {
            "epoch": epoch + 1,
            "step": int(keras.ops.convert_to_numpy(self.model.optimizer.iterations)),
            **{key: float(logs[key]) for key in ("loss", "accuracy", "val_loss", "val_accuracy")},
            "learning_rate": current_learning_rate(self.model),
        }
        state = self.state
        state.history.append(row)
        state.epoch, state.step = row["epoch"], row["step"]
        state.train_time_s = self._time_before + time.perf_counter() - self._started
        self.outputs.write_history(state.history)
        log_row(row)
        heartbeat()
        log.info(
            "epoch %d/%d step %d: loss %.4f accuracy %.4f | val_loss %.4f val_accuracy %.4f | lr %.3g | %.1fs",
            row["epoch"], self.total_epochs, row["step"], row["loss"], row["accuracy"],
            row["val_loss"], row["val_accuracy"], row["learning_rate"], time.perf_counter() - self._epoch_started,
        )  # fmt: skip


class KeepBestAndStopEarly(keras.callbacks.Callback):
    """Save the best model as it appears; stop after ``patience`` evaluations without improvement.

    Keras' EarlyStopping keeps its progress in memory only; here it lives in
    the run state, so a resumed run keeps counting from where it stopped.
    """

    def __init__(self, state: RunState, stopping: EarlyStoppingSettings, checkpoints: CheckpointDir, first_stop: int = 0,
                 validation_size: int = 0) -> None:  # fmt: skip
        super().__init__()
        self.state, self.stopping, self.checkpoints = state, stopping, checkpoints
        self.first_stop = first_stop  # no stop before this evaluation (Plan.first_stop)
        self.validation_size = validation_size  # for early_stopping.min_delta_images

    def on_epoch_end(self, epoch, logs=None):
        value = float((logs or {})[self.stopping.monitor])
        state = self.state
        if state.best_value is None or self.stopping.improves(value, state.best_value, self.validation_size):
            state.best_value, state.best_epoch, state.wait = value, epoch + 1, 0
            self.checkpoints.save_best(self.model)
            return
        state.wait += 1
        if self.stopping.enabled and state.wait >= self.stopping.patience and epoch + 1 >= self.first_stop:
            log.info("early stopping: %s has not improved for %d evaluations (best %.4f at %d)",
                     self.stopping.monitor, state.wait, state.best_value, state.best_epoch)  # fmt: skip
            state.stopped_early = True
            self.model.stop_training = True


class SaveLastCheckpoint(keras.callbacks.Callback):
    """The model, optimizer, best model and run state, as one unit, every ``every_epochs`` evaluations and at the end."""

    def __init__(self, state: RunState, checkpoints: CheckpointDir, every_epochs: int, total_epochs: int) -> None:
        super().__init__()
        self.state, self.checkpoints = state, checkpoints
        self.every_epochs, self.total_epochs = every_epochs, total_epochs

    def on_epoch_end(self, epoch, logs=None):
        done = epoch + 1
        if done % self.every_epochs == 0 or done == self.total_epochs or self.model.stop_training:
            self.checkpoints.commit(self.model, self.state)


class StopAtStep(keras.callbacks.Callback):
    """End training after exactly ``max_steps`` optimizer steps, mid evaluation period if need be."""

    def __init__(self, max_steps: int) -> None:
        super().__init__()
        self.max_steps = max_steps

    def on_train_batch_end(self, batch, logs=None):
        if int(keras.ops.convert_to_numpy(self.model.optimizer.iterations)) >= self.max_steps:
            self.model.stop_training = True


class EpochProgress(keras.callbacks.Callback):
    """A progress bar over one evaluation period (steps done/total, loss, accuracy, time left).

    Shown only when ``stream`` (stderr by default) is a terminal; in DVC logs, pipes
    and CI nothing is drawn and the one line per evaluation of
    :class:`RecordEvaluation` is all there is. Redrawn at most every ``min_interval_s``.
    """

    def __init__(self, steps_per_eval: int, total_epochs: int, stream=None, min_interval_s: float = 0.2) -> None:
        super().__init__()
        self.steps_per_eval, self.total_epochs = steps_per_eval, total_epochs
        self.stream = stream if stream is not None else sys.stderr
        self.min_interval_s = min_interval_s
        self._bar = None

    @staticmethod
    def wanted(stream=None) -> bool:
        stream = stream if stream is not None else sys.stderr
        try:
            return bool(stream.isatty())
        except (AttributeError, ValueError):
            return False

    def on_epoch_begin(self, epoch, logs=None):
        if not self.wanted(self.stream):
            return
        from tqdm import tqdm

        # A pseudo-terminal with no size set (script, CI runners with a tty) reports 0x0,
        # which makes tqdm draw nothing: fall back to 100 columns and 24 rows there.
        try:
            size = os.get_terminal_size(self.stream.fileno())
        except (AttributeError, OSError, ValueError):
            size = os.terminal_size((0, 0))
        sized = size.columns > 0 and size.lines > 0
        self._bar = tqdm(
            total=self.steps_per_eval, desc=f"epoch {epoch + 1}/{self.total_epochs}", unit="step",
            file=self.stream, leave=False, mininterval=self.min_interval_s,
            dynamic_ncols=sized, ncols=None if sized else 100, nrows=None if sized else 24,
        )  # fmt: skip

    def on_train_batch_end(self, batch, logs=None):
        bar = self._bar
        if bar is None:
            return
        done = batch + 1
        # Throttled: the logs (device values) are read and the bar redrawn only every min_interval_s.
        if time.monotonic() - getattr(self, "_drawn", 0.0) >= self.min_interval_s or done >= self.steps_per_eval:
            self._drawn = time.monotonic()
            logs = logs or {}
            post = {key: f"{float(logs[key]):.4f}" for key in ("loss", "accuracy") if key in logs}
            bar.set_postfix(post, refresh=False)
            bar.update(done - bar.n)

    def on_epoch_end(self, epoch, logs=None):
        self._close()

    def on_train_end(self, logs=None):
        self._close()

    def _close(self):
        if self._bar is not None:
            self._bar.close()
            self._bar = None
