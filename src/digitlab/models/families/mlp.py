"""Multi-layer perceptron on the flattened pixels."""

from __future__ import annotations

from typing import Any, Literal

from digitlab.models.base import FAMILIES, Activation, ArchitectureBase, batch_norm
from digitlab.schema import Fraction, PositiveInt


@FAMILIES.register("mlp")
class MlpSettings(ArchitectureBase):
    name: Literal["mlp"] = "mlp"
    hidden_units: list[PositiveInt] = [512, 256]  # one dense layer per entry; [] is softmax regression
    activation: Activation = "relu"
    dropout: Fraction = 0.2  # after each hidden layer; 0 disables
    batch_norm: bool = False  # between each hidden layer and its activation

    def outputs(self, pixels: Any, num_classes: int) -> Any:
        import keras

        x = keras.layers.Flatten(name="flatten")(pixels)
        for i, units in enumerate(self.hidden_units, start=1):
            x = keras.layers.Dense(units, kernel_regularizer=self.regularizer(), name=f"dense_{i}")(x)
            if self.batch_norm:
                x = batch_norm(f"batch_norm_{i}")(x)
            x = keras.layers.Activation(self.activation, name=f"{self.activation}_{i}")(x)
            if self.dropout > 0:
                x = keras.layers.Dropout(self.dropout, name=f"dropout_{i}")(x)
        return keras.layers.Dense(num_classes, activation="softmax", name="softmax")(x)
