"""Figures: pure functions, arrays in, a matplotlib Figure out (Agg backend, no display needed).

:func:`save_png` writes a figure to disk (atomically) and closes it; :func:`png_bytes`
renders one in memory. Which figures the evaluate stage draws, and from what,
is :mod:`digitlab.evaluation.figures`.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from sklearn.metrics import auc, roc_curve  # noqa: E402

from digitlab.evaluation import fonts  # noqa: E402
from digitlab.io import atomic_path  # noqa: E402

DPI = 100
# Above this many classes per-cell counts are unreadable; the colour alone tells the story.
MAX_ANNOTATED_CLASSES = 30
# At most this many tick labels per axis, so that 100 class names don't overlap.
MAX_TICKS = 30
# Class names longer than this are cut in the middle in tick labels and captions (short_text).
MAX_LABEL_CHARS = 20
# Positive weights red, negative blue, zero white (as in the softmax-regression tutorial).
DIVERGING_CMAP = "RdBu_r"


def plain_text(text: object) -> str:
    """``text`` as matplotlib shows it literally: every ``$`` escaped, so no class name is read as mathtext.

    Every class name (or run name) a figure shows goes through here: ``$x$``,
    ``a_b^c``, ``50%``, ``&``, ``#``, ``{}``, spaces and any unicode come out as
    written. (Only ``$`` starts mathtext; digitlab never turns on ``text.usetex``.)
    Characters DejaVu Sans lacks (Chinese, Japanese, Korean...) are drawn with an
    installed font that has them (:func:`digitlab.evaluation.fonts.cover`), in the
    texts a figure creates after this call; a figure's own titles, axis labels and
    tick labels exist from its creation on, so each figure function here covers
    its names before it creates its figure.
    """
    text = str(text)
    fonts.cover(text)
    return text.replace("$", r"\$")


def short_text(text: object, limit: int = MAX_LABEL_CHARS) -> str:
    """:func:`plain_text` of ``text`` cut in the middle to at most ``limit`` characters (``golden_re…ppies_2023``):
    a long folder name as a tick label or caption squeezed its figure into a corner. Its start and end stay, since
    names of one collection tend to differ there; meta.json and classification_report.json keep names whole."""
    text = str(text)
    if len(text) > limit:
        head = (limit - 1) // 2
        text = f"{text[:head]}…{text[len(text) - (limit - 1 - head):]}"
    return plain_text(text)


def _class_labels(class_names: Sequence[str], indices: Sequence[int]) -> list[str]:
    """Tick labels for ``class_names[indices]``, shortened; numbered when two shortened ones would read the same."""
    labels = [short_text(class_names[i]) for i in indices]
    if len(set(labels)) < len(labels):
        labels = [f"{i}: {label}" for i, label in zip(indices, labels, strict=True)]
    return labels


def save_png(figure: Figure, path: Path | str) -> Path:
    """Write ``figure`` as a PNG (atomically: never half-written) and close it."""
    try:
        with atomic_path(path) as tmp:
            figure.savefig(tmp, dpi=DPI, format="png")
    finally:
        plt.close(figure)
    return Path(path)


def png_bytes(figure: Figure) -> bytes:
    """``figure`` as PNG bytes, in memory; the figure is closed."""
    buffer = io.BytesIO()
    try:
        figure.savefig(buffer, dpi=DPI, format="png")
    finally:
        plt.close(figure)
    return buffer.getvalue()


def _tick_positions(num_classes: int) -> np.ndarray:
    step = max(1, math.ceil(num_classes / MAX_TICKS))
    return np.arange(0, num_classes, step)


def confusion_matrix_figure(matrix: np.ndarray, class_names: Sequence[str], *, normalized: bool = False, title: str = "") -> Figure:
    """Heatmap of a K x K confusion matrix (rows actual, columns predicted).

    Counts (or row shares when ``normalized``) are written in each cell up to
    :data:`MAX_ANNOTATED_CLASSES` classes; beyond that only the colours and a
    thinned set of tick labels are shown.
    """
    fonts.cover(title, *class_names)
    matrix = np.asarray(matrix)
    num_classes = matrix.shape[0]
    size = min(14.0, max(5.0, 0.45 * num_classes + 2))
    figure, axes = plt.subplots(figsize=(size + 1.2, size), layout="constrained")
    image = axes.imshow(matrix, cmap="Blues", vmin=0, vmax=1 if normalized else max(1, matrix.max()), interpolation="nearest")
    figure.colorbar(image, ax=axes, shrink=0.8, label="share of actual class" if normalized else "images")
    ticks = _tick_positions(num_classes)
    labels = _class_labels(class_names, ticks)
    axes.set_xticks(ticks, labels, rotation=90 if max((len(label) for label in labels), default=0) > 2 else 0)
    axes.set_yticks(ticks, labels)
    axes.set_xlabel("predicted")
    axes.set_ylabel("actual")
    axes.set_title(title or ("Confusion matrix (row-normalised)" if normalized else "Confusion matrix"))
    if num_classes <= MAX_ANNOTATED_CLASSES:
        threshold = (1 if normalized else matrix.max()) / 2
        for (row, col), value in np.ndenumerate(matrix):
            if value == 0:
                continue
            text = f"{value:.2f}" if normalized else f"{int(value)}"
            axes.text(col, row, text, ha="center", va="center", fontsize=max(5, 11 - num_classes // 4),
                      color="white" if value > threshold else "black")
    return figure


def training_curves_figure(histories: Mapping[str, Mapping[str, Sequence[float]]], best_epochs: Mapping[str, int] | None = None, title: str = "") -> Figure:
    """Loss and accuracy per epoch, train (solid) vs validation (dashed), one colour per run.

    ``histories`` maps a run name to columns ``epoch``, ``loss``,
    ``accuracy``, ``val_loss``, ``val_accuracy`` (history.csv); the best epoch
    of each run, when given, is marked with a dotted vertical line.
    """
    fonts.cover(title, *histories)
    best_epochs = best_epochs or {}
    figure, (loss_axes, accuracy_axes) = plt.subplots(1, 2, figsize=(12, 4.5), layout="constrained")
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, (name, history) in enumerate(histories.items()):
        color = colors[index % len(colors)]
        epochs = np.asarray(history["epoch"])
        prefix = f"{plain_text(name)} " if len(histories) > 1 else ""
        for axes, metric in ((loss_axes, "loss"), (accuracy_axes, "accuracy")):
            axes.plot(epochs, history[metric], color=color, label=f"{prefix}train")
            axes.plot(epochs, history[f"val_{metric}"], color=color, linestyle="--", label=f"{prefix}validation")
            if name in best_epochs:
                axes.axvline(best_epochs[name], color=color, linestyle=":", linewidth=1.2, label=f"{prefix}best epoch ({best_epochs[name]})")
    for axes, metric in ((loss_axes, "loss"), (accuracy_axes, "accuracy")):
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_xlabel("epoch")
        axes.set_ylabel(metric)
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
    loss_axes.set_title("Loss")
    accuracy_axes.set_title("Accuracy")
    if title:
        figure.suptitle(title)
    return figure


def roc_figure(y_true: np.ndarray, probabilities: np.ndarray, class_names: Sequence[str], *, classes_shown: int = 3, title: str = "") -> Figure:
    """One-vs-rest ROC curves: micro-average, macro-average and the ``classes_shown`` hardest classes (lowest AUC)."""
    fonts.cover(title, *class_names)
    y_true = np.asarray(y_true, dtype=np.int64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    num_classes = probabilities.shape[1]
    onehot = np.eye(num_classes, dtype=np.int64)[y_true]
    present = [c for c in range(num_classes) if 0 < onehot[:, c].sum() < len(y_true)]
    figure, axes = plt.subplots(figsize=(6.5, 6), layout="constrained")
    grid = np.linspace(0, 1, 201)
    if present:
        fpr, tpr, _ = roc_curve(onehot.ravel(), probabilities.ravel())
        axes.plot(fpr, tpr, color="black", linewidth=2, label=f"micro-average (AUC {auc(fpr, tpr):.3f})")
        per_class = {c: roc_curve(onehot[:, c], probabilities[:, c]) for c in present}
        mean_tpr = np.mean([np.interp(grid, fpr_c, tpr_c) for fpr_c, tpr_c, _ in per_class.values()], axis=0)
        axes.plot(grid, mean_tpr, color="tab:gray", linewidth=2, linestyle="--",
                  label=f"macro-average (AUC {np.mean([auc(f, t) for f, t, _ in per_class.values()]):.3f})")
        hardest = sorted(present, key=lambda c: auc(per_class[c][0], per_class[c][1]))[:classes_shown]
        for c in hardest:
            fpr_c, tpr_c, _ = per_class[c]
            axes.plot(fpr_c, tpr_c, linewidth=1, label=f"class {short_text(class_names[c], 30)} (AUC {auc(fpr_c, tpr_c):.3f})")
    axes.plot([0, 1], [0, 1], color="lightgray", linestyle=":", label="chance")
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1.01)
    axes.set_xlabel("false positive rate")
    axes.set_ylabel("true positive rate")
    axes.set_title(title or "ROC curves (one vs rest)")
    axes.legend(loc="lower right", fontsize=8)
    axes.grid(alpha=0.3)
    return figure


def image_grid_figure(images: np.ndarray, true_labels: Sequence[str], predicted_labels: Sequence[str], *, columns: int = 3, title: str = "") -> Figure:
    """Up to ``columns``**2 images (uint8, N x H x W x C) captioned "true X / predicted Y"."""
    fonts.cover(title, *true_labels, *predicted_labels)
    images = np.asarray(images)
    cells = columns * columns
    figure, grid = plt.subplots(columns, columns, figsize=(2.3 * columns, 2.5 * columns), layout="constrained")
    for index, axes in enumerate(np.ravel(grid)):
        axes.set_xticks([])
        axes.set_yticks([])
        if index >= min(cells, len(images)):
            axes.axis("off")
            continue
        image = images[index]
        if image.ndim == 3 and image.shape[-1] == 1:
            axes.imshow(image[..., 0], cmap="binary" if image.mean() < 128 else "gray", vmin=0, vmax=255, interpolation="nearest")
        else:
            axes.imshow(image.astype(np.uint8), interpolation="nearest")
        axes.set_xlabel(f"true {short_text(true_labels[index])}\npredicted {short_text(predicted_labels[index])}", fontsize=9, color="firebrick")
    if not len(images):
        figure.text(0.5, 0.5, "no misclassified images", ha="center", va="center", fontsize=14)
    figure.suptitle(title or "Misclassified test images")
    return figure


def weight_maps_figure(maps: np.ndarray, titles: Sequence[str], *, title: str = "", max_columns: int = 10) -> Figure:
    """Weight maps (N x H x W) as images in a diverging colormap: red positive, blue negative.

    One colour scale, symmetric around zero, is shared by all maps so they can
    be compared with each other; white is a weight of zero.
    """
    fonts.cover(title, *titles)
    maps = np.asarray(maps, dtype=np.float64)
    count = len(maps)
    columns = max(1, min(max_columns, count))
    rows = max(1, math.ceil(count / columns))
    limit = float(np.max(np.abs(maps))) if count else 1.0
    limit = limit or 1.0
    figure, grid = plt.subplots(rows, columns, figsize=(1.3 * columns + 1.2, 1.4 * rows + 0.6), layout="constrained", squeeze=False)
    image = None
    for index, axes in enumerate(grid.ravel()):
        axes.set_xticks([])
        axes.set_yticks([])
        if index >= count:
            axes.axis("off")
            continue
        image = axes.imshow(maps[index], cmap=DIVERGING_CMAP, vmin=-limit, vmax=limit, interpolation="nearest")
        axes.set_title(short_text(titles[index], 14), fontsize=8)
    if image is not None:
        figure.colorbar(image, ax=grid, shrink=0.8, label="weight")
    figure.suptitle(title or "Learned weights")
    return figure
