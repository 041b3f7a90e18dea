"""What every model family shares: the settings base class, the registry, the common layers' settings.

A family is one module of :mod:`digitlab.models.families`: a subclass of
:class:`ArchitectureBase` holding its settings (validated by pydantic, as
``models.<recipe>.model`` in the configuration) and building its layers with
the Keras functional API in :meth:`ArchitectureBase.outputs`, registered with
``@FAMILIES.register("<name>")``.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from digitlab.registry import Registry
from digitlab.schema import NonNegativeFloat, Strict

# Every family module registers its settings class here; discover() imports them all.
FAMILIES: Registry[type[ArchitectureBase]] = Registry("model family", "digitlab.models.families")

# Keras' default (0.99) needs thousands of steps before the moving statistics
# used at inference match the batches: on mnist_5k (28 steps an epoch) the CNN
# then scores ~12% on validation while training at 90%. 0.9 settles in ~50 steps.
BATCH_NORM_MOMENTUM = 0.9

# The activations a family's ``activation`` setting may name (Keras names).
Activation = Literal["relu", "elu", "gelu", "selu", "sigmoid", "tanh", "swish", "linear"]


class ArchitectureBase(Strict):
    """Settings of one model family, and how it turns rescaled pixels into class probabilities.

    Subclasses narrow ``name`` to their registered name (``name: Literal["cnn"] = "cnn"``),
    add their settings as fields, and implement :meth:`outputs`.
    """

    name: str
    l2: NonNegativeFloat = 0.0  # L2 weight penalty; 0 disables

    # When the layers do not fit the input images (e.g. more pooling than 8x8
    # pixels allow), the error names this setting and gives this advice.
    misfit_setting: ClassVar[str] = "name"
    misfit_advice: ClassVar[str] = "choose settings whose layers fit images of this shape"

    def outputs(self, pixels: Any, num_classes: int) -> Any:
        """The softmax probabilities tensor for ``pixels`` (a Keras tensor of 0-1 values, shape (None, H, W, C)).

        Build with the functional API: ``x = keras.layers.Dense(...)(x)``. Give every
        layer a name; create layers in a fixed order (their initial weights are drawn
        in that order, so the order is part of what a seed reproduces).
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement outputs()")

    def regularizer(self) -> Any:
        """A fresh L2 kernel regularizer for one layer, or None when ``l2`` is 0."""
        import keras

        return keras.regularizers.L2(self.l2) if self.l2 > 0 else None


def batch_norm(name: str) -> Any:
    """A batch-normalisation layer with digitlab's momentum (see :data:`BATCH_NORM_MOMENTUM`)."""
    import keras

    return keras.layers.BatchNormalization(momentum=BATCH_NORM_MOMENTUM, name=name)
