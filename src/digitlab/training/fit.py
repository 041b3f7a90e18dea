"""One fit of a recipe inside its MLflow run: score the untrained model, fit with digitlab's
callbacks, then save the best model and its records."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from digitlab.data.prepared import Meta, load_split
from digitlab.settings import Recipe, Settings
from digitlab.training.checkpoints import CheckpointDir, RunState
from digitlab.training.outputs import RunInfo, TrainMetrics, TrainOutputs, TrainResult
from digitlab.training.schedule import Plan

log = logging.getLogger("digitlab.training")

# Training images the untrained model is scored on for history row 0 (the split is
# already shuffled). No full pass: on 55,000 CNN inputs it costs a third of an epoch,
# and a sample tells the same (about chance).
INITIAL_TRAIN_SAMPLE = 5000


def compile_for_training(model, recipe: Recipe, plan: Plan) -> None:
    """Compile ``model`` as the train stage trains it: the recipe's optimizer over the plan's steps, its loss
    (label smoothing: one-hot targets), accuracy, and the plan's steps per call into TensorFlow."""
    import keras

    if recipe.training.label_smoothing:  # one-hot targets (Fit.run())
        loss = keras.losses.CategoricalCrossentropy(label_smoothing=recipe.training.label_smoothing)
        accuracy = keras.metrics.CategoricalAccuracy(name="accuracy")
    else:
        loss, accuracy = keras.losses.SparseCategoricalCrossentropy(), keras.metrics.SparseCategoricalAccuracy(name="accuracy")
    model.compile(
        optimizer=recipe.optimizer.build(plan.total_steps), loss=loss, metrics=[accuracy], steps_per_execution=plan.steps_per_execution,
    )  # fmt: skip


