"""Confusion matrix, counts: rows actual class, columns predicted."""

from __future__ import annotations

from digitlab.evaluation import metrics, plots
from digitlab.evaluation.figures import EvaluationData, figure


@figure("confusion", filename="confusion_matrix.png", title="Confusion matrices", order=10)
def draw(data: EvaluationData):
    counts = metrics.confusion_matrix(data.y_test, data.y_pred, data.meta.num_classes)
    return plots.confusion_matrix_figure(counts, data.class_names, title=f"Confusion matrix ({data.recipe})")
