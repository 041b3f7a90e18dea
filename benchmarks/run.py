"""digitlab against plain Keras on this machine, in one run: ``make bench`` (``python -m benchmarks.run``).

Parts (``--parts``, all by default):

- overhead: each default model trained for the same fixed number of epochs
  through digitlab's train stage (MLflow in a temporary SQLite store,
  checkpoints and early-stopping bookkeeping on, patience longer than the run)
  and through ``benchmarks/plain_keras.py`` (same model, optimizer, batch size
  and data; bare ``model.fit``). Median of ``--repeats`` runs of each: the
  ratio digitlab/plain of the fit time each side measures itself (what the
  targets refer to) and of the whole process wall time (imports, data
  loading, MLflow, saving included), and images/s.
- caching: in a fresh git + DVC copy of the project on a small dataset, the
  time of a no-op ``dvc repro`` and of a ``dvc repro`` after one parameter of
  one model changed, checking from DVC's output which stages ran.
- memory: peak RSS of the train stage (default recipes, full dataset) next to
  the training images as float32, and the RSS of a process that only imports
  TensorFlow, Keras and MLflow (the floor that is not ours); then one epoch of
  each model under memray: what is live at the heap's peak, by digitlab frame
  (``benchmarks/memory_profile.py``), and a flame graph.
- accuracy: test accuracy of the default recipes and of the tutorial presets
  on each ``--accuracy-datasets`` dataset, next to the tutorials' published
  numbers (MNIST / CIFAR-100 numbers, labelled as such).
- cost: issue 13's time bound on ``--dataset`` (``benchmarks/recipe_cost.py``):
  seconds per evaluation of each default recipe and of the one before the
  retune, alternating ``--repeats`` times, times the evaluations each full
  training ran (the current recipes': the accuracy part's, when it ran on
  that dataset).

Everything runs in temporary copies of the project under ``--work-dir``;
``benchmarks/results.json`` and ``benchmarks/RESULTS.md`` are written at the
end (``--out-dir``). ``--quick`` runs every part on tiny data (scikit-learn's
8x8 digits, 1 epoch, 1 repetition): it checks the harness, its numbers mean
nothing (and its memray capture has no native frames: drawing those takes minutes).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parents[1]
PLAIN_KERAS = Path(__file__).resolve().parent / "plain_keras.py"
# What a copy of the project needs to run its pipeline (no data, models or stores).
PROJECT_FILES = ("conf", "pipeline", "src", "dvc.yaml", "params.yaml", "pyproject.toml", ".dvcignore", ".gitignore")
# The pipeline's recipes, as params.yaml names them (a recipe added in conf/ is measured too).
MODELS = tuple(yaml.safe_load((ROOT / "params.yaml").read_text())["models"])
PARTS = ("overhead", "caching", "memory", "accuracy", "cost")

# The targets of issue 5.
OVERHEAD_TARGETS = {"linear": 1.25, "mlp": 1.25, "cnn": 1.10}
NOOP_REPRO_TARGET_S = 5.0
RSS_TARGET_RATIO = 3.0
ACCURACY_TARGETS = {"linear": 0.85, "mlp": 0.905, "cnn": 0.935}  # issue 13
ACCURACY_TARGET_DATASET = "fashion_mnist"

# The tutorials' presets (conf/experiment/) and what the tutorials published.
PRESETS = ("tutorial_linear", "tutorial_dnn", "tutorial_keras_mlp", "tutorial_cnn", "tutorial_cifar100_mlp")
PUBLISHED = {
    "tutorial_linear": "92.1% (MNIST test)",
    "tutorial_cnn": "98.8% (MNIST test)",
    "tutorial_dnn": ">= 95% (MNIST, target)",
    "tutorial_keras_mlp": "none published (MNIST)",
    "tutorial_cifar100_mlp": "21.5% (CIFAR-100 validation)",
}
# Datasets no preset can be run on here: not reachable offline.
OFFLINE_UNAVAILABLE = {"cifar100": "CIFAR-100 is not reachable from this machine (no network)"}


class BenchmarkError(RuntimeError):
    pass


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- processes -------------------------------------------------------------


@dataclass
class Process:
    wall_s: float
    cpu_s: float
    peak_rss_mb: float
    output: str


def child_env(project: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "DVC_ROOT")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.setdefault("GIT_PYTHON_REFRESH", "quiet")
    # The project's own SQLite store (<project>/mlflow.db), migrated once beforehand.
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{project / 'mlflow.db'}"
    return env


def run_process(cmd: list[str], cwd: Path, log_path: Path, env: dict[str, str] | None = None) -> Process:
    """Run ``cmd`` to completion; its wall time, CPU time, peak RSS and output.

    The peak RSS is the child's own ``VmHWM`` (the high-water mark of the
    address space it got at exec), polled every 20 ms until it exits. The
    ``ru_maxrss`` that ``wait4`` returns is no use here: Linux carries the
    parent's peak RSS over into the child at exec, so once this process has
    loaded TensorFlow every child would appear to use at least as much.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w", encoding="utf-8") as output:
        started = time.perf_counter()
        process = subprocess.Popen(cmd, cwd=cwd, env=env or child_env(cwd), stdout=output, stderr=subprocess.STDOUT)
        peak_kb = 0
        while True:
            peak_kb = max(peak_kb, _high_water_kb(process.pid))
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            time.sleep(0.02)
        wall = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
    text = log_path.read_text(encoding="utf-8", errors="replace")
    if process.returncode != 0:
        tail = "\n".join(text.splitlines()[-25:])
        raise BenchmarkError(f"{' '.join(map(str, cmd))} exited {process.returncode} (log: {log_path}):\n{tail}")
    return Process(wall_s=wall, cpu_s=usage.ru_utime + usage.ru_stime, peak_rss_mb=peak_kb / 1024, output=text)


