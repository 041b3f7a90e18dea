"""How long a recipe trains, how often it is evaluated, and when it stops early (``conf/training/``)."""

from __future__ import annotations

import math
from typing import Literal

from digitlab.errors import ConfigError
from digitlab.schema import NonNegativeFloat, PositiveInt, Strict


class EarlyStoppingSettings(Strict):
    enabled: bool
    monitor: Literal["val_accuracy", "val_loss", "accuracy", "loss"]
    patience: PositiveInt  # evaluations without improvement before stopping
    min_delta: NonNegativeFloat  # smallest change that counts as an improvement
    restore_best_weights: bool

    def improves(self, new: float, old: float) -> bool:
        """Whether ``new`` is better than ``old`` by more than ``min_delta``."""
        if "loss" in self.monitor:
            return new < old - self.min_delta
        return new > old + self.min_delta


class CheckpointSettings(Strict):
    every_epochs: PositiveInt


class TrainingSettings(Strict):
    epochs: PositiveInt
    max_steps: PositiveInt | None = None  # wins over epochs when set
    batch_size: PositiveInt
    shuffle_buffer: PositiveInt  # images
    deterministic: bool
    early_stopping: EarlyStoppingSettings
    eval_every_epochs: PositiveInt
    eval_every_steps: PositiveInt | None = None  # wins over eval_every_epochs when set
    checkpoint: CheckpointSettings
    resume: bool

    def check(self, prefix: str) -> None:
        if self.max_steps is not None and self.eval_every_steps is not None and self.eval_every_steps > self.max_steps:
            raise ConfigError(f"{prefix}.eval_every_steps", self.eval_every_steps, f"at most max_steps ({self.max_steps}), or there is no evaluation")

    def plan(self, train_size: int, min_steps: int = 0) -> Plan:
        """The schedule on ``train_size`` training images, at least ``min_steps`` optimizer steps long
        (``dataset.min_train_steps``: on a small collection, ``epochs`` passes are few steps) unless
        ``max_steps`` says otherwise. Early stopping waits until ``min_steps`` are done."""
        steps_per_pass = math.ceil(train_size / self.batch_size)
        total_steps = self.max_steps or max(self.epochs * steps_per_pass, min_steps)
        steps_per_eval = self.eval_every_steps or self.eval_every_epochs * steps_per_pass
        return Plan(
            steps_per_eval=steps_per_eval, evaluations=math.ceil(total_steps / steps_per_eval), total_steps=total_steps,
            first_stop=0 if self.max_steps else min(math.ceil(total_steps / steps_per_eval), math.ceil(min_steps / steps_per_eval)),
        )  # fmt: skip


class Plan(Strict):
    """Steps per evaluation, number of evaluations (Keras epochs) and total optimizer steps."""

    steps_per_eval: int
    evaluations: int
    total_steps: int
    first_stop: int = 0  # early stopping may stop the run after this evaluation, not before
