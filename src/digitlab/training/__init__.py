"""Training a recipe (model + optimizer + schedule) on the prepared data, tracked in MLflow.

``digitlab.training.loop.train(settings)`` is the whole stage. The package itself imports
nothing: the configuration schema reads ``schedule`` and ``optimizers`` from it quickly.
"""