def _high_water_kb(pid: int) -> int:
    """``VmHWM`` of a running process in KiB; 0 once it has exited (a zombie has no memory)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def python(*args: Any) -> list[str]:
    return [sys.executable, *map(str, args)]


# --- projects ---------------------------------------------------------------


def make_project(dest: Path, params_overrides: list[str]) -> Path:
    """A fresh git + DVC copy of the project with params.yaml composed from ``params_overrides``."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for name in PROJECT_FILES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        elif source.exists():
            shutil.copy2(source, dest / name)
    (dest / ".dvc").mkdir()
    for name in ("config", ".gitignore"):
        shutil.copy2(ROOT / ".dvc" / name, dest / ".dvc" / name)
    env = child_env(dest)
    write_params(dest, params_overrides)
    git = ["git", "-c", "user.name=digitlab-bench", "-c", "user.email=bench@digitlab.invalid"]
    for cmd in (["git", "init", "-q", "-b", "main"], [*git, "add", "-A"], [*git, "commit", "-qm", "benchmark copy"]):
        subprocess.run(cmd, cwd=dest, env=env, check=True, capture_output=True)
    # A fresh SQLite store migrates its schema on first use (seconds): do it before anything is timed.
    import mlflow

    mlflow.MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"]).search_experiments()
    return dest


def write_params(project: Path, overrides: list[str], name: str = "params.yaml") -> Path:
    """Compose the project's conf/ with ``overrides`` into ``name`` (as ``digitlab params`` does)."""
    from omegaconf import OmegaConf

    from digitlab.config import compose
    from digitlab.io import atomic_write_text

    path = project / name
    atomic_write_text(path, OmegaConf.to_yaml(compose(overrides, project)))
    return path


def prepare_data(project: Path, logs: Path) -> dict:
    """Download and preprocess the project's dataset through digitlab's own stages."""
    for stage in ("download", "preprocess"):
        run_process(python("-m", f"pipeline.{stage}", "--params", "params.yaml"), project, logs / f"{stage}.log")
    return prepared_info(project)


def prepared_info(project: Path) -> dict:
    from digitlab.data.prepared import load_meta

    meta = load_meta(project / "data" / "prepared")
    return {"dataset": meta.dataset, "image_shape": list(meta.image_shape), "train_images": sum(meta.counts["train"].values())}


def dataset_project(work: Path, dataset: str, projects: dict[str, Path]) -> Path:
    """The project copy holding ``dataset`` prepared (made and prepared on first use)."""
    if dataset not in projects:
        log(f"preparing {dataset} through pipeline.download and pipeline.preprocess")
        project = make_project(work / f"project-{dataset}", [f"dataset={dataset}"])
        prepare_data(project, work / "logs" / dataset)
        projects[dataset] = project
    return projects[dataset]


def test_accuracy(model_path: Path, prepared: Path) -> float:
    """Accuracy of a saved model on the test split (raw pixels in, as the model expects)."""
    import keras

    from digitlab.data.prepared import load_split

    x, y = load_split(prepared, "test")
    model = keras.models.load_model(model_path)
    probabilities = model.predict(x.astype("float32"), batch_size=512, verbose=0)
    return float((probabilities.argmax(axis=1) == y).mean())


# --- parts ------------------------------------------------------------------


def train_module_args(params: str, model: str, out: Path, overrides: list[str]) -> list[str]:
    """``-m pipeline.train ...``: the train stage of ``model``, writing to ``out``."""
    return ["-m", "pipeline.train", "--params", params, f"model={model}", f"output_dir={out}", *overrides]


def train_digitlab(project: Path, params: str, model: str, out: Path, overrides: list[str], logs: Path) -> tuple[Process, dict]:
    process = run_process(python(*train_module_args(params, model, out, overrides)), project, logs / f"{out.name}.log")
    return process, json.loads((out / "train.json").read_text(encoding="utf-8"))


