"""The whole DAG as a user runs it: dvc repro, a no-op repro, a one-model experiment, metrics, plots, MLflow.

The first and no-op repros are run by the benchmark harness's caching part
(``benchmarks.run.time_repros``, what ``make bench`` measures on a project of
its own), so that one pipeline run checks both the pipeline and that part.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import mlflow
import pytest
import yaml

from .conftest import run, start_queue, user_env

# The module fixture runs the whole pipeline and its follow-ups in the first test's setup: about 4 minutes
# on 2 idle cores, more than make test's --timeout 900 when other jobs share the machine.
pytestmark = pytest.mark.timeout(1800)

RECIPES = ("linear", "mlp", "cnn")

TINY = """# @package _global_
# Tiny settings for the end-to-end test: real training, seconds per model.
defaults:
  - override /dataset: digits
models:
  linear:
    training: {epochs: 2, batch_size: 64}
  mlp:
    model: {hidden_units: [32]}
    training: {epochs: 2, batch_size: 64}
  cnn:
    model: {conv_filters: [8], convs_per_block: 1, dense_units: [16]}
    training: {epochs: 1, batch_size: 64}
"""


def stages_run(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@t.invalid"]


def make_project(project: Path, recipes: tuple[str, ...] = RECIPES) -> None:
    """A git clone of this repository's HEAD with the uncommitted work copied over (it must be tested too),
    on TINY settings, committed. ``recipes``: the pipeline's recipes (a subset of conf/'s three: the others
    are taken out of the project's conf/config.yaml, so that DVC has no train or evaluate stage for them)."""
    import shutil

    from .conftest import ROOT

    subprocess.run(["git", "clone", "-q", str(ROOT), str(project)], check=True)
    for name in ("conf", "pipeline", "src", "dvc.yaml", "params.yaml", ".dvcignore", ".gitignore"):
        source = ROOT / name
        if source.is_dir():
            shutil.rmtree(project / name)
            shutil.copytree(source, project / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(source, project / name)
    tiny = yaml.safe_load(TINY)
    config = project / "conf" / "config.yaml"
    text = config.read_text().replace("  - experiment: null", "  - experiment: tiny")
    dropped = [recipe for recipe in RECIPES if recipe not in recipes]
    if dropped:
        composed = yaml.safe_load(text)
        composed["defaults"] = [entry for entry in composed["defaults"]
                                if not (isinstance(entry, dict) and any(f"@models.{d}." in key for key in entry for d in dropped))]  # fmt: skip
        for recipe in dropped:
            del composed["models"][recipe], tiny["models"][recipe]
        if composed["model"] in dropped:
            composed["model"] = recipes[0]
        text = yaml.safe_dump(composed, sort_keys=False)
    config.write_text(text)
    (project / "conf" / "experiment" / "tiny.yaml").write_text("# @package _global_\n" + yaml.safe_dump(tiny, sort_keys=False))
    run(["digitlab", "params"], project)
    run([*GIT, "add", "-A"], project)
    run([*GIT, "commit", "-qm", "tiny settings"], project)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One real `dvc repro` of the whole pipeline on tiny settings, then the follow-ups."""
    project = tmp_path_factory.mktemp("e2e") / "project"
    make_project(project)
    git = GIT

    env = {"MLFLOW_TRACKING_URI": ""}  # the project's own store: <root>/mlflow.db
    from benchmarks.run import time_repros

    # `dvc repro`, a no-op `dvc repro`, then one with the linear learning rate doubled: the benchmark's caching part.
    logs = project.parent / "repro-logs"
    caching = time_repros(project, [], noop_repeats=1, logs=logs, env=user_env(env))
    first, noop = (logs / "repro-first.log").read_text(), (logs / "repro-noop-1.log").read_text()
    # The benchmark's change stays: written into conf/ (the tiny preset), every later `dvc exp run`, which recomposes
    # params.yaml from conf/, keeps it. (Going back to the first run's parameters instead would take one more
    # `dvc repro` that only restores from the run cache: the last experiment below checks that restore, for the CNN.)
    name, value = caching["change"]["override"].split("=")
    assert name == "models.linear.optimizer.learning_rate", name
    preset = project / "conf" / "experiment" / "tiny.yaml"
    tiny = yaml.safe_load(preset.read_text())
    tiny["models"]["linear"].setdefault("optimizer", {})["learning_rate"] = float(value)
    preset.write_text("# @package _global_\n" + yaml.safe_dump(tiny, sort_keys=False))
    run([*git, "add", "-A"], project)
    run([*git, "commit", "-qm", "first run"], project)
    # The README's pair of -S for a CNN with another number of blocks (conv_filters alone is refused).
    experiment = run(["dvc", "exp", "run", "-S", "models.cnn.training.epochs=2", "-S", "models.cnn.model.conv_filters=[8,8]",
                      "-S", "models.cnn.model.convs_per_block=[1,2]"], project, env=env, timeout=900)  # fmt: skip
    params_after_experiment = yaml.safe_load((project / "params.yaml").read_text())
    # Experiments in copies under .dvc/tmp/exps, side by side: one --temp and, once it runs in its copy, two queued
    # and run two at a time. The queued ones are composed from conf/, where the CNN has the first run's epochs (1, not
    # the workspace's 2): DVC's run cache gives them its train and evaluate stages back, nothing trains for it.
    temp_log = project.parent / "temp.log"
    with temp_log.open("w") as output:
        temp = subprocess.Popen(["dvc", "exp", "run", "--temp", "-n", "temp-linear", "-S", "models.linear.training.epochs=3"],
                                cwd=project, env=user_env(env), stdout=output, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while "Running stage" not in temp_log.read_text():
            assert temp.poll() is None and time.monotonic() < deadline, temp_log.read_text()[-3000:]
            time.sleep(0.2)
        for name, override in (("queued-mlp", "models.mlp.training.epochs=3"), ("queued-linear", "models.linear.training.epochs=1")):
            run(["dvc", "exp", "run", "--queue", "-n", name, "-S", override], project, env=env)
        start_queue(project, env)
        queue = wait_for_queue(project, env)
        assert temp.wait(timeout=900) == 0, temp_log.read_text()[-3000:]
    finally:
        if temp.poll() is None:
            temp.kill()
    return {
        "project": project, "first": first, "noop": noop, "caching": caching, "experiment": experiment.stdout,
        "temp": temp_log.read_text(), "queue": queue, "queued_log": run(["dvc", "queue", "logs", "queued-mlp"], project, env=env).stdout,
        "params_after_experiment": params_after_experiment,
        "exp_names": exp_names(project),  # one `dvc exp show` for the two tests that look the experiments up
    }  # fmt: skip


def wait_for_queue(project: Path, env: dict, timeout: float = 900) -> str:
    """Poll `dvc queue status` until nothing is queued or running; return the last status."""
    deadline = time.monotonic() + timeout
    while True:
        status = run(["dvc", "queue", "status"], project, env=env).stdout
        if not re.search(r"\b(Queued|Running)\b", status):
            run(["dvc", "queue", "stop"], project, env=env, check=False)
            return status
        assert time.monotonic() < deadline, f"the queue did not finish in {timeout:.0f} s:\n{status}"
        time.sleep(3)


def test_first_repro_runs_every_stage_and_writes_every_output(pipeline: dict) -> None:
    project: Path = pipeline["project"]
    expected = {"download", "preprocess", *(f"{s}@{m}" for s in ("train", "evaluate") for m in RECIPES), "report"}
    assert stages_run(pipeline["first"]) == expected
    for model in RECIPES:
        assert (project / "models" / model / "model.keras").stat().st_size > 0
        metrics = json.loads((project / "reports" / "evaluation" / model / "metrics.json").read_text())
        assert 0.0 <= metrics["accuracy"] <= 1.0
        assert sorted((project / "reports" / "evaluation" / model / "figures").glob("*.png"))
    report = (project / "reports" / "report.html").read_text()
    assert all(f'id="row-{model}"' in report for model in RECIPES)
    assert "data:image/png;base64," in report
    assert "McNemar" in (project / "reports" / "summary.md").read_text()


def test_second_repro_does_nothing(pipeline: dict) -> None:
    assert stages_run(pipeline["noop"]) == set()
    assert "Data and pipelines are up to date" in pipeline["noop"]


def test_benchmark_caching_part_records_what_each_repro_ran_and_reports_it(pipeline: dict) -> None:
    """``make bench``'s caching part (``benchmarks.run.time_repros``), as it measured this pipeline."""
    import benchmarks.run as bench

    caching = pipeline["caching"]
    assert len(caching["first_stages_ran"]) == 9  # download, preprocess, 3 x train, 3 x evaluate, report
    assert [run_["stages_ran"] for run_ in caching["noop"]] == [[]]
    assert caching["noop_repro_s"] > 0
    assert caching["change"]["stages_ran"] == ["evaluate@linear", "report", "train@linear"]
    assert caching["change"]["only_expected_ran"] is True
    results = {"date": "-", "machine": bench.machine(), "versions": {}, "wall_s": 0.0, "caching": {"dataset": "digits", "epochs": 1, **caching},
               "settings": {"command": "-", "quick": True, "parts": ["caching"], "models": list(RECIPES)}}  # fmt: skip
    results["targets"] = bench.targets_table(results)
    assert any(row["target"].startswith("one changed parameter") and row["met"] is True for row in results["targets"])
    markdown = bench.render_markdown(results)
    assert "## Caching" in markdown and "no-op" in markdown


def test_changing_one_model_reruns_only_that_model_and_the_report(pipeline: dict) -> None:
    assert stages_run(pipeline["experiment"]) == {"train@cnn", "evaluate@cnn", "report"}


def test_params_yaml_was_recomposed_with_the_experiment_override(pipeline: dict) -> None:
    params = pipeline["params_after_experiment"]
    assert params["models"]["cnn"]["training"]["epochs"] == 2
    assert params["models"]["cnn"]["model"]["conv_filters"] == [8, 8] and params["models"]["cnn"]["model"]["convs_per_block"] == [1, 2]
    assert params["dataset"]["name"] == "digits"  # the tiny preset from conf/ still applies


def test_the_experiment_trained_the_cnn_its_settings_name(pipeline: dict) -> None:
    import keras

    model = keras.models.load_model(pipeline["project"] / "models" / "cnn" / "model.keras")
    convolutions = [layer.name for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert convolutions == ["block1_conv1", "block2_conv1", "block2_conv2"]


def test_dvc_metrics_show_and_diff_list_the_three_models(pipeline: dict) -> None:
    project = pipeline["project"]
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], project).stdout)
    files = next(iter(shown.values()))["data"]
    for model in RECIPES:
        on_disk = json.loads((project / "reports" / "evaluation" / model / "metrics.json").read_text())
        assert files[f"reports/evaluation/{model}/metrics.json"]["data"]["accuracy"] == pytest.approx(on_disk["accuracy"])
        assert all(isinstance(v, (int, float)) for v in files[f"models/{model}/train.json"]["data"].values())
    diff = json.loads(run(["dvc", "metrics", "diff", "--json"], project).stdout)
    assert any(path.startswith("reports/evaluation/cnn/") for path in diff), "the CNN experiment changed no CNN metric"


