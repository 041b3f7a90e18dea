"""Training curves: a pure function from history rows to a figure."""

from __future__ import annotations

from collections.abc import Sequence

from matplotlib.figure import Figure


def plot_curves(history: Sequence[dict[str, float]], title: str = "") -> Figure:
    """Loss and accuracy per evaluation, train and validation, with the best validation accuracy marked."""
    figure = Figure(figsize=(10, 4), layout="constrained")
    loss_axes, accuracy_axes = figure.subplots(1, 2)
    epochs = [row["epoch"] for row in history]
    for axes, metric in ((loss_axes, "loss"), (accuracy_axes, "accuracy")):
        axes.plot(epochs, [row[metric] for row in history], marker=".", label=f"train {metric}")
        axes.plot(epochs, [row[f"val_{metric}"] for row in history], marker=".", label=f"validation {metric}")
        axes.set_xlabel("evaluation (epoch; 0 = before training)")
        axes.set_ylabel(metric)
        axes.grid(alpha=0.3)
    if history:
        best = max(history, key=lambda row: row["val_accuracy"])
        accuracy_axes.scatter([best["epoch"]], [best["val_accuracy"]], color="black", zorder=3, label=f"best {best['val_accuracy']:.4f}")
    for axes in (loss_axes, accuracy_axes):
        axes.legend()
    if title:
        figure.suptitle(title)
    return figure