def measure_overhead(project: Path, models: list[str], epochs: int, repeats: int, work: Path) -> dict:
    results: dict[str, Any] = {"epochs": epochs, "repeats": repeats, "models": {}}
    logs = work / "logs" / "overhead"
    for model in models:
        runs: dict[str, list[dict]] = {"digitlab": [], "plain": []}
        for repeat in range(1, repeats + 1):
            # Alternate the sides so that a slow spell of the machine hits both alike.
            out = work / "overhead" / f"{model}-digitlab-{repeat}"
            overrides = [f"models.{model}.training.epochs={epochs}", f"models.{model}.training.early_stopping.patience={epochs + 1}"]
            process, train_json = train_digitlab(project, "params.yaml", model, out, overrides, logs)
            if train_json["epochs"] != epochs:
                raise BenchmarkError(f"digitlab trained {model} for {train_json['epochs']} epochs, not {epochs}")
            runs["digitlab"].append({"fit_s": train_json["train_time_s"], "wall_s": process.wall_s, "cpu_s": process.cpu_s,
                                     "images_per_s": train_json["images_per_s"], "peak_rss_mb": process.peak_rss_mb})
            plain_json = work / "overhead" / f"{model}-plain-{repeat}.json"
            process = run_process(
                python(PLAIN_KERAS, "--params", "params.yaml", "--model", model, "--data", "data/prepared",
                       "--epochs", epochs, "--out", plain_json),
                project, logs / f"{model}-plain-{repeat}.log",
            )  # fmt: skip
            plain = json.loads(plain_json.read_text(encoding="utf-8"))
            runs["plain"].append({"fit_s": plain["train_time_s"], "wall_s": process.wall_s, "cpu_s": process.cpu_s,
                                  "images_per_s": plain["images_per_s"], "peak_rss_mb": process.peak_rss_mb})
            log(f"overhead {model} {repeat}/{repeats}: digitlab fit {runs['digitlab'][-1]['fit_s']:.1f}s "
                f"(process {runs['digitlab'][-1]['wall_s']:.1f}s), plain fit {plain['train_time_s']:.1f}s "
                f"(process {process.wall_s:.1f}s)")  # fmt: skip
        median = {side: {key: statistics.median(run[key] for run in side_runs) for key in side_runs[0]} for side, side_runs in runs.items()}
        fit_ratio = median["digitlab"]["fit_s"] / median["plain"]["fit_s"]
        results["models"][model] = {
            "runs": runs,
            "median": median,
            "fit_ratio": fit_ratio,
            "wall_ratio": median["digitlab"]["wall_s"] / median["plain"]["wall_s"],
            # CPU seconds are less disturbed than wall time when other jobs share the machine.
            "cpu_ratio": median["digitlab"]["cpu_s"] / median["plain"]["cpu_s"],
            "target_ratio": OVERHEAD_TARGETS[model],
            "met": fit_ratio <= OVERHEAD_TARGETS[model],
        }
    return results


STAGE_RAN = re.compile(r"Running stage '([^']+)'")


def stages_ran(dvc_output: str) -> list[str]:
    return sorted(set(STAGE_RAN.findall(dvc_output)))


def measure_caching(work: Path, dataset: str, epochs: int, noop_repeats: int) -> dict:
    """Time ``dvc repro`` with everything cached and after one parameter of one model changed."""
    overrides = [f"dataset={dataset}", *(f"models.{model}.training.epochs={epochs}" for model in MODELS)]
    project = make_project(work / "project-caching", overrides)
    log(f"caching: first dvc repro of the whole pipeline on {dataset} ({epochs} epochs per model)")
    return {"dataset": dataset, "epochs": epochs, **time_repros(project, overrides, noop_repeats, work / "logs" / "caching")}


def time_repros(project: Path, overrides: list[str], noop_repeats: int, logs: Path, env: dict[str, str] | None = None) -> dict:
    """The caching part's measurements on ``project``, a git + DVC project composed from ``overrides`` and never run.

    A first ``dvc repro``, ``noop_repeats`` no-op ones, then one with the
    linear recipe's learning rate doubled (params.yaml recomposed from
    ``overrides`` and that change, which stays in the workspace): wall times
    and the stages DVC ran, its output in ``logs/repro-*.log``.
    ``tests/test_pipeline_e2e.py`` runs this on its project as its first repro.
    """
    first = run_process(["dvc", "repro"], project, logs / "repro-first.log", env)
    noop = []
    for repeat in range(1, noop_repeats + 1):
        process = run_process(["dvc", "repro"], project, logs / f"repro-noop-{repeat}.log", env)
        noop.append({"wall_s": process.wall_s, "stages_ran": stages_ran(process.output)})
    noop_s = statistics.median(run["wall_s"] for run in noop)
    log(f"caching: no-op dvc repro {noop_s:.2f}s (median of {noop_repeats})")

    from omegaconf import OmegaConf

    learning_rate = OmegaConf.load(project / "params.yaml").models.linear.optimizer.learning_rate
    change = f"models.linear.optimizer.learning_rate={learning_rate * 2:g}"
    write_params(project, [*overrides, change])
    changed = run_process(["dvc", "repro"], project, logs / "repro-change.log", env)
    expected = ["evaluate@linear", "report", "train@linear"]
    ran = stages_ran(changed.output)
    log(f"caching: after {change}: dvc repro {changed.wall_s:.1f}s, stages run: {', '.join(ran) or 'none'}")
    return {
        "first_repro_s": first.wall_s,
        "first_stages_ran": stages_ran(first.output),
        "noop": noop,
        "noop_repro_s": noop_s,
        "noop_target_s": NOOP_REPRO_TARGET_S,
        "noop_met": noop_s < NOOP_REPRO_TARGET_S and not any(run["stages_ran"] for run in noop),
        "change": {"override": change, "repro_s": changed.wall_s, "stages_ran": ran, "expected": expected, "only_expected_ran": ran == expected},
    }


