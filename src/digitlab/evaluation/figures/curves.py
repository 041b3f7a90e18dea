"""Training curves of one recipe (history.csv), best epoch marked.

Not shown per recipe in the report: the report overlays every recipe's curves in one figure.
"""

from __future__ import annotations

from digitlab.evaluation import plots
from digitlab.evaluation.figures import EvaluationData, Placement, figure


@figure("curves", filename="training_curves.png", title="Training curves", placement=Placement.NOT_SHOWN, order=30)
def draw(data: EvaluationData):
    best = {data.recipe: data.best_epoch} if data.best_epoch is not None else None
    return plots.training_curves_figure({data.recipe: data.history}, best, title=f"Training curves ({data.recipe})")
