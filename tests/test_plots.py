"""Each figure function writes a non-empty PNG of the expected size, for 10 and for 100 classes."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from digitlab.evaluation import plots


def png_size(path):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
    with Image.open(path) as image:
        image.load()
        return image.size


def fake_predictions(num_classes: int, n: int = 400, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % num_classes
    logits = rng.normal(size=(n, num_classes))
    logits[np.arange(n), y] += 2.5
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y, probabilities


@pytest.mark.parametrize(("num_classes", "expected"), [(10, (770, 650)), (100, (1520, 1400))])
def test_confusion_matrix(tmp_path, num_classes, expected):
    y, probabilities = fake_predictions(num_classes)
    counts = np.zeros((num_classes, num_classes), dtype=int)
    np.add.at(counts, (y, probabilities.argmax(axis=1)), 1)
    names = [f"class_{i}" for i in range(num_classes)]
    figure = plots.confusion_matrix_figure(counts, names)
    axes = figure.axes[0]
    # Counts in the cells up to 30 classes; for 100 only colours, with thinned ticks.
    assert (len(axes.texts) > 0) == (num_classes <= plots.MAX_ANNOTATED_CLASSES)
    assert len(axes.get_xticks()) <= plots.MAX_TICKS
    assert png_size(plots.save_png(figure, tmp_path / "confusion.png")) == expected
    shares = counts / counts.sum(axis=1, keepdims=True)
    assert png_size(plots.save_png(plots.confusion_matrix_figure(shares, names, normalized=True), tmp_path / "norm.png")) == expected


def test_training_curves_single_and_overlaid(tmp_path):
    history = {"epoch": [0, 1, 2, 3], "loss": [2.3, 1.0, 0.6, 0.5], "accuracy": [0.1, 0.7, 0.8, 0.85],
               "val_loss": [2.3, 1.1, 0.8, 0.9], "val_accuracy": [0.1, 0.65, 0.75, 0.74]}
    figure = plots.training_curves_figure({"cnn": history}, {"cnn": 2})
    assert [line.get_label() for line in figure.axes[0].lines] == ["train", "validation", "best epoch (2)"]
    assert png_size(plots.save_png(figure, tmp_path / "curves.png")) == (1200, 450)
    overlaid = plots.training_curves_figure({"linear": history, "mlp": history, "cnn": history}, {"cnn": 2})
    assert len(overlaid.axes[1].lines) == 7
    assert png_size(plots.save_png(overlaid, tmp_path / "all.png")) == (1200, 450)


@pytest.mark.parametrize("num_classes", [10, 100])
def test_roc(tmp_path, num_classes):
    y, probabilities = fake_predictions(num_classes)
    figure = plots.roc_figure(y, probabilities, [str(i) for i in range(num_classes)], classes_shown=3)
    labels = [line.get_label() for line in figure.axes[0].lines]
    assert labels[0].startswith("micro-average") and labels[1].startswith("macro-average") and len(labels) == 2 + 3 + 1
    assert png_size(plots.save_png(figure, tmp_path / "roc.png")) == (650, 600)


def test_misclassified_grid(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(9, 28, 28, 1), dtype=np.uint8)
    figure = plots.image_grid_figure(images, [str(i) for i in range(9)], [str((i + 1) % 9) for i in range(9)])
    assert figure.axes[0].get_xlabel() == "true 0\npredicted 1"
    assert png_size(plots.save_png(figure, tmp_path / "errors.png")) == (690, 750)
    rgb = rng.integers(0, 256, size=(4, 32, 32, 3), dtype=np.uint8)
    assert png_size(plots.save_png(plots.image_grid_figure(rgb, list("abcd"), list("efgh")), tmp_path / "rgb.png")) == (690, 750)


@pytest.mark.parametrize(("count", "expected"), [(10, (1420, 200)), (100, (1420, 1460))])
def test_weight_maps_diverging_and_symmetric(tmp_path, count, expected):
    maps = np.random.default_rng(0).normal(size=(count, 28, 28))
    maps[0, 0, 0] = 5.0  # the largest magnitude sets both ends of the scale
    figure = plots.weight_maps_figure(maps, [f"class {i}" for i in range(count)])
    image = figure.axes[0].images[0]
    assert image.get_cmap().name == "RdBu_r"  # red positive, blue negative
    assert image.get_clim() == (-5.0, 5.0)
    assert png_size(plots.save_png(figure, tmp_path / "weights.png")) == expected


def test_save_png_leaves_no_partial_file(tmp_path):
    figure = plots.weight_maps_figure(np.ones((1, 3, 3)), ["one"])
    path = plots.save_png(figure, tmp_path / "deep" / "w.png")
    assert [p.name for p in path.parent.iterdir()] == ["w.png"]


def test_long_class_names_are_cut_in_the_middle_and_leave_the_matrix_its_room() -> None:
    """Folder names of 60 characters as tick labels squeezed a 12-class matrix into a fifth of its figure's width."""
    names = [f"a very long class name from a folder called like this one {i}" for i in range(12)]
    figure = plots.confusion_matrix_figure(np.eye(12, dtype=int) * 5, names)
    figure.canvas.draw()
    matrix_axes = figure.axes[0]
    labels = [tick.get_text() for tick in matrix_axes.get_xticklabels()]
    assert len(set(labels)) == 12 and all(len(label) <= plots.MAX_LABEL_CHARS for label in labels), labels
    assert labels[3].startswith("a very lo") and labels[3].endswith("is one 3") and "…" in labels[3], labels[3]
    assert matrix_axes.get_position().width > 0.55 and matrix_axes.get_position().height > 0.55
    plots.png_bytes(figure)
    # Names that read the same once cut are numbered, so each row can still be told from the others.
    same = plots._class_labels(["holiday_photos_A_from_the_beach", "holiday_photos_B_from_the_beach", "short"], [0, 1, 2])
    assert same == ["0: holiday_p…_the_beach", "1: holiday_p…_the_beach", "2: short"], same