def import_floor_rss_mb(project: Path, modules: str, work: Path) -> float:
    """Peak RSS of a process that only imports ``modules``: the floor a train process cannot go below."""
    name = modules.replace(", ", "-")
    return run_process(python("-c", f"import {modules}"), project, work / "logs" / "memory" / f"import-{name}.log").peak_rss_mb


def _profile(project: Path, model: str, work: Path, native: bool) -> dict:
    """memray's view of one epoch of ``model``: where the heap is at its peak (``native``: native frames too)."""
    try:
        import memray  # noqa: F401
    except ImportError:
        return {"skipped": "memray is not installed (pip install -e '.[dev]')"}
    from benchmarks.memory_profile import breakdown, memray_command, write_flamegraph

    directory = work / "memory"
    directory.mkdir(parents=True, exist_ok=True)
    capture, flamegraph = directory / f"memray-{model}.bin", directory / f"memray-{model}-flamegraph.html"
    capture.unlink(missing_ok=True)  # memray refuses to overwrite
    overrides = [f"models.{model}.training.epochs=1"]
    args = train_module_args("params.yaml", model, directory / f"profiled-{model}", overrides)
    run_process(memray_command(capture, args, native), project, work / "logs" / "memory" / f"memray-{model}.log")
    write_flamegraph(capture, flamegraph)
    profile = {"model": model, "overrides": overrides, "native": native, "flamegraph": str(flamegraph), **breakdown(capture)}
    log(f"memory {model}: heap peak {profile['peak_heap_mb']:.0f} MB under memray: {profile['imports_mb']:.0f} MB "
        f"imports, {profile['work_mb']:.0f} MB work; flame graph {profile['flamegraph']}")  # fmt: skip
    return profile


def measure_accuracy(work: Path, datasets: list[str], models: list[str], presets: list[str], quick: bool,
                     projects: dict[str, Path], seeds: int = 1, preset_seeds: int = 1) -> dict:  # fmt: skip
    """Default recipes and tutorial presets: train through digitlab, test accuracy of the saved model.

    Each recipe trains once per seed (``seed`` 42, 43, ...: initialisation, shuffling, dropout; the splits
    stay): ``test_accuracy`` is the mean, ``test_accuracies`` each seed's, so a single run is not mistaken
    for a recipe's level."""
    runs = []
    from omegaconf import OmegaConf

    for dataset in datasets:
        project = dataset_project(work, dataset, projects)
        logs = work / "logs" / "accuracy" / dataset
        recipes = [("default", model, []) for model in models]
        for preset in presets:
            composed = OmegaConf.to_container(
                OmegaConf.load(write_params(project, [f"experiment={preset}"], f"params-{preset}.yaml")), resolve=True
            )
            recipes.append((preset, composed["model"], [f"experiment={preset}"]))
        for recipe, model, experiment in recipes:
            entry = {"dataset": dataset, "recipe": recipe, "model": model, "published": PUBLISHED.get(recipe)}
            preset_dataset = _preset_dataset(project, recipe)
            if preset_dataset in OFFLINE_UNAVAILABLE:
                runs.append({**entry, "skipped": OFFLINE_UNAVAILABLE[preset_dataset]})
                log(f"accuracy {recipe}: skipped ({OFFLINE_UNAVAILABLE[preset_dataset]})")
                continue
            params = "params.yaml"
            if experiment:
                params = write_params(project, [*experiment, f"dataset={dataset}"], f"params-{recipe}.yaml").name
            overrides = _quick_overrides(project / params, model) if quick else []
            trained = []
            for seed in range(42, 42 + (preset_seeds if experiment else seeds)):
                out = work / "accuracy" / dataset / f"{recipe}-{model}-seed{seed}"
                process, train_json = train_digitlab(project, params, model, out, [*overrides, f"seed={seed}"], logs)
                accuracy = test_accuracy(out / "model.keras", project / "data" / "prepared")
                trained.append({"seed": seed, "test_accuracy": accuracy, "epochs": train_json["epochs"], "best_epoch": train_json["best_epoch"],
                                "steps": train_json["steps"], "train_time_s": train_json["train_time_s"], "peak_rss_mb": process.peak_rss_mb})  # fmt: skip
                log(f"accuracy {dataset} {recipe} ({model}) seed {seed}: test accuracy {accuracy:.4f} after "
                    f"{train_json['epochs']} evaluations, {train_json['train_time_s']:.0f}s")  # fmt: skip
            accuracies = [one["test_accuracy"] for one in trained]
            runs.append({**entry, **trained[0], "seeds": [one["seed"] for one in trained], "test_accuracy": sum(accuracies) / len(accuracies),
                         "test_accuracies": accuracies, "per_seed": trained,
                         "train_time_s": sum(one["train_time_s"] for one in trained) / len(trained)})  # fmt: skip
    return {"runs": runs, "seeds": seeds, "preset_seeds": preset_seeds}


