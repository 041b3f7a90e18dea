"""The model families (linear, mlp, cnn) and their optimizers, built from config.

Every model takes raw pixels (float32 0-255, shape (N, H, W, C)) and returns
class probabilities: the rescaling to 0-1 is its first layer, so a saved model
needs no preprocessing from whoever loads it (evaluate, predict, MLflow serve).

To add a model family: write a ``_build_<name>`` function that appends layers
to a list, add it to ``BUILDERS`` and add ``conf/architecture/<name>.yaml``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from digitlab.errors import ConfigError, require_choice, require_non_negative, require_positive

OPTIMIZERS = ("adagrad", "adam", "rmsprop", "sgd")
SCHEDULES = ("cosine", "exponential")
# Keras' default (0.99) needs thousands of steps before the moving statistics
# used at inference match the batches: on mnist_5k (28 steps an epoch) the CNN
# then scores ~12% on validation while training at 90%. 0.9 settles in ~50 steps.
BATCH_NORM_MOMENTUM = 0.9
ACTIVATIONS = ("relu", "elu", "gelu", "selu", "sigmoid", "tanh", "swish", "linear")


def _require_fraction(setting: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ConfigError(setting, value, "a number from 0 up to (not including) 1")


def _require_units(setting: str, value: Any, allow_empty: bool = True) -> list[int]:
    if not isinstance(value, Sequence) or isinstance(value, str) or (not value and not allow_empty):
        raise ConfigError(setting, value, "a list of whole numbers greater than 0, e.g. [128]")
    for units in value:
        require_positive(setting, units, integer=True)
    return [int(units) for units in value]


def validate_model(model: Mapping[str, Any], prefix: str = "model") -> None:
    """Check an architecture's settings, naming the setting, before anything is built."""
    name = model.get("name")
    require_choice(f"{prefix}.name", name, tuple(BUILDERS))
    require_non_negative(f"{prefix}.l2", model.get("l2", 0.0))
    if name == "mlp":
        _require_units(f"{prefix}.hidden_units", model.get("hidden_units"))
        require_choice(f"{prefix}.activation", model.get("activation", "relu"), ACTIVATIONS)
        _require_fraction(f"{prefix}.dropout", model.get("dropout", 0.0))
    elif name == "cnn":
        _require_units(f"{prefix}.conv_filters", model.get("conv_filters"), allow_empty=False)
        _require_units(f"{prefix}.dense_units", model.get("dense_units"))
        for key in ("convs_per_block", "kernel_size", "pool_size"):
            require_positive(f"{prefix}.{key}", model.get(key), integer=True)
        require_choice(f"{prefix}.activation", model.get("activation", "relu"), ACTIVATIONS)
        _require_fraction(f"{prefix}.dropout", model.get("dropout", 0.0))


def validate_optimizer(optimizer: Mapping[str, Any], prefix: str = "optimizer") -> None:
    require_choice(f"{prefix}.name", optimizer.get("name"), OPTIMIZERS)
    require_positive(f"{prefix}.learning_rate", optimizer.get("learning_rate"))
    require_non_negative(f"{prefix}.momentum", optimizer.get("momentum") or 0.0)
    require_positive(f"{prefix}.clipnorm", optimizer.get("clipnorm"), allow_none=True)
    schedule = optimizer.get("schedule")
    if schedule is not None:
        require_choice(f"{prefix}.schedule", schedule, SCHEDULES)


def _regularizer(model: Mapping[str, Any]):
    import keras

    l2 = float(model.get("l2") or 0.0)
    return keras.regularizers.L2(l2) if l2 > 0 else None


def _build_linear(model: Mapping[str, Any], num_classes: int) -> list:
    import keras

    return [
        keras.layers.Flatten(name="flatten"),
        keras.layers.Dense(
            num_classes,
            activation="softmax",
            kernel_initializer=str(model.get("kernel_initializer") or "glorot_uniform"),
            kernel_regularizer=_regularizer(model),
            name="softmax",
        ),
    ]


def _build_mlp(model: Mapping[str, Any], num_classes: int) -> list:
    import keras

    layers: list = [keras.layers.Flatten(name="flatten")]
    dropout = float(model.get("dropout") or 0.0)
    for i, units in enumerate(model["hidden_units"], start=1):
        layers.append(keras.layers.Dense(int(units), kernel_regularizer=_regularizer(model), name=f"dense_{i}"))
        if model.get("batch_norm"):
            layers.append(keras.layers.BatchNormalization(momentum=BATCH_NORM_MOMENTUM, name=f"batch_norm_{i}"))
        layers.append(keras.layers.Activation(model.get("activation", "relu"), name=f"{model.get('activation', 'relu')}_{i}"))
        if dropout > 0:
            layers.append(keras.layers.Dropout(dropout, name=f"dropout_{i}"))
    layers.append(keras.layers.Dense(num_classes, activation="softmax", name="softmax"))
    return layers


