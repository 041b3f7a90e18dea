"""What the default recipes cost next to the previous ones, side by side in one run: ``python -m benchmarks.recipe_cost``.

Issue 13 bounds the retuned defaults: the full Fashion-MNIST pipeline no more than 25% slower
than before. A pipeline's time is its three trainings, each (evaluations run) x (seconds per
evaluation). Seconds per evaluation is measured here for the current default recipe of each model
and for the previous one (``PREVIOUS``: the overrides that give it back), alternating between the
two ``--repeats`` times in one project copy on ``--dataset``, each training one evaluation (one
pass over the training images) through the real train stage; the median of each is taken.
Evaluations run are what each recipe's full training ran: before, from the last full benchmark
before the retune; after, from the retune's runs (benchmarks/TUNING.md), or, inside ``make bench``
(its ``cost`` part), from the default trainings its accuracy part has just run on the same
dataset. Prints the ratio per model and for the pipeline; writes its section of
``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from benchmarks.run import dataset_project, log, train_digitlab

HERE = Path(__file__).resolve().parent
SECTION_START, SECTION_END = "<!-- recipe-cost: benchmarks/recipe_cost.py -->", "<!-- /recipe-cost -->"

# The defaults before issue 13's retune, as overrides of the current conf/, trained as the code then
# trained them: one optimizer step per call into TensorFlow (steps_per_call came later).
PREVIOUS: dict[str, list[str]] = {
    "linear": ["models.linear.optimizer.learning_rate=0.001", "models.linear.training.batch_size=128", "models.linear.training.epochs=40",
               "models.linear.training.steps_per_call=1"],
    "mlp": ["models.mlp.model.batch_norm=false", "models.mlp.training.epochs=40", "models.mlp.training.steps_per_call=1"],
    "cnn": ["models.cnn.model.conv_filters=[32,64]", "models.cnn.model.convs_per_block=1", "models.cnn.model.pool_first=false",
            "models.cnn.training.steps_per_call=1"],
}
# Evaluations each full Fashion-MNIST training ran: before (benchmarks/results.json of the last full
# `make bench` before the retune) and after (the retune's runs of the new defaults, benchmarks/TUNING.md).
EVALUATIONS = {"before": {"linear": 35, "mlp": 40, "cnn": 20}, "after": {"linear": 48, "mlp": 50, "cnn": 14}}
# Issue 13's bound on the retuned defaults: the pipeline's trainings at most 25% slower than before,
# on the dataset EVALUATIONS["before"] were counted on.
TARGET_RATIO = 1.25
BOUND_DATASET = "fashion_mnist"


def one_evaluation(project: Path, model: str, overrides: list[str], out: Path, logs: Path) -> float:
    """Seconds the train stage's fit took for one evaluation of ``model`` (early stopping out of the way)."""
    # The recipe's own overrides first: one evaluation wins over its epochs (they count in EVALUATIONS instead).
    settings = [*overrides, f"models.{model}.training.epochs=1", f"models.{model}.training.early_stopping.enabled=false",
                "tracking.system_metrics=false"]  # fmt: skip
    _, train = train_digitlab(project, "params.yaml", model, out, settings, logs)
    return float(train["train_time_s"]) / int(train["epochs"])


def evaluations_run(accuracy: dict | None, dataset: str) -> dict[str, float]:
    """Evaluations each default recipe ran in ``accuracy`` (benchmarks/run.py's accuracy part) on ``dataset``, mean over its seeds."""
    found = {}
    for run in (accuracy or {}).get("runs", []):
        if run["recipe"] == "default" and run["dataset"] == dataset and "per_seed" in run:
            found[run["model"]] = statistics.mean(one["epochs"] for one in run["per_seed"])
    return found


def measure(project: Path, models: list[str], repeats: int, work: Path, evaluations: dict[str, float] | None = None) -> dict:
    """Side by side, ``repeats`` times: seconds per evaluation of each model's previous and current recipe.

    ``evaluations``: what the current recipes' full trainings ran, where measured (else the retune's, EVALUATIONS)."""
    evaluations = evaluations or {}
    results = {}
    for model in models:
        times: dict[str, list[float]] = {"before": [], "after": []}
        for repeat in range(repeats):
            for side, overrides in (("before", PREVIOUS[model]), ("after", [])):
                seconds = one_evaluation(project, model, overrides, work / f"{model}-{side}-{repeat}", work / "logs")
                times[side].append(seconds)
                log(f"{model} {side} #{repeat + 1}: {seconds:.1f} s per evaluation")
        per_evaluation = {side: statistics.median(values) for side, values in times.items()}
        runs = {"before": EVALUATIONS["before"][model], "after": evaluations.get(model, EVALUATIONS["after"][model])}
        total = {side: per_evaluation[side] * runs[side] for side in times}
        results[model] = {"seconds_per_evaluation": per_evaluation, "all": times, "evaluations": runs,
                          "evaluations_measured": model in evaluations, "training_s": total, "ratio": total["after"] / total["before"]}  # fmt: skip
    before = sum(entry["training_s"]["before"] for entry in results.values())
    after = sum(entry["training_s"]["after"] for entry in results.values())
    ratio = after / before
    return {"models": results, "pipeline": {"before_s": before, "after_s": after, "ratio": ratio, "target_ratio": TARGET_RATIO,
                                            "met": ratio <= TARGET_RATIO,
                                            "evaluations_measured": all(entry["evaluations_measured"] for entry in results.values())}}  # fmt: skip