def measure_cost(project: Path, args: argparse.Namespace, accuracy: dict | None, work: Path) -> dict:
    """Issue 13's time bound (benchmarks/recipe_cost.py), with the evaluations the accuracy part's default trainings ran."""
    from benchmarks import recipe_cost

    models = [model for model in args.models if model in recipe_cost.PREVIOUS]
    evaluations = recipe_cost.evaluations_run(accuracy, args.dataset)
    measured = recipe_cost.measure(project, models, args.repeats, work / "cost", evaluations)
    pipeline = measured["pipeline"]
    log(f"cost: the {args.dataset} pipeline's trainings take {pipeline['ratio']:.2f}x their time before the retune "
        f"({pipeline['before_s']:.0f} s -> {pipeline['after_s']:.0f} s)")  # fmt: skip
    return {"dataset": args.dataset, "repeats": args.repeats, **measured}


def _preset_dataset(project: Path, recipe: str) -> str | None:
    """The dataset a preset was written for (the one it overrides to)."""
    if recipe == "default":
        return None
    from omegaconf import OmegaConf

    return OmegaConf.load(project / f"params-{recipe}.yaml").dataset.name


def _quick_overrides(params: Path, model: str) -> list[str]:
    """One short evaluation period instead of the recipe's full schedule."""
    from omegaconf import OmegaConf

    training = OmegaConf.load(params).models[model].training
    overrides = [f"models.{model}.training.epochs=1"]
    if training.max_steps:
        overrides.append(f"models.{model}.training.max_steps=20")
    return overrides


def measure_memory(project: Path, accuracy: dict | None, overhead: dict | None, models: list[str], work: Path,
                   dataset_info: dict, native: bool = True) -> dict:  # fmt: skip
    """Peak RSS of the default train stage on the dataset next to its float32 training images.

    Beside it: the RSS of processes that only import TensorFlow (and Keras and
    MLflow), which no train stage can go below, and the plain-Keras script's
    RSS from the overhead part when it ran on the same dataset.
    """
    height, width, channels = dataset_info["image_shape"]
    arrays_mb = dataset_info["train_images"] * height * width * channels * 4 / 2**20
    floors = {modules: import_floor_rss_mb(project, modules, work) for modules in ("tensorflow", "tensorflow, keras, mlflow")}
    floor = floors["tensorflow, keras, mlflow"]
    log(f"memory: importing TensorFlow alone peaks at {floors['tensorflow']:.0f} MB, with Keras and MLflow at {floor:.0f} MB")
    default_runs = {run["model"]: run for run in (accuracy or {}).get("runs", [])
                    if run["recipe"] == "default" and run["dataset"] == dataset_info["dataset"] and "peak_rss_mb" in run}  # fmt: skip
    plain_runs = (overhead or {}).get("models", {}) if (overhead or {}).get("dataset") == dataset_info["dataset"] else {}
    per_model = {}
    for model in models:
        if model in default_runs:
            rss, source = default_runs[model]["peak_rss_mb"], "default recipe, full training (accuracy part)"
        else:
            out = work / "memory" / model
            process, _ = train_digitlab(project, "params.yaml", model, out, [f"models.{model}.training.epochs=1"], work / "logs" / "memory")
            rss, source = process.peak_rss_mb, "default recipe, 1 epoch"
        plain_rss = plain_runs[model]["median"]["plain"]["peak_rss_mb"] if model in plain_runs else None
        per_model[model] = {
            "peak_rss_mb": rss,
            "ratio": rss / arrays_mb,
            "above_import_floor_ratio": max(rss - floor, 0.0) / arrays_mb,
            "plain_keras_peak_rss_mb": plain_rss,
            "met": rss / arrays_mb < RSS_TARGET_RATIO,
            "run": source,
        }
        log(f"memory {model}: peak RSS {rss:.0f} MB = {rss / arrays_mb:.1f}x the float32 training images ({arrays_mb:.0f} MB), "
            f"{max(rss - floor, 0.0) / arrays_mb:.1f}x above the import floor")  # fmt: skip
    profiles = {model: _profile(project, model, work, native) for model in models}
    return {
        "dataset": dataset_info["dataset"],
        "profiles": profiles,
        "train_images": dataset_info["train_images"],
        "train_arrays_float32_mb": arrays_mb,
        "import_floor_rss_mb": floor,
        "import_floors_rss_mb": floors,
        "target_ratio": RSS_TARGET_RATIO,
        "models": per_model,
    }


