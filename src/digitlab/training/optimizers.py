"""The optimizer of a recipe (``conf/optimizer/``): its settings and the Keras object they build."""

from __future__ import annotations

from typing import Any, Literal

from digitlab.schema import Fraction, PositiveFloat, Strict


class OptimizerSettings(Strict):
    name: Literal["adagrad", "adam", "rmsprop", "sgd"]
    learning_rate: PositiveFloat
    momentum: Fraction = 0.0  # sgd and rmsprop; ignored by adam and adagrad
    clipnorm: PositiveFloat | None = None  # clip each gradient to this L2 norm
    schedule: Literal["cosine", "exponential"] | None = None  # decay over the whole run
    # Decoupled weight decay (AdamW's, for any optimizer): each step shrinks the weights by
    # learning rate x weight_decay. null: none.
    weight_decay: PositiveFloat | None = None
    # Polyak averaging: an exponential moving average of the weights with this momentum (0.99:
    # about the last 100 steps) is what validation scores, the checkpoints and the saved model
    # hold; the steps themselves move the raw weights. null: none.
    ema_momentum: Fraction | None = None

    def build(self, total_steps: int):
        """A Keras optimizer; ``schedule`` decays the learning rate over ``total_steps`` steps."""
        import keras

        learning_rate: Any = self.learning_rate
        if self.schedule == "cosine":
            learning_rate = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=max(total_steps, 1))
        elif self.schedule == "exponential":
            # Down to 1% of the initial rate by the end of the run.
            learning_rate = keras.optimizers.schedules.ExponentialDecay(learning_rate, decay_steps=max(total_steps, 1), decay_rate=0.01)
        common = {"learning_rate": learning_rate, "clipnorm": self.clipnorm, "weight_decay": self.weight_decay}
        if self.ema_momentum is not None:
            common |= {"use_ema": True, "ema_momentum": self.ema_momentum}
        if self.name == "sgd":
            return keras.optimizers.SGD(momentum=self.momentum, **common)
        if self.name == "rmsprop":
            return keras.optimizers.RMSprop(momentum=self.momentum, **common)
        if self.name == "adagrad":
            return keras.optimizers.Adagrad(**common)
        return keras.optimizers.Adam(**common)
