"""Softmax regression: one dense layer on the flattened pixels."""

from __future__ import annotations

from typing import Any, Literal

from digitlab.models.base import FAMILIES, ArchitectureBase

# Keras' built-in initializers, by the names keras.initializers.get() accepts.
KernelInitializer = Literal[
    "glorot_uniform", "glorot_normal", "he_uniform", "he_normal", "lecun_uniform", "lecun_normal",
    "zeros", "ones", "random_normal", "random_uniform", "truncated_normal", "orthogonal",
]  # fmt: skip


@FAMILIES.register("linear")
class LinearSettings(ArchitectureBase):
    name: Literal["linear"] = "linear"
    kernel_initializer: KernelInitializer = "glorot_uniform"  # the tutorial uses zeros

    def outputs(self, pixels: Any, num_classes: int) -> Any:
        import keras

        x = keras.layers.Flatten(name="flatten")(pixels)
        softmax = keras.layers.Dense(
            num_classes,
            activation="softmax",
            kernel_initializer=self.kernel_initializer,
            kernel_regularizer=self.regularizer(),
            name="softmax",
        )
        return softmax(x)
