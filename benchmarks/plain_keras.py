"""The plain-Keras baseline: the hand-written script digitlab replaces.

One model from the same recipe digitlab trains (a ``models.<name>`` block of
params.yaml: architecture, optimizer, batch size; built by the same
``digitlab.models`` functions, so both sides train the very same network),
trained with a bare
``model.fit`` on in-memory float32 arrays: no tf.data pipeline, no callbacks,
no tracking, no checkpoints. The benchmark runs it for the same number of
epochs as digitlab's train stage and compares the times.

    python -m benchmarks.plain_keras --params params.yaml --model cnn \
        --data data/prepared --epochs 5 --out plain.json

``--early-stopping`` turns on Keras' EarlyStopping with the recipe's monitor,
patience and min_delta (how the defaults' accuracy was checked, see
benchmarks/RESULTS.md); without it the run trains exactly ``--epochs``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

FASHION_IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzipped or not) as a numpy array."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        raw = handle.read()
    if raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_idx_dir(directory: Path, validation_size: int, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Fashion-MNIST-style IDX files as train/val/test splits (uint8 N,H,W,1 and int64 labels)."""
    splits = {}
    for split, (images, labels) in FASHION_IDX_FILES.items():
        x = read_idx(directory / images)[..., None]
        y = read_idx(directory / labels).astype(np.int64)
        splits[split] = (x, y)
    x, y = splits.pop("train")
    order = np.random.default_rng(seed).permutation(len(y))
    val, train = order[:validation_size], order[validation_size:]
    splits["train"] = (x[train], y[train])
    splits["val"] = (x[val], y[val])
    return splits


def load_prepared(directory: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from digitlab.data.prepared import SPLITS, load_split

    return {split: load_split(directory, split) for split in SPLITS}


def train(recipe, splits: dict, epochs: int, seed: int, early_stopping: bool) -> dict:
    """Plain Keras: ``model.fit`` on in-memory arrays, with the recipe's own model and optimizer."""
    import keras

    from digitlab.models import build_model

    keras.utils.set_random_seed(seed)
    x_train, y_train = splits["train"]
    x_val, y_val = splits["val"]
    x_test, y_test = splits["test"]
    # Raw 0-255 pixels as float32: the model's first layer rescales them.
    x_train, x_val, x_test = (x.astype("float32") for x in (x_train, x_val, x_test))
    num_classes = int(max(y_train.max(), y_test.max()) + 1)

    batch_size = recipe.training.batch_size
    steps_per_epoch = -(-len(y_train) // batch_size)
    model = build_model(recipe.model, x_train.shape[1:], num_classes)
    model.compile(optimizer=recipe.optimizer.build(steps_per_epoch * epochs),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    callbacks = []
    if early_stopping:
        stopping = recipe.training.early_stopping
        callbacks.append(keras.callbacks.EarlyStopping(monitor=stopping.monitor, patience=stopping.patience,
                                                       min_delta=stopping.min_delta, restore_best_weights=True))
    start = time.perf_counter()
    history = model.fit(x_train, y_train, batch_size=batch_size, epochs=epochs, verbose=2,
                        validation_data=(x_val, y_val) if early_stopping else None, callbacks=callbacks)
    train_time = time.perf_counter() - start
    epochs_run = len(history.history["loss"])
    _, test_accuracy = model.evaluate(x_test, y_test, batch_size=512, verbose=0)
    return {
        "model": recipe.model.name,
        "params": int(model.count_params()),
        "epochs": epochs_run,
        "train_images": int(len(y_train)),
        "train_time_s": train_time,
        "images_per_s": len(y_train) * epochs_run / train_time,
        "test_accuracy": float(test_accuracy),
        "val_accuracy": float(max(history.history["val_accuracy"])) if early_stopping else None,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="composed config (params.yaml)")
    parser.add_argument("--model", required=True, help="a recipe of the params file (linear, mlp, cnn, ...)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", type=Path, help="a prepared data directory (train/val/test.npz)")
    source.add_argument("--idx-dir", type=Path, help="a directory of IDX files (Fashion-MNIST layout)")
    parser.add_argument("--validation-size", type=int, default=5000, help="with --idx-dir: images held out")
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--early-stopping", action="store_true")
    parser.add_argument("--out", type=Path, help="write the result as JSON here")
    parser.add_argument("overrides", nargs="*", help="Hydra-style overrides of params, e.g. models.cnn.model.dropout=0.4")
    args = parser.parse_args(argv)

    from digitlab.config import load_params
    from digitlab.settings import load_settings

    settings = load_settings(load_params(args.params, [*args.overrides, f"model={args.model}"]))
    splits = load_prepared(args.data) if args.data else load_idx_dir(args.idx_dir, args.validation_size)
    result = train(settings.recipe, splits, args.epochs, settings.seed, args.early_stopping)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        from digitlab.io import atomic_write_text

        atomic_write_text(args.out, text + "\n")
    return result


if __name__ == "__main__":
    main()