def target_row(measured: dict, dataset: str) -> dict:
    """The bound as a row of benchmarks/run.py's targets table (met: None on a dataset the bound is not counted on)."""
    pipeline = measured["pipeline"]
    counted = "this run's" if pipeline["evaluations_measured"] else "the retune's"
    measured_text = f"{pipeline['ratio']:.2f}x ({pipeline['before_s']:.0f} s -> {pipeline['after_s']:.0f} s, {counted} evaluations)"
    if dataset != BOUND_DATASET:
        measured_text += f"; not comparable: the evaluations before were counted on {BOUND_DATASET}"
    return {"target": f"the {dataset} pipeline's trainings ({', '.join(measured['models'])}) <= {TARGET_RATIO:.2f}x their time "
                      "before issue 13's retune (side by side)",
            "measured": measured_text, "met": pipeline["met"] if dataset == BOUND_DATASET else None}  # fmt: skip


def markdown(dataset: str, repeats: int, measured: dict) -> str:
    rows = [
        f"| {model} | {' '.join(PREVIOUS[model]) or '(unchanged)'} | {entry['seconds_per_evaluation']['before']:.1f} | "
        f"{entry['seconds_per_evaluation']['after']:.1f} | {entry['evaluations']['before']} -> {entry['evaluations']['after']:g} | "
        f"{entry['training_s']['before']:.0f} | {entry['training_s']['after']:.0f} | {entry['ratio']:.2f}x |"
        for model, entry in measured["models"].items()
    ]
    pipeline = measured["pipeline"]
    in_bench = pipeline["evaluations_measured"]
    after = "the default trainings of the same `make bench` run (its accuracy part)" if in_bench else "the retune's runs, TUNING.md"
    return (
        f"{SECTION_START}\n## What the retuned defaults cost ({dataset}, side by side, median of {repeats})\n\n"
        f"`{'make bench' if in_bench else 'python -m benchmarks.recipe_cost'}`: seconds per evaluation (one pass over the "
        "training images) of each model's previous and current default recipe, alternating in one run, times the "
        f"evaluations a full training ran (before: the last full benchmark before the retune; after: {after}). "
        f"Bound (issue 13): {pipeline['target_ratio']:.2f}x.\n\n"
        "| model | previous recipe (overrides) | s/evaluation before | after | evaluations | training s before | after | ratio |\n"
        "|---|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n"
        f"| pipeline | | | | | {pipeline['before_s']:.0f} | {pipeline['after_s']:.0f} | **{pipeline['ratio']:.2f}x** |\n"
        f"{SECTION_END}\n"
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.recipe_cost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="fashion_mnist")
    parser.add_argument("--models", default="linear,mlp,cnn")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--work-dir", type=Path, default=None)
    parser.add_argument("--no-write", action="store_true", help="print only; leave benchmarks/RESULTS.md as it is")
    args = parser.parse_args(argv)
    models = [model for model in args.models.split(",") if model]
    unknown = [model for model in models if model not in PREVIOUS]
    if unknown or args.repeats < 1:
        parser.error(f"--models: unknown {', '.join(unknown)}; allowed: {', '.join(PREVIOUS)}" if unknown else "--repeats must be at least 1")
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="digitlab-cost-"))
    project = dataset_project(work, args.dataset, {})
    measured = measure(project, models, args.repeats, work)
    for model, entry in measured["models"].items():
        print(f"{model}: {entry['ratio']:.2f}x ({entry['training_s']['before']:.0f} s -> {entry['training_s']['after']:.0f} s)")
    pipeline = measured["pipeline"]
    print(f"pipeline: {pipeline['ratio']:.2f}x ({pipeline['before_s']:.0f} s -> {pipeline['after_s']:.0f} s of training)")
    if not args.no_write:
        from benchmarks.sections import write_section

        write_section(HERE / "RESULTS.md", markdown(args.dataset, args.repeats, measured), SECTION_START, SECTION_END)
    (work / "recipe_cost.json").write_text(json.dumps(measured, indent=2) + "\n")
    return measured


if __name__ == "__main__":
    main()
