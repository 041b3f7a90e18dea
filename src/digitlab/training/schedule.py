"""How long a recipe trains, how often it is evaluated, and when it stops early (``conf/training/``)."""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import Field

from digitlab.errors import ConfigError
from digitlab.schema import Fraction, NonNegativeFloat, NonNegativeInt, PositiveInt, Strict


class EarlyStoppingSettings(Strict):
    """When a run stops before its schedule ends (README "Training: early stopping" has the reasoning).

    Two rules make it respect a decaying learning rate and any validation set's size:

    - ``start_fraction``: with a decaying schedule (``optimizer.schedule``), no stop before this
      fraction of the planned steps. A cosine schedule earns much of its accuracy in its last,
      low-rate part; a plateau before it is the high rate's noise, not the end of learning.
    - ``min_delta_images``: for ``val_accuracy``, an improvement must also be at least this many
      more validation images right. Accuracy moves in steps of one image (1/500 on 500 images,
      1/5,000 on 5,000), so a fixed ``min_delta`` means a different rule on every set.
    """

    enabled: bool
    monitor: Literal["val_accuracy", "val_loss", "accuracy", "loss"]
    patience: PositiveInt  # evaluations without improvement before stopping
    min_delta: NonNegativeFloat  # smallest change that counts as an improvement
    # conf/training/default.yaml sets both (1 and 0.8); these defaults are the rule before them, for a params.yaml
    # written by an older digitlab (a DVC experiment of an older commit) that has neither.
    min_delta_images: NonNegativeInt = 0  # val_accuracy: and at least this many more validation images right
    start_fraction: Annotated[float, Field(ge=0, le=1)] = 0.0  # decaying schedule: no stop before this fraction of it
    restore_best_weights: bool

    def threshold(self, validation_size: int) -> float:
        """The smallest change of the monitored value that counts, on ``validation_size`` validation images."""
        if self.monitor == "val_accuracy" and self.min_delta_images and validation_size:
            # Half an image below the count: accuracies are k/n in floating point, never exactly.
            return max(self.min_delta, (self.min_delta_images - 0.5) / validation_size)
        return self.min_delta

    def improves(self, new: float, old: float, validation_size: int = 0) -> bool:
        """Whether ``new`` is better than ``old`` by more than :meth:`threshold`."""
        delta = self.threshold(validation_size)
        if "loss" in self.monitor:
            return new < old - delta
        return new > old + delta


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
    # Train towards (1 - s) on the right class and s / classes on each: a softer target, a less
    # over-confident model. 0: the plain cross-entropy (an older params.yaml keeps it).
    label_smoothing: Fraction = 0.0
    # At most this many optimizer steps per call into TensorFlow (Keras' steps_per_execution; the
    # plan takes the most that divides every evaluation period). A call per step costs CPU in Python
    # and dispatch: several steps per call take 0.77x / 0.81x / 0.88x of the CPU per step of the
    # default linear / MLP / CNN and give the same weights bit for bit (benchmarks/steps_per_call.py).
    # Per-batch callbacks (the progress bar, a stop request) then act every few steps.
    # 1: a call per step, as Keras does by default; a params.yaml from before this setting gets 16.
    steps_per_call: PositiveInt = 16

    def check(self, prefix: str) -> None:
        if self.max_steps is not None and self.eval_every_steps is not None and self.eval_every_steps > self.max_steps:
            raise ConfigError(f"{prefix}.eval_every_steps", self.eval_every_steps, f"at most max_steps ({self.max_steps}), or there is no evaluation")

    def plan(self, train_size: int, min_steps: int = 0, decaying: bool = False) -> Plan:
        """The schedule on ``train_size`` training images, at least ``min_steps`` optimizer steps long
        (``dataset.min_train_steps``: on a small collection, ``epochs`` passes are few steps) unless
        ``max_steps`` says otherwise (the evaluations then stay as many as ``epochs`` gives, each longer).
        Early stopping waits until ``min_steps`` are done and, when the learning rate is ``decaying``,
        until ``early_stopping.start_fraction`` of the steps are."""
        steps_per_pass = math.ceil(train_size / self.batch_size)
        by_epochs = self.epochs * steps_per_pass
        total_steps = self.max_steps or max(by_epochs, min_steps)
        steps_per_eval = self.eval_every_steps or self.eval_every_epochs * steps_per_pass
        if not (self.eval_every_steps or self.max_steps) and total_steps > by_epochs:
            # min_steps stretched the run: the evaluation periods stretch with it, so that a small collection is
            # evaluated (and checkpointed) as often as its epochs say, not after every pass of a few steps.
            steps_per_eval = math.ceil(total_steps / math.ceil(self.epochs / self.eval_every_epochs))
        evaluations = math.ceil(total_steps / steps_per_eval)
        wait_steps = 0 if self.max_steps else min_steps
        if decaying:
            wait_steps = max(wait_steps, math.ceil(self.early_stopping.start_fraction * total_steps))
        return Plan(
            steps_per_eval=steps_per_eval, evaluations=evaluations, total_steps=total_steps,
            first_stop=min(evaluations, math.ceil(wait_steps / steps_per_eval)), max_steps_per_call=self.steps_per_call,
        )  # fmt: skip


class Plan(Strict):
    """Steps per evaluation, number of evaluations (Keras epochs) and total optimizer steps."""

    steps_per_eval: int
    evaluations: int
    total_steps: int
    first_stop: int = 0  # early stopping may stop the run after this evaluation, not before
    max_steps_per_call: int  # TrainingSettings.steps_per_call

    @property
    def steps_per_execution(self) -> int:
        """Optimizer steps per call into TensorFlow (Keras' ``steps_per_execution``): the most, up to
        ``max_steps_per_call``, that divide every evaluation period, a last shorter one included, so that
        evaluations, callbacks and a stop at ``total_steps`` land on the same steps as one step per call."""
        period = math.gcd(self.steps_per_eval, self.total_steps)
        return max(count for count in range(1, min(self.max_steps_per_call, period) + 1) if period % count == 0)
