"""Training a recipe (model + optimizer + schedule) on the prepared data, tracked in MLflow.

``train(cfg)`` is the whole stage: see :mod:`digitlab.training.loop`.
"""

from digitlab.training.loop import TrainResult, train

__all__ = ["TrainResult", "train"]
