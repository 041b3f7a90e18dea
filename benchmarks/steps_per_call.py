"""What several optimizer steps per call into TensorFlow save, side by side in one run: ``python -m benchmarks.steps_per_call``.

The train stage runs up to ``training.steps_per_call`` optimizer steps per call into TensorFlow
(Keras' ``steps_per_execution``: the most that divides every evaluation period). Here each default
recipe (``conf/``: model, optimizer, batch size) trains through the train stage's input pipeline
on random 28x28 images, as many as Fashion-MNIST's 55,000 training images give steps per
evaluation, once with one step per call (Keras' default) and once with the steps per call the
train stage plans, alternating for ``--repeats`` rounds after a warm-up; the cost of a step is the
process' CPU time (all threads) over ``--passes`` evaluation periods, median of the rounds.
First, the same model trains ``--check-steps`` steps each way on the same batches and the weights
are compared, which must be equal bit for bit. Prints the table and the ratios; writes its section
of ``benchmarks/RESULTS.md`` (``--no-write``: print only).

    python -m benchmarks.steps_per_call [--models linear,mlp,cnn] [--passes 1] [--repeats 3] [--no-write]
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
SECTION_START, SECTION_END = "<!-- steps-per-call: benchmarks/steps_per_call.py -->", "<!-- /steps-per-call -->"
TRAIN_IMAGES = 55_000  # Fashion-MNIST's training split in the pipeline: what the plan is made for
SEED = 42


def recipes(models: list[str]) -> dict:
    """The default recipes, as the project composes them from conf/."""
    from digitlab.config import compose
    from digitlab.settings import load_settings

    settings = load_settings(compose([], ROOT))
    return {model: settings.models[model] for model in models}


def compiled(recipe, plan):
    """The recipe's model, seeded, compiled by the train stage's own compile for ``plan``."""
    import keras

    from digitlab.models import build_model
    from digitlab.training.fit import compile_for_training

    keras.utils.set_random_seed(SEED)
    model = build_model(recipe.model, (28, 28, 1), 10)
    compile_for_training(model, recipe, plan)
    return model


def batches(recipe, images, labels):
    from digitlab.training.inputs import training_dataset

    return training_dataset(images, labels, recipe.training.batch_size, recipe.training.shuffle_buffer, SEED)


def same_weights(recipe, plans: dict, images, labels, steps: int) -> bool:
    """Whether ``steps`` steps under each of ``plans`` leave the same weights, bit for bit."""
    import numpy as np

    weights = []
    for plan in plans.values():
        model = compiled(recipe, plan)
        model.fit(batches(recipe, images, labels), steps_per_epoch=steps, epochs=1, verbose=0)
        weights.append([np.asarray(w) for w in model.get_weights()])
    return all(np.array_equal(a, b) for a, b in zip(*weights, strict=True))


def measure(models: list[str], passes: int, repeats: int, check_steps: int) -> dict:
    import numpy as np

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(TRAIN_IMAGES, 28, 28, 1), dtype=np.uint8)
    labels = rng.integers(0, 10, size=TRAIN_IMAGES)
    results = {}
    for model, recipe in recipes(models).items():
        planned = recipe.training.plan(TRAIN_IMAGES)
        plans = {"one": planned.model_copy(update={"max_steps_per_call": 1}), "planned": planned}
        per_call = planned.steps_per_execution
        check = max(per_call, check_steps // per_call * per_call)
        identical = same_weights(recipe, plans, images, labels, check)
        sides = {side: compiled(recipe, plan) for side, plan in plans.items()}
        data = {side: batches(recipe, images, labels) for side in sides}
        for side, net in sides.items():  # warm-up: tracing and the first batches
            net.fit(data[side], steps_per_epoch=per_call * 2, epochs=1, verbose=0)
        ms: dict[str, list[float]] = {side: [] for side in sides}
        steps = planned.steps_per_eval * passes
        for round_ in range(repeats):
            for side, net in sides.items():
                started = time.process_time()
                net.fit(data[side], steps_per_epoch=planned.steps_per_eval, epochs=passes, verbose=0)
                ms[side].append((time.process_time() - started) / steps * 1000)
                print(f"[steps-per-call] {model} round {round_ + 1}/{repeats} {side}: {ms[side][-1]:.2f} ms CPU per step", flush=True)
        one, planned_ms = statistics.median(ms["one"]), statistics.median(ms["planned"])
        results[model] = {"steps_per_call": per_call, "steps_per_eval": planned.steps_per_eval, "batch_size": recipe.training.batch_size,
                          "ms_cpu_per_step": {"one": one, "planned": planned_ms}, "all": ms, "ratio": planned_ms / one,
                          "identical": identical, "check_steps": check}  # fmt: skip
    return results


def markdown(results: dict, passes: int, repeats: int) -> str:
    rows = "\n".join(
        f"| {model} | {entry['batch_size']} | {entry['steps_per_eval']} | {entry['steps_per_call']} | {entry['ms_cpu_per_step']['one']:.2f} | "
        f"{entry['ms_cpu_per_step']['planned']:.2f} | {entry['ratio']:.2f}x | {'yes' if entry['identical'] else 'NO'} ({entry['check_steps']} steps) |"
        for model, entry in results.items()
    )
    return (
        f"{SECTION_START}\n## Steps per call into TensorFlow: CPU per training step\n\n"
        f"`python -m benchmarks.steps_per_call --passes {passes} --repeats {repeats}` ({time.strftime('%Y-%m-%d')}, "
        f"{os.cpu_count()} cores): each default recipe on random 28x28 images through the train stage's input pipeline, "
        f"{passes} evaluation period(s) of Fashion-MNIST's size per round, one step per call and the planned steps per call "
        f"in alternation, median of {repeats} rounds; process CPU time per step. Same weights: the same model trained "
        "both ways on the same batches.\n\n"
        "| model | batch | steps per evaluation | steps per call | ms CPU per step, one per call | planned | ratio | same weights |\n"
        f"|---|---|---|---|---|---|---|---|\n{rows}\n{SECTION_END}\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.steps_per_call", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="linear,mlp,cnn", help="comma-separated default recipes (default linear,mlp,cnn)")
    parser.add_argument("--passes", type=int, default=1, help="evaluation periods per round (default 1)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds, each side once per round (default 3)")
    parser.add_argument("--check-steps", type=int, default=40, help="steps of the same-weights check (default 40)")
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md as it is")
    args = parser.parse_args(argv)
    models = [name.strip() for name in args.models.split(",") if name.strip()]
    if refuse_names("steps_per_call", "models", args.models, models, ("linear", "mlp", "cnn")):
        return 2
    if refuse_below_one("steps_per_call", args, ("passes", "repeats", "check_steps")):
        return 2
    results = measure(models, args.passes, args.repeats, args.check_steps)
    for model, entry in results.items():
        print(f"{model:7s} {entry['steps_per_call']:3d} steps per call: {entry['ms_cpu_per_step']['planned']:.2f} ms CPU per step against "
              f"{entry['ms_cpu_per_step']['one']:.2f} ms, {entry['ratio']:.2f}x; same weights: {entry['identical']}")  # fmt: skip
    if not args.no_write:
        write_section(args.out, markdown(results, args.passes, args.repeats), SECTION_START, SECTION_END)
    return 0 if all(entry["identical"] for entry in results.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