@dataclass
class Fit:
    settings: Settings
    meta: Meta
    model: object
    outputs: TrainOutputs
    checkpoints: CheckpointDir
    state: RunState
    val_data: object = None
    val_sample: object = None
    fit_time_s: float = 0.0
    steps_before: int = field(default=0)

    @property
    def name(self) -> str:
        return self.settings.model

    def run(self, prepared: Path, callbacks: Sequence = ()) -> None:
        """Fit the model on ``prepared``'s train split, validating on its val split."""
        from digitlab.training.inputs import evaluation_dataset, training_dataset

        training = self.settings.recipe.training
        x_train, y_train = load_split(prepared, "train")
        x_val, y_val = load_split(prepared, "val")
        if training.label_smoothing:  # Keras smooths one-hot targets only
            y_train, y_val = (np.eye(self.meta.num_classes, dtype=np.float32)[y] for y in (y_train, y_val))
        plan = training.plan(len(y_train), self.meta.min_train_steps, decaying=self.settings.recipe.optimizer.schedule is not None)
        self.validation_size = len(y_val)
        sample = (x_train[:INITIAL_TRAIN_SAMPLE].copy(), y_train[:INITIAL_TRAIN_SAMPLE].copy()) if self.state.epoch == 0 else None
        train_data = training_dataset(x_train, y_train, training.batch_size, training.shuffle_buffer, self.settings.seed)
        # tf.data keeps its own copy of the images: dropping ours takes a whole copy
        # of the training set off the process's peak memory (benchmarks/TUNING.md).
        del x_train
        self.val_data = evaluation_dataset(x_val, y_val, max(training.batch_size, 256))
        self.val_sample = x_val[:8]
        if sample is not None:
            self._start(plan, *sample)
        else:
            # The history file may be ahead of the checkpoint when the run was killed in between.
            self.outputs.write_history(self.state.history)
        if self.state.epoch >= plan.evaluations or self.state.stopped_early:
            return
        log.info(
            "training %s on %s: %d train / %d validation images, %d evaluations of %d steps (batch %d)",
            self.name, self.meta.dataset, len(y_train), len(y_val), plan.evaluations, plan.steps_per_eval, training.batch_size,
        )  # fmt: skip
        self.steps_before, started = self.state.step, time.perf_counter()
        self.model.fit(
            train_data,
            epochs=plan.evaluations,
            initial_epoch=self.state.epoch,
            steps_per_epoch=plan.steps_per_eval,
            validation_data=self.val_data,
            callbacks=[*self._callbacks(plan), *callbacks],
            shuffle=False,  # the tf.data pipeline shuffles, with the run's seed
            verbose=0,
        )
        self.fit_time_s = time.perf_counter() - started

    def _start(self, plan: Plan, x_sample, y_sample) -> None:
        """Compile a fresh model and record history row 0: the untrained model's scores."""
        from digitlab.training.callbacks import current_learning_rate, log_row
        from digitlab.training.inputs import evaluation_dataset

        recipe = self.settings.recipe
        compile_for_training(self.model, recipe, plan)
        before_val = self.model.evaluate(self.val_data, verbose=0, return_dict=True)
        sample = evaluation_dataset(x_sample, y_sample, max(recipe.training.batch_size, 256))
        before_train = self.model.evaluate(sample, verbose=0, return_dict=True)
        row = {
            "epoch": 0, "step": 0, "loss": float(before_train["loss"]), "accuracy": float(before_train["accuracy"]),
            "val_loss": float(before_val["loss"]), "val_accuracy": float(before_val["accuracy"]),
            "learning_rate": current_learning_rate(self.model),
        }  # fmt: skip
        self.state.history = [row]
        self.state.initial_val_accuracy, self.state.initial_val_loss = row["val_accuracy"], row["val_loss"]
        self.outputs.write_history(self.state.history)
        log_row(row)
        log.info("before training: val_accuracy %.4f val_loss %.4f", row["val_accuracy"], row["val_loss"])

    def _callbacks(self, plan) -> list:
        from digitlab.training import callbacks as cb

        recipe = self.settings.recipe
        own = [
            cb.StopOnNaN(self.name, recipe.optimizer.learning_rate),
            cb.RecordEvaluation(self.state, self.outputs, plan.evaluations),
            cb.KeepBestAndStopEarly(self.state, recipe.training.early_stopping, self.checkpoints, plan.first_stop, self.validation_size),
            cb.SaveLastCheckpoint(self.state, self.checkpoints, recipe.training.checkpoint.every_epochs, plan.evaluations),
        ]
        if plan.total_steps % plan.steps_per_eval:
            own.append(cb.StopAtStep(plan.total_steps))
        if cb.EpochProgress.wanted():
            # First, so its bar is closed before RecordEvaluation writes the evaluation's line.
            own.insert(0, cb.EpochProgress(plan.steps_per_eval, plan.evaluations))
        if recipe.optimizer.ema_momentum is not None:
            # Before every callback that reads or saves the weights, its stop hook after them.
            average = cb.AveragedWeights(resumed=self.state.epoch > 0)
            own = [average, *own, average.at_stop]
        return own

    def finalise(self, run) -> TrainResult:
        """Save the best model and the curves, log them to the run (its journal), and say what the run achieved.

        The result's ``model_uri`` is filled in once the journal has delivered the model (:func:`with_model_uri`).
        """
        from digitlab.models import load_model, save_model
        from digitlab.training.curves import plot_curves

        restore = self.settings.recipe.training.early_stopping.restore_best_weights
        final = load_model(self.checkpoints.best) if restore and self.checkpoints.best.is_file() else self.model
        final_val = final.evaluate(self.val_data, verbose=0, return_dict=True)
        save_model(final, self.outputs.model)
        plot_curves(self.state.history, f"{self.name} on {self.meta.dataset}").savefig(self.outputs.curves, dpi=110)
        journal = run.journal
        journal.log_metrics({"best_val_accuracy": float(final_val["accuracy"]), "best_val_loss": float(final_val["loss"])})
        for path, folder in ((self.outputs.curves, None), (self.outputs.history, None), (self.checkpoints.best, "checkpoints")):
            if path.is_file():
                journal.log_artifact(path, folder)
        if self.settings.tracking.log_models:
            journal.log_model(self.outputs.model, self.val_sample)
        result = TrainResult(self._metrics(final, final_val), RunInfo(
            self.name, self.meta.dataset, run.run_id, run.experiment_id, run.uri, None,
        ))  # fmt: skip
        log.info(
            "%s: val_accuracy %.4f (best evaluation %d of %d, %d steps, %.1fs); MLflow run %s", self.name,
            result.metrics.val_accuracy, self.state.best_epoch, self.state.epoch, self.state.step, self.state.train_time_s, run.run_id,
        )  # fmt: skip
        return result

    def _metrics(self, final, final_val: dict) -> TrainMetrics:
        state = self.state
        trained_images = (state.step - self.steps_before) * self.settings.recipe.training.batch_size
        return TrainMetrics(
            best_epoch=state.best_epoch,
            epochs=state.epoch,
            steps=state.step,
            stopped_early=state.stopped_early,
            train_time_s=round(state.train_time_s, 3),
            initial_val_accuracy=float(state.initial_val_accuracy),
            val_accuracy=float(final_val["accuracy"]),
            val_loss=float(final_val["loss"]),
            trainable_params=int(sum(np.prod(w.shape) for w in final.trainable_weights)),
            images_per_s=round(trained_images / self.fit_time_s, 1) if self.fit_time_s > 0 else 0.0,
        )
