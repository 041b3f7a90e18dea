"""The most confidently misclassified test images, with their true and predicted classes."""

from __future__ import annotations

import numpy as np

from digitlab.evaluation import plots
from digitlab.evaluation.figures import EvaluationData, figure

GRID_COLUMNS = 3


def most_confident_errors(y_true: np.ndarray, probabilities: np.ndarray, count: int) -> np.ndarray:
    """Indices of up to ``count`` misclassified images, the most confidently wrong first."""
    y_pred = probabilities.argmax(axis=1)
    wrong = np.flatnonzero(y_pred != y_true)
    confidence = probabilities[wrong, y_pred[wrong]]
    return wrong[np.argsort(-confidence, kind="stable")][:count]


@figure("errors", filename="misclassified.png", title="Most confident mistakes", order=40)
def draw(data: EvaluationData):
    names, y_pred, probabilities = data.class_names, data.y_pred, data.probabilities
    errors = most_confident_errors(data.y_test, probabilities, GRID_COLUMNS * GRID_COLUMNS)
    return plots.image_grid_figure(
        data.x_test[errors],
        [names[i] for i in data.y_test[errors]],
        [f"{names[y_pred[i]]} ({probabilities[i, y_pred[i]]:.0%})" for i in errors],
        columns=GRID_COLUMNS,
        title=f"Most confident mistakes ({data.recipe})",
    )