# --- environment and report ---------------------------------------------------


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gb = None
    try:
        memory_gb = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gb": memory_gb, "os": platform.platform(), "hostname": platform.node()}


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for package in ("digitlab", "tensorflow-cpu", "tensorflow", "keras", "dvc", "mlflow", "hydra-core", "numpy"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            continue
    return found


def targets_table(results: dict) -> list[dict]:
    """Every target of issue 5 with what was measured and whether it is met (None: not measured)."""
    rows = []
    for model, entry in (results.get("overhead") or {}).get("models", {}).items():
        rows.append({"target": f"{model} training time through digitlab <= {entry['target_ratio']:.2f}x plain Keras",
                     "measured": f"{entry['fit_ratio']:.2f}x (process wall time {entry['wall_ratio']:.2f}x)", "met": entry["met"]})  # fmt: skip
    caching = results.get("caching")
    if caching:
        rows.append({"target": f"no-op dvc repro < {caching['noop_target_s']:.0f} s", "measured": f"{caching['noop_repro_s']:.2f} s", "met": caching["noop_met"]})
        change = caching["change"]
        rows.append({"target": "one changed parameter of one model reruns only its train, evaluate and the report",
                     "measured": ", ".join(change["stages_ran"]) or "nothing", "met": change["only_expected_ran"]})  # fmt: skip
    memory = results.get("memory")
    if memory:
        for model, entry in memory["models"].items():
            rows.append({"target": f"{model} train-stage peak RSS < {memory['target_ratio']:.0f}x float32 training images ({memory['dataset']})",
                         "measured": f"{entry['peak_rss_mb']:.0f} MB = {entry['ratio']:.1f}x "
                                     f"({entry['above_import_floor_ratio']:.1f}x above the import floor)", "met": entry["met"]})  # fmt: skip
    cost = results.get("cost")
    if cost:
        from benchmarks.recipe_cost import target_row

        rows.append(target_row(cost, cost["dataset"]))
    for run in (results.get("accuracy") or {}).get("runs", []):
        if run["recipe"] == "default" and run["dataset"] == ACCURACY_TARGET_DATASET and "test_accuracy" in run:
            target = ACCURACY_TARGETS[run["model"]]
            rows.append({"target": f"{run['model']} default test accuracy >= {target:.1%} (Fashion-MNIST)",
                         "measured": f"{run['test_accuracy']:.2%}", "met": run["test_accuracy"] >= target})  # fmt: skip
    return rows


def _accuracy_cell(run: dict) -> str:
    """The mean test accuracy, and with several seeds their range: ``84.62%`` or ``84.62% [84.40, 84.80] (3 seeds)``."""
    accuracies = run.get("test_accuracies") or [run["test_accuracy"]]
    if len(accuracies) == 1:
        return f"{run['test_accuracy']:.2%}"
    return f"{run['test_accuracy']:.2%} [{min(accuracies):.2%}, {max(accuracies):.2%}] ({len(accuracies)} seeds)"


def _evaluations_cell(run: dict) -> str:
    """Evaluations run (best), each seed's: ``20 (17)`` or ``20 (17), 18 (12), 20 (20)``."""
    return ", ".join(f"{one['epochs']} ({one['best_epoch']})" for one in run.get("per_seed") or [run])


def _profile_markdown(profiles: dict) -> list[str]:
    """The memray breakdown of each profiled model: the live heap at its peak, by digitlab frame."""
    lines = []
    for model, profile in profiles.items():
        if "skipped" in profile:
            lines += ["", f"Memory profile of {model}: skipped ({profile['skipped']})."]
            continue
        lines += [
            "",
            f"### Where {model}'s heap is at its peak (memray, 1 epoch)",
            "",
            f"Heap peak {profile['peak_heap_mb']:.0f} MB: {profile['imports_mb']:.0f} MB allocated while importing "
            f"and initialising libraries, {profile['work_mb']:.0f} MB by the work itself. Each allocation live at the "
            "peak is charged to the innermost digitlab frame on its stack. The rest of the resident set is the "
            f"libraries' mapped code (RssFile), which memray does not see. Flame graph: `{profile['flamegraph']}`.",
            "",
            "| MB | kind | digitlab frame |",
            "|---|---|---|",
            *(f"| {row['mb']:.1f} | {row['kind']} | `{row['where']}` |" for row in profile["top"]),
        ]
    return lines


def render_markdown(results: dict) -> str:
    def mark(met: bool | None) -> str:
        return "yes" if met else ("no" if met is not None else "n/a")

    machine_info, settings = results["machine"], results["settings"]
    lines = [
        "# digitlab benchmarks",
        "",
        f"Run {results['date']} on {machine_info['cpu']}, {machine_info['cores']} cores, {machine_info['memory_gb']} GB "
        f"({'quick mode: tiny data, the numbers mean nothing' if settings['quick'] else 'parts: ' + ', '.join(settings['parts'])}; "
        f"models: {', '.join(settings['models'])}), "
        f"{results['wall_s'] / 60:.1f} minutes in all. Command: `{settings['command']}`.",
        "",
        "Versions: " + ", ".join(f"{name} {value}" for name, value in results["versions"].items()) + ".",
        "",
        "## Targets",
        "",
        "| target | measured | met |",
        "|---|---|---|",
        *(f"| {row['target']} | {row['measured']} | {mark(row['met'])} |" for row in results["targets"]),
    ]
    overhead = results.get("overhead")
    if overhead:
        lines += [
            "",
            f"## Overhead: {overhead['epochs']} epochs on {overhead['dataset']}, median of {overhead['repeats']}",
            "",
            "Fit time is what each side measures around its own training (digitlab: train.json `train_time_s`, which "
            "includes its per-epoch validation, checkpoints and MLflow logging; plain Keras: `model.fit` alone). "
            "Process time adds Python/TensorFlow imports, data loading, the evaluation before training, saving and "
            "MLflow model logging. The targets refer to fit time. Process CPU is user + system seconds of the whole "
            "process (all threads), less disturbed than wall time when other jobs share the machine.",
            "",
            "| model | digitlab fit s | plain fit s | fit ratio | digitlab process s | plain process s | process ratio | "
            "process CPU ratio | digitlab images/s | plain images/s |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for model, entry in overhead["models"].items():
            dl, plain = entry["median"]["digitlab"], entry["median"]["plain"]
            lines.append(
                f"| {model} | {dl['fit_s']:.1f} | {plain['fit_s']:.1f} | {entry['fit_ratio']:.2f}x | {dl['wall_s']:.1f} | "
                f"{plain['wall_s']:.1f} | {entry['wall_ratio']:.2f}x | {entry['cpu_ratio']:.2f}x | {dl['images_per_s']:,.0f} | "
                f"{plain['images_per_s']:,.0f} |"
            )
    caching = results.get("caching")
    if caching:
        change = caching["change"]
        lines += [
            "",
            f"## Caching ({caching['dataset']}, {caching['epochs']} epochs per model)",
            "",
            "| dvc repro | seconds | stages run |",
            "|---|---|---|",
            f"| first run (everything) | {caching['first_repro_s']:.1f} | {len(caching['first_stages_ran'])} stages |",
            f"| no-op (median of {len(caching['noop'])}) | {caching['noop_repro_s']:.2f} | "
            f"{', '.join(sorted({s for run in caching['noop'] for s in run['stages_ran']})) or 'none'} |",
            f"| after `{change['override']}` | {change['repro_s']:.1f} | {', '.join(change['stages_ran']) or 'none'} |",
        ]
    memory = results.get("memory")
    if memory:
        lines += [
            "",
            f"## Memory ({memory['dataset']}, {memory['train_images']:,} training images = "
            f"{memory['train_arrays_float32_mb']:.0f} MB as float32)",
            "",
            f"A process that only imports TensorFlow peaks at {memory['import_floors_rss_mb']['tensorflow']:.0f} MB; "
            f"with Keras and MLflow at {memory['import_floor_rss_mb']:.0f} MB (the floor of any train process, not ours). "
            "\"Above floor\" is the train stage's peak RSS minus that floor, over the float32 training images.",
            "",
            "| model | train-stage peak RSS MB | x float32 training images | above floor | plain-Keras peak RSS MB | run |",
            "|---|---|---|---|---|---|",
            *(f"| {model} | {entry['peak_rss_mb']:.0f} | {entry['ratio']:.1f}x | {entry['above_import_floor_ratio']:.1f}x | "
              f"{'' if entry['plain_keras_peak_rss_mb'] is None else format(entry['plain_keras_peak_rss_mb'], '.0f')} | {entry['run']} |"
              for model, entry in memory["models"].items()),
        ]
        lines += _profile_markdown(memory.get("profiles", {}))
    accuracy = results.get("accuracy")
    if accuracy:
        lines += [
            "",
            "## Accuracy (test split; published numbers are the tutorials' own, on the dataset named)",
            "",
            "| dataset | recipe | model | test accuracy | evaluations (best) | train s | published |",
            "|---|---|---|---|---|---|---|",
        ]
        for run in accuracy["runs"]:
            if "skipped" in run:
                lines.append(f"| {run['dataset']} | {run['recipe']} | {run['model']} | skipped: {run['skipped']} | | | {run['published'] or ''} |")
                continue
            lines.append(
                f"| {run['dataset']} | {run['recipe']} | {run['model']} | {_accuracy_cell(run)} | "
                f"{_evaluations_cell(run)} | {run['train_time_s']:.0f} | {run['published'] or ''} |"
            )
    notes = results.get("notes")
    if notes:
        lines += ["", "## Notes", "", *(f"- {note}" for note in notes)]
    return "\n".join(lines) + "\n"


# --- command line -----------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny data, 1 epoch, 1 repetition: checks the harness only")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated default recipes to measure")
    parser.add_argument("--dataset", default=None, help="dataset of the overhead and memory parts (default fashion_mnist; quick: digits)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per overhead run (default 2; quick: 1)")
    parser.add_argument("--repeats", type=int, default=None, help="repetitions per overhead and cost measurement (default 2; quick: 1)")
    parser.add_argument("--caching-dataset", default=None, help="dataset of the caching part (default mnist_5k; quick: digits)")
    parser.add_argument("--caching-epochs", type=int, default=None, help="epochs per model in the caching part (default 2; quick: 1)")
    parser.add_argument("--noop-repeats", type=int, default=None, help="no-op dvc repro runs (default 5; quick: 2)")
    parser.add_argument("--accuracy-datasets", default=None, help="comma-separated (default fashion_mnist,mnist_5k; quick: digits)")
    parser.add_argument("--presets", default=",".join(PRESETS), help="comma-separated tutorial presets ('' for none)")
    parser.add_argument("--seeds", type=int, default=1, help="seeds per default recipe in the accuracy part (default 1)")
    parser.add_argument("--preset-seeds", type=int, default=None, help="seeds per tutorial preset in the accuracy part (default 3; quick: 1)")
    parser.add_argument("--work-dir", type=Path, default=None, help="where the project copies go (default: a temp dir, removed)")
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent, help="where results.json and RESULTS.md go")
    args = parser.parse_args(argv)
    quick = args.quick
    args.dataset = args.dataset or ("digits" if quick else "fashion_mnist")
    args.epochs = args.epochs or (1 if quick else 2)
    args.repeats = args.repeats or (1 if quick else 2)
    args.caching_dataset = args.caching_dataset or ("digits" if quick else "mnist_5k")
    args.caching_epochs = args.caching_epochs or (1 if quick else 2)
    args.noop_repeats = args.noop_repeats or (2 if quick else 5)
    args.accuracy_datasets = args.accuracy_datasets or ("digits" if quick else "fashion_mnist,mnist_5k")
    for name, allowed in (("parts", PARTS), ("models", MODELS), ("presets", PRESETS)):
        chosen = [item for item in getattr(args, name).split(",") if item]
        unknown = [item for item in chosen if item not in allowed]
        if unknown:
            parser.error(f"--{name}: unknown {', '.join(unknown)}; allowed: {', '.join(allowed)}")
        setattr(args, name, chosen)
    args.accuracy_datasets = [item for item in args.accuracy_datasets.split(",") if item]
    known = {path.stem for path in (ROOT / "conf" / "dataset").glob("*.yaml")}
    for dataset in (args.dataset, args.caching_dataset, *args.accuracy_datasets):
        if dataset not in known:
            parser.error(f"dataset {dataset!r} is not in conf/dataset/: allowed {', '.join(sorted(known))}")
    args.preset_seeds = (1 if quick else 3) if args.preset_seeds is None else args.preset_seeds
    for name in ("epochs", "repeats", "caching_epochs", "noop_repeats", "seeds", "preset_seeds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    started = time.perf_counter()
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="digitlab-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "versions": versions(),
        "settings": {
            "command": "python -m benchmarks.run " + " ".join(argv if argv is not None else sys.argv[1:]),
            "quick": args.quick, "parts": args.parts, "models": args.models, "dataset": args.dataset,
            "epochs": args.epochs, "repeats": args.repeats, "caching_dataset": args.caching_dataset,
            "caching_epochs": args.caching_epochs, "accuracy_datasets": args.accuracy_datasets, "presets": args.presets,
            "seeds": args.seeds, "preset_seeds": args.preset_seeds,
        },  # fmt: skip
        "notes": [],
    }
    projects: dict[str, Path] = {}
    log(f"working in {work}")
    try:
        if "overhead" in args.parts:
            project = dataset_project(work, args.dataset, projects)
            results["overhead"] = {"dataset": args.dataset, **measure_overhead(project, args.models, args.epochs, args.repeats, work)}
        if "caching" in args.parts:
            results["caching"] = measure_caching(work, args.caching_dataset, args.caching_epochs, args.noop_repeats)
        if "accuracy" in args.parts:
            results["accuracy"] = measure_accuracy(work, args.accuracy_datasets, args.models, args.presets, args.quick, projects,
                                                   args.seeds, args.preset_seeds)  # fmt: skip
        if "cost" in args.parts:
            results["cost"] = measure_cost(dataset_project(work, args.dataset, projects), args, results.get("accuracy"), work)
        if "memory" in args.parts:
            project = dataset_project(work, args.dataset, projects)
            results["memory"] = measure_memory(project, results.get("accuracy"), results.get("overhead"), args.models, work,
                                               prepared_info(project), native=not args.quick)  # fmt: skip
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    results["notes"].append("Published tutorial numbers are on MNIST or CIFAR-100, not on the datasets measured here.")
    results["targets"] = targets_table(results)
    results["wall_s"] = time.perf_counter() - started
    from digitlab.io import atomic_write_text

    args.out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out_dir / "results.json", json.dumps(results, indent=2) + "\n")
    from benchmarks.sections import with_sections

    markdown = args.out_dir / "RESULTS.md"  # the sections other benchmarks keep in it stay
    text = with_sections(render_markdown(results), markdown)
    if "cost" in results:  # its section is recipe_cost's own, kept in place
        from benchmarks import recipe_cost
        from benchmarks.sections import replace_section

        section = recipe_cost.markdown(args.dataset, args.repeats, results["cost"])
        text = replace_section(text, section, recipe_cost.SECTION_START, recipe_cost.SECTION_END)
    atomic_write_text(markdown, text)
    log(f"wrote {args.out_dir / 'results.json'} and {args.out_dir / 'RESULTS.md'} ({results['wall_s'] / 60:.1f} minutes)")
    for row in results["targets"]:
        log(f"{'MET   ' if row['met'] else 'MISSED'} {row['target']}: {row['measured']}")
    return results


if __name__ == "__main__":
    main()