def test_dvc_plots_show_renders_confusion_matrices_and_curves(pipeline: dict) -> None:
    project = pipeline["project"]
    run(["dvc", "plots", "show", "-o", "plots_html"], project)
    html = (project / "plots_html" / "index.html").read_text()
    assert "confusion" in html.lower()
    assert "val_accuracy" in html


def test_dvc_exp_show_lists_the_experiment(pipeline: dict) -> None:
    shown = run(["dvc", "exp", "show", "--no-pager", "--csv"], pipeline["project"]).stdout
    assert "models.cnn.training.epochs" in shown


def test_mlflow_store_at_the_project_root_holds_finished_runs(pipeline: dict) -> None:
    project: Path = pipeline["project"]
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    runs = [run for exp in client.search_experiments() for run in client.search_runs([exp.experiment_id])]
    by_model = {}
    for found in runs:
        assert found.info.status == "FINISHED", f"run {found.info.run_id} is {found.info.status}"
        by_model.setdefault(found.data.tags.get("model"), []).append(found)
    for model in RECIPES:
        assert by_model.get(model), f"no MLflow run for {model}"
    cnn_runs = by_model["cnn"]
    assert len(cnn_runs) == 2, "the experiment's CNN retraining should be a second CNN run"
    latest = max(cnn_runs, key=lambda found: found.info.start_time)
    assert "test_accuracy" in latest.data.metrics, "evaluate did not log to the training run"
    history = client.get_metric_history(latest.info.run_id, "val_accuracy")
    assert sorted(metric.step for metric in history) == [0, 1, 2], "before training (step 0), then one per epoch"
    assert latest.data.tags.get("dvc_experiment"), "a run under `dvc exp run` is tagged with the experiment name"


