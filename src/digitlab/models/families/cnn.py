"""Convolutional network: blocks of convolutions, each followed by pooling, then a dense head."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, ValidationInfo, field_validator

from digitlab.models.base import FAMILIES, Activation, ArchitectureBase, batch_norm
from digitlab.schema import Fraction, PositiveInt


@FAMILIES.register("cnn")
class CnnSettings(ArchitectureBase):
    name: Literal["cnn"] = "cnn"
    conv_filters: Annotated[list[PositiveInt], Field(min_length=1)] = [32, 64]  # one block per entry
    convs_per_block: PositiveInt | list[PositiveInt] = 1  # convolutions stacked in each block, or one count per block
    kernel_size: PositiveInt = 3
    pool_size: PositiveInt = 2
    activation: Activation = "relu"
    batch_norm: bool = True  # between each convolution and its activation
    pool_first: bool = False  # pool each block's last convolution before its normalisation and activation
    dense_units: list[PositiveInt] = [256]  # the head's hidden layers
    dropout: Fraction = 0.2  # before the output layer, and half of it after each block

    @field_validator("convs_per_block")
    @classmethod
    def _one_count_per_block(cls, value: int | list[int], info: ValidationInfo) -> int | list[int]:
        filters = info.data.get("conv_filters", ())
        if isinstance(value, list) and filters and len(value) != len(filters):
            # Named in full: the usual cause is a changed conv_filters, not this setting.
            raise ValueError(
                f"one count for every block, or a list of {len(filters)} (one per conv_filters entry: conv_filters={list(filters)}); "
                "set both when changing the number of blocks"
            )
        return value

    misfit_setting: ClassVar[str] = "conv_filters"
    misfit_advice: ClassVar[str] = "use fewer conv_filters blocks or a smaller pool_size"

    def outputs(self, pixels: Any, num_classes: int) -> Any:
        import keras

        x = pixels
        for block, (filters, convs) in enumerate(zip(self.conv_filters, self.block_convs(), strict=True), start=1):
            x = self._block(x, block, filters, convs)
        x = keras.layers.Flatten(name="flatten")(x)
        for i, units in enumerate(self.dense_units, start=1):
            x = keras.layers.Dense(units, activation=self.activation, kernel_regularizer=self.regularizer(), name=f"dense_{i}")(x)
            if self.dropout > 0:
                x = keras.layers.Dropout(self.dropout, name=f"dense_{i}_dropout")(x)
        return keras.layers.Dense(num_classes, activation="softmax", name="softmax")(x)

    def block_convs(self) -> list[int]:
        """The number of convolutions in each block."""
        if isinstance(self.convs_per_block, int):
            return [self.convs_per_block] * len(self.conv_filters)
        return list(self.convs_per_block)

    def _block(self, x: Any, block: int, filters: int, convs: int) -> Any:
        import keras

        for conv in range(1, convs + 1):
            layer = keras.layers.Conv2D(
                filters, self.kernel_size, padding="same", kernel_regularizer=self.regularizer(), name=f"block{block}_conv{conv}"
            )
            x = layer(x)
            if self.pool_first and conv == convs:
                x = keras.layers.MaxPooling2D(self.pool_size, name=f"block{block}_pool")(x)
            if self.batch_norm:
                x = batch_norm(f"block{block}_batch_norm{conv}")(x)
            x = keras.layers.Activation(self.activation, name=f"block{block}_{self.activation}{conv}")(x)
        if not self.pool_first:
            x = keras.layers.MaxPooling2D(self.pool_size, name=f"block{block}_pool")(x)
        if self.dropout > 0:
            # Half the head's rate: convolutions share weights and overfit less.
            x = keras.layers.Dropout(self.dropout / 2, name=f"block{block}_dropout")(x)
        return x
