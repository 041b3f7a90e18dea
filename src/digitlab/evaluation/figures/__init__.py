"""The evaluate stage's figures: one module per figure, each registered once.

A figure is a :class:`FigureSpec`: its key, the file it is written to under
``<paths.reports>/<recipe>/figures/``, the heading the HTML report shows it
under, how the report lays it out, and a function that draws it from an
:class:`EvaluationData` (or returns ``None`` where it does not apply, e.g.
weight maps of a model whose first learned layer is neither Dense nor Conv2D).

The evaluate stage draws every registered figure, writes it and logs it to
MLflow (``evaluation/figures/``); the report shows each one, in
:func:`report_order`, for every recipe that has it. Adding a figure is adding
a module to this package::

    from digitlab.evaluation import plots
    from digitlab.evaluation.figures import EvaluationData, figure

    @figure("calibration", filename="calibration.png", title="Calibration", order=45)
    def draw(data: EvaluationData):
        return plots.some_figure(data.y_test, data.probabilities, title=f"Calibration ({data.recipe})")

Drawing is the plots in :mod:`digitlab.evaluation.plots` (arrays in, Figure
out); a figure module only picks its arrays out of the :class:`EvaluationData`.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from digitlab.registry import Registry

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

    from digitlab.data.prepared import Meta


@dataclass(frozen=True)
class EvaluationData:
    """What a figure may draw from: one recipe's model and its predictions on the test split."""

    recipe: str
    meta: Meta
    x_test: np.ndarray  # uint8 (N, H, W, C)
    y_test: np.ndarray  # int64 (N,)
    probabilities: np.ndarray  # float (N, K)
    history: pd.DataFrame  # history.csv, one row per epoch (TrainOutputs.read_history)
    best_epoch: int | None
    model: Any  # the Keras model
    roc_classes: int = 3  # evaluate.roc_classes: single-class ROC curves drawn

    @property
    def y_pred(self) -> np.ndarray:
        return self.probabilities.argmax(axis=1)

    @property
    def class_names(self) -> list[str]:
        return self.meta.class_names


class Placement(str, enum.Enum):
    """How the HTML report lays out a figure's pictures, one per recipe."""

    SIDE_BY_SIDE = "side_by_side"  # a grid, recipes next to each other
    WIDE = "wide"  # each recipe's picture the page's width, one under the other
    NOT_SHOWN = "not_shown"  # written and logged to MLflow, not shown in the report


Draw = Callable[[EvaluationData], "Figure | None"]


@dataclass(frozen=True)
class FigureSpec:
    key: str
    filename: str  # under figures/ (and evaluation/figures/ in MLflow)
    title: str  # the report's heading
    draw: Draw
    placement: Placement = Placement.SIDE_BY_SIDE
    note: str = ""  # a paragraph under the report's heading
    order: int = 100  # position in the report: lower first, then by registration


FIGURES: Registry[FigureSpec] = Registry("figure", "digitlab.evaluation.figures")
_FILENAMES: dict[str, str] = {}  # filename -> key: two figures never share a file


def figure(
    key: str, *, filename: str, title: str, placement: Placement = Placement.SIDE_BY_SIDE, note: str = "", order: int = 100
) -> Callable[[Draw], FigureSpec]:
    """Decorator: register a drawing function as figure ``key``; returns its :class:`FigureSpec`."""
    if not filename.endswith(".png") or "/" in filename:
        raise ValueError(f"figure {key!r}: filename must be a plain *.png name, got {filename!r}")

    def register(draw: Draw) -> FigureSpec:
        spec = FIGURES.register(key)(FigureSpec(key, filename, title, draw, Placement(placement), note, order))
        if _FILENAMES.setdefault(filename, key) != key:
            raise RuntimeError(f"figures {_FILENAMES[filename]!r} and {key!r} are both written to {filename}")
        return spec

    return register


def report_order() -> list[FigureSpec]:
    """Every registered figure, in the report's order (``order``, then registration)."""
    return sorted((spec for _, spec in FIGURES.items()), key=lambda spec: spec.order)