def exp_names(project: Path) -> set[str]:
    shown = json.loads(run(["dvc", "exp", "show", "--json"], project).stdout)
    return {exp.get("name") for baseline in shown for exp in (baseline.get("experiments") or [])}


def test_temp_experiment_runs_in_its_copy_and_comes_back(pipeline: dict) -> None:
    project: Path = pipeline["project"]
    ran = stages_run(pipeline["temp"])
    assert {"train@linear", "evaluate@linear", "report"} <= ran
    assert {stage for stage in ran if stage.startswith("train@")} == {"train@linear"}, "only the changed recipe trains"
    assert "temp-linear" in pipeline["exp_names"]
    assert not (project / ".dvc" / "tmp" / "exps" / "data").exists(), "no output may land outside the copy"


def test_two_queued_experiments_run_two_at_a_time_and_succeed(pipeline: dict) -> None:
    project: Path = pipeline["project"]
    status = pipeline["queue"]
    assert len(re.findall(r"\bSuccess\b", status)) >= 2 and "Failed" not in status, status
    assert {"queued-mlp", "queued-linear"} <= pipeline["exp_names"]
    run(["dvc", "exp", "apply", "queued-mlp"], project)
    params = yaml.safe_load((project / "params.yaml").read_text())
    assert params["models"]["mlp"]["training"]["epochs"] == 3
    assert json.loads((project / "models" / "mlp" / "train.json").read_text())["epochs"] <= 3


def test_experiments_in_copies_log_to_the_project_store(pipeline: dict) -> None:
    project: Path = pipeline["project"]
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    runs = [found for exp in client.search_experiments() for found in client.search_runs([exp.experiment_id])]
    tagged = {found.data.tags.get("dvc_experiment") for found in runs}
    assert {"temp-linear", "queued-mlp", "queued-linear"} <= tagged
    assert all(found.info.status == "FINISHED" for found in runs)


def test_returning_to_parameters_already_run_restores_the_stages_without_running_them(pipeline: dict) -> None:
    """The queued experiment went back to the first run's CNN: DVC's run cache restored its training and evaluation."""
    log = pipeline["queued_log"]
    assert stages_run(log) == {"train@mlp", "evaluate@mlp", "report"}, log[-3000:]
    for stage in ("train@cnn", "evaluate@cnn"):
        assert f"Stage '{stage}' is cached - skipping run" in log, log[-3000:]
