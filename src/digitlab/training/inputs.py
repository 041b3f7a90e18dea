"""tf.data input pipelines: shuffle with a seed, batch, prefetch.

Pixels stay 0-255 float32 here: the model's first layer rescales them, so the
saved model takes the same raw pixels at prediction time.
"""

from __future__ import annotations

import numpy as np


def _as_float(x, y):
    import tensorflow as tf

    return tf.cast(x, tf.float32), y


def _cast_to_float():
    """``_as_float`` as ``Dataset.map`` takes it, without AutoGraph: it has no Python control flow to convert, and
    a converted function is written to a ``__autograph_generated_file*.py`` in the temp folder that only a normal
    exit removes (a killed training, or a sweep's worker that its pool ended, left one behind)."""
    import tensorflow as tf

    return tf.autograph.experimental.do_not_convert(_as_float)


def training_dataset(x: np.ndarray, y: np.ndarray, batch_size: int, shuffle_buffer: int, seed: int):
    """Endless shuffled batches: Keras cuts them into evaluation periods (``steps_per_epoch``).

    Repeating after batching keeps every pass over the data a whole number of
    batches, so an epoch of ``ceil(N / batch_size)`` steps is exactly one pass.
    """
    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices((x, y))
    dataset = dataset.shuffle(min(shuffle_buffer, len(y)), seed=seed, reshuffle_each_iteration=True)
    return dataset.batch(batch_size).repeat().map(_cast_to_float(), num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def evaluation_dataset(x: np.ndarray, y: np.ndarray, batch_size: int):
    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size)
    return dataset.map(_cast_to_float(), num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
