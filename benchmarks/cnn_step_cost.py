"""What a training step of the CNN costs in each of its layouts, side by side in one run: ``python -m benchmarks.cnn_step_cost``.

The default CNN (``conf/config.yaml``'s ``models.cnn.model``) and the variants below are built by
digitlab's own builder (``digitlab.models.build_model``) for 28x28 grey images and 10 classes,
compiled as the train stage compiles them (Adam, sparse categorical cross-entropy), and each
trains ``--steps`` batches of ``--batch-size`` random images per round, the variants in
alternation for ``--repeats`` rounds after one warm-up. A step's cost is the process' CPU time
(all threads) per step, which another job on the machine changes less than the wall clock; the
median of the rounds is compared with the default's. Prints the table and the ratios; writes its
section of ``benchmarks/RESULTS.md`` (``--no-write``: print only).

    python -m benchmarks.cnn_step_cost [--steps 150] [--repeats 3] [--variants NAME,...] [--no-write]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

from benchmarks.options import refuse_below_one, refuse_names
from benchmarks.sections import write_section

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SECTION_START, SECTION_END = "<!-- cnn-step-cost: benchmarks/cnn_step_cost.py -->", "<!-- /cnn-step-cost -->"

# Changes from the default CNN (settings of digitlab.models.families.cnn.CnnSettings).
VARIANTS: dict[str, dict] = {
    "default": {},
    "previous_default": {"pool_first": False, "convs_per_block": 1},  # until 2026-12-07, over 20 passes
    "pool_first_convs_111": {"convs_per_block": 1},
    "pool_first_convs_112": {"convs_per_block": [1, 1, 2]},
    "convs_122": {"pool_first": False},
    "no_batch_norm": {"batch_norm": False},
}


def default_cnn() -> dict:
    """The default CNN's settings, as the project composes them from conf/."""
    from digitlab.config import compose
    from digitlab.settings import load_settings

    return load_settings(compose([], ROOT)).models["cnn"].model.model_dump()


def build(default: dict, changes: dict):
    import keras

    from digitlab.models import build_model, parse_architecture

    model = build_model(parse_architecture({**default, **changes}), (28, 28, 1), 10)
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def measure(names: list[str], steps: int, repeats: int, batch_size: int) -> dict:
    import numpy as np

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(steps * batch_size, 28, 28, 1)).astype(np.float32)
    labels = rng.integers(0, 10, size=steps * batch_size)
    default = default_cnn()
    models = {}
    for name in names:
        models[name] = build(default, VARIANTS[name])
        models[name].fit(images[: 5 * batch_size], labels[: 5 * batch_size], batch_size=batch_size, epochs=1, verbose=0)  # warm-up
    ms: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(repeats):
        for name in names:
            started = time.process_time()
            models[name].fit(images, labels, batch_size=batch_size, epochs=1, verbose=0)
            ms[name].append((time.process_time() - started) / steps * 1000)
            print(f"[cnn-step-cost] round {round_ + 1}/{repeats} {name}: {ms[name][-1]:.1f} ms CPU per step", flush=True)
    base = statistics.median(ms[names[0]])
    return {
        name: {"ms_cpu_per_step": statistics.median(values), "all": values, "ratio": statistics.median(values) / base,
               "params": int(models[name].count_params())}
        for name, values in ms.items()
    }  # fmt: skip


def markdown(results: dict, steps: int, repeats: int, batch_size: int) -> str:
    rows = "\n".join(
        f"| {name} | {', '.join(f'{k}: {v}' for k, v in VARIANTS[name].items()) or '-'} | {entry['params']:,} | {entry['ms_cpu_per_step']:.1f} | {entry['ratio']:.2f}x |" for name, entry in results.items()
    )
    return (
        f"{SECTION_START}\n## The CNN's layouts: CPU per training step\n\n"
        f"`python -m benchmarks.cnn_step_cost --steps {steps} --repeats {repeats}` ({time.strftime('%Y-%m-%d')}, "
        f"{os.cpu_count()} cores): the default CNN and its variants, built by digitlab's builder for 28x28 grey images, "
        f"{steps} steps of {batch_size} images per round in alternation, median of {repeats} rounds; process CPU time per step.\n\n"
        "| layout | changes from the default CNN | parameters | ms CPU per step | ratio |\n|---|---|---|---|---|\n"
        f"{rows}\n{SECTION_END}\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cnn_step_cost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=150, help="training steps per round (default 150)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds, each variant once per round (default 3)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated names, the first the baseline")
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md as it is")
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.variants.split(",") if name.strip()]
    if refuse_names("cnn_step_cost", "variants", args.variants, names, tuple(VARIANTS)):
        return 2
    if refuse_below_one("cnn_step_cost", args, ("steps", "repeats", "batch_size")):
        return 2
    results = measure(names, args.steps, args.repeats, args.batch_size)
    for name, entry in results.items():
        print(f"{name:26s} {entry['ms_cpu_per_step']:7.1f} ms CPU per step  {entry['ratio']:.2f}x of {names[0]}")
    if not args.no_write:
        write_section(args.out, markdown(results, args.steps, args.repeats, args.batch_size), SECTION_START, SECTION_END)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
