"""Measuring a trained model on the test split: metrics, figures and their orchestration.

- :mod:`digitlab.evaluation.metrics`: pure functions, arrays in, numbers out;
- :mod:`digitlab.evaluation.plots`: pure functions, arrays in, matplotlib figures out;
- :mod:`digitlab.evaluation.figures`: the registry of figures, one module each
  (what the evaluate stage draws, MLflow gets and the report shows);
- :mod:`digitlab.evaluation.outputs`: the evaluate stage's files, written and read;
- :mod:`digitlab.evaluation.evaluate`: the evaluate stage (load, compute, write, log to MLflow).
"""
