"""Confusion matrix, each row divided by its total: the share of each actual class predicted as each class."""

from __future__ import annotations

from digitlab.evaluation import metrics, plots
from digitlab.evaluation.figures import EvaluationData, figure


@figure("confusion_normalized", filename="confusion_matrix_normalized.png", title="Confusion matrices, row-normalised", order=20)
def draw(data: EvaluationData):
    shares = metrics.normalize_rows(metrics.confusion_matrix(data.y_test, data.y_pred, data.meta.num_classes))
    return plots.confusion_matrix_figure(shares, data.class_names, normalized=True, title=f"Confusion matrix, row-normalised ({data.recipe})")
