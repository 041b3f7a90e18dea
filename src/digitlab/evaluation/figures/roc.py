"""One-vs-rest ROC curves: micro- and macro-average and the ``evaluate.roc_classes`` hardest classes."""

from __future__ import annotations

from digitlab.evaluation import plots
from digitlab.evaluation.figures import EvaluationData, figure


@figure("roc", filename="roc.png", title="ROC curves", order=50)
def draw(data: EvaluationData):
    return plots.roc_figure(data.y_test, data.probabilities, data.class_names, classes_shown=data.roc_classes, title=f"ROC curves ({data.recipe})")