def _build_cnn(model: Mapping[str, Any], num_classes: int) -> list:
    import keras

    layers: list = []
    dropout = float(model.get("dropout") or 0.0)
    activation = model.get("activation", "relu")
    kernel = int(model["kernel_size"])
    for block, filters in enumerate(model["conv_filters"], start=1):
        for conv in range(1, int(model["convs_per_block"]) + 1):
            layers.append(
                keras.layers.Conv2D(
                    int(filters), kernel, padding="same", kernel_regularizer=_regularizer(model), name=f"block{block}_conv{conv}"
                )
            )
            if model.get("batch_norm"):
                layers.append(keras.layers.BatchNormalization(momentum=BATCH_NORM_MOMENTUM, name=f"block{block}_batch_norm{conv}"))
            layers.append(keras.layers.Activation(activation, name=f"block{block}_{activation}{conv}"))
        layers.append(keras.layers.MaxPooling2D(int(model["pool_size"]), name=f"block{block}_pool"))
        if dropout > 0:
            # Half the head's rate: convolutions share weights and overfit less.
            layers.append(keras.layers.Dropout(dropout / 2, name=f"block{block}_dropout"))
    layers.append(keras.layers.Flatten(name="flatten"))
    for i, units in enumerate(model.get("dense_units") or [], start=1):
        layers.append(keras.layers.Dense(int(units), activation=activation, kernel_regularizer=_regularizer(model), name=f"dense_{i}"))
        if dropout > 0:
            layers.append(keras.layers.Dropout(dropout, name=f"dense_{i}_dropout"))
    layers.append(keras.layers.Dense(num_classes, activation="softmax", name="softmax"))
    return layers


BUILDERS: dict[str, Callable[[Mapping[str, Any], int], list]] = {
    "linear": _build_linear,
    "mlp": _build_mlp,
    "cnn": _build_cnn,
}


def build_model(model: Mapping[str, Any], image_shape: Sequence[int], num_classes: int, prefix: str = "model"):
    """A ``keras.Sequential`` for raw pixels of ``image_shape`` and ``num_classes`` classes.

    Raises :class:`ConfigError` naming the layer and the shapes when the
    architecture does not fit the input (e.g. more pooling than an 8x8 image
    allows), before any training.
    """
    import keras

    validate_model(model, prefix)
    shape = tuple(int(d) for d in image_shape)
    layers = [keras.layers.Rescaling(1.0 / 255, name="rescale_0_1"), *BUILDERS[model["name"]](model, num_classes)]
    current: tuple = (None, *shape)
    for layer in layers:
        try:
            next_shape = tuple(layer.compute_output_shape(current))
            problem = "" if all(d is None or d >= 1 for d in next_shape) else f"it would output {next_shape[1:]}"
        except ValueError as exc:
            next_shape, problem = current, str(exc).split(". Received")[0].lower()
        if problem:
            raise ConfigError(
                f"{prefix}.name",
                model["name"],
                "an architecture that fits the input",
                f"layer {layer.name!r} gets shape {current[1:]} from input images of shape {shape} and {problem}: "
                "use fewer conv_filters blocks or a smaller pool_size",
            )
        current = next_shape
    return keras.Sequential([keras.Input(shape=shape, name="pixels"), *layers], name=str(model["name"]))


def build_optimizer(optimizer: Mapping[str, Any], total_steps: int, prefix: str = "optimizer"):
    """A Keras optimizer; ``schedule`` decays the learning rate over ``total_steps`` steps."""
    import keras

    validate_optimizer(optimizer, prefix)
    learning_rate: Any = float(optimizer["learning_rate"])
    schedule = optimizer.get("schedule")
    if schedule == "cosine":
        learning_rate = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=max(total_steps, 1))
    elif schedule == "exponential":
        # Down to 1% of the initial rate by the end of the run.
        learning_rate = keras.optimizers.schedules.ExponentialDecay(learning_rate, decay_steps=max(total_steps, 1), decay_rate=0.01)
    clipnorm = optimizer.get("clipnorm")
    common = {"learning_rate": learning_rate, "clipnorm": float(clipnorm) if clipnorm else None}
    momentum = float(optimizer.get("momentum") or 0.0)
    name = optimizer["name"]
    if name == "sgd":
        return keras.optimizers.SGD(momentum=momentum, **common)
    if name == "rmsprop":
        return keras.optimizers.RMSprop(momentum=momentum, **common)
    if name == "adagrad":
        return keras.optimizers.Adagrad(**common)
    return keras.optimizers.Adam(**common)
