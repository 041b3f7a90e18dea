"""Hydra multirun sweeps of the train stage: one MLflow parent run, a nested run per job."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest

from digitlab import runs

from tests.conftest import run

TINY = [
    "dataset=digits", "models.linear.optimizer.learning_rate=0.05", "models.mlp.model.hidden_units=[16]",
    "models.linear.training.epochs=1", "models.mlp.training.epochs=1", "tracking.log_models=false",
    "tracking.experiment=sweep-tests",
]  # fmt: skip


@pytest.fixture
def sweep_env(project: Path, tiny_prepared: Path, _mlflow_template: Path) -> dict:
    (project / "data").mkdir()
    (project / "data" / "prepared").symlink_to(tiny_prepared)
    shutil.copy2(_mlflow_template, project / "mlflow.db")
    return {"project": project, "uri": f"sqlite:///{project / 'mlflow.db'}"}


def sweep_runs(uri: str):
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("sweep-tests")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("sweep") == "true" and "digitlab.killed_reason" not in r.data.tags]
    assert len(parents) == 1, [r.info.run_name for r in runs]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    return parents[0], children, runs


def test_parallel_multirun_is_one_parent_with_a_child_per_job(sweep_env):
    project = sweep_env["project"]
    # The parent of a sweep whose process was SIGKILLed: this sweep closes it KILLED.
    client = mlflow.MlflowClient(tracking_uri=sweep_env["uri"])
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    abandoned = client.create_run(client.create_experiment("sweep-tests", (project / "mlruns" / "sweep-tests").as_uri()), tags={
        "sweep": "true", runs.HOST_TAG: socket.gethostname(), runs.PID_TAG: dead, runs.CLAIMED_TAG: str(int(time.time())),
    }).info.run_id  # fmt: skip
    result = run(
        ["python", "-m", "pipeline.train", "-m", "model=linear,mlp", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
         "hydra.sweep.dir=multirun/test", *TINY],
        # A stray run id must not capture the jobs (pitfall 7).
        project, env={"MLFLOW_RUN_ID": "0" * 32, "MLFLOW_TRACKING_URI": sweep_env["uri"]},
    )  # fmt: skip
    parent, children, found = sweep_runs(sweep_env["uri"])
    assert len(found) == 4 and sorted(c.data.tags["model"] for c in children) == ["linear", "mlp"]
    assert client.get_run(abandoned).info.status == "KILLED" and "is gone" in client.get_run(abandoned).data.tags[runs.KILLED_TAG]
    assert parent.data.tags[runs.PID_TAG].isdigit() and int(parent.data.tags[runs.HEARTBEAT_TAG]) >= int(parent.data.tags[runs.CLAIMED_TAG])
    assert parent.info.status == "FINISHED" and all(c.info.status == "FINISHED" for c in children)
    assert parent.data.metrics["best_val_accuracy"] == max(c.data.metrics["best_val_accuracy"] for c in children)
    assert "model=mlp" in {c.data.tags["hydra_overrides"].split()[0] for c in children}
    for job in ("0", "1"):  # job dirs by number: never the same folder
        assert (project / "multirun" / "test" / job / "model.keras").is_file(), result.stderr[-2000:]
    assert not (project / "models").exists()


@pytest.mark.slow
def test_optuna_search_maximises_validation_accuracy(sweep_env):
    project = sweep_env["project"]
    run(
        ["python", "-m", "pipeline.train", "-m", "hparams_search=optuna", "hydra.sweeper.n_trials=2",
         "hydra.sweep.dir=multirun/optuna", *TINY],
        project, env={"MLFLOW_TRACKING_URI": sweep_env["uri"]},
    )  # fmt: skip
    parent, children, _ = sweep_runs(sweep_env["uri"])
    assert len(children) == 2 and {c.data.tags["model"] for c in children} == {"mlp"}
    rates = {c.data.params["models.mlp.optimizer.learning_rate"] for c in children}
    assert len(rates) == 2, "each trial tries its own learning rate"
    optimization = (project / "multirun" / "optuna" / "optimization_results.yaml").read_text()
    assert f"best_value: {parent.data.metrics['best_val_accuracy']}" in optimization


def test_a_run_by_hand_resumes_in_its_own_stable_folder(sweep_env):
    """``python -m pipeline.train model=mlp`` (Hydra mode) stopped and run again continues the same run
    in the same folder, runs/<recipe>-<fingerprint>/, where Hydra's logs go too."""
    project = sweep_env["project"]
    overrides = [o for o in TINY if "training.epochs" not in o] + ["model=mlp", "models.mlp.training.epochs=6", "models.mlp.training.batch_size=16"]
    command = [sys.executable, "-m", "pipeline.train", *overrides]
    env = {**os.environ, "MLFLOW_TRACKING_URI": sweep_env["uri"]}
    with (project / "first.log").open("w") as log:
        first = subprocess.Popen(command, cwd=project, env=env, stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.monotonic() + 180
    while not list((project / ".digitlab" / "checkpoints").glob("mlp-*/state.json")):
        assert first.poll() is None and time.monotonic() < deadline, (project / "first.log").read_text()[-3000:]
        time.sleep(0.02)
    first.send_signal(signal.SIGTERM)
    first.wait(timeout=60)
    (folder,) = (project / "runs").iterdir()
    assert folder.name.startswith("mlp-") and len(folder.name) == len("mlp-") + 12
    run(command, project, env={"MLFLOW_TRACKING_URI": sweep_env["uri"]})
    assert [p.name for p in (project / "runs").iterdir()] == [folder.name], "the same command, the same folder"
    assert (folder / ".hydra" / "overrides.yaml").is_file() and (folder / "model.keras").is_file()
    client = mlflow.MlflowClient(tracking_uri=sweep_env["uri"])
    (only,) = client.search_runs([client.get_experiment_by_name("sweep-tests").experiment_id])
    assert json.loads((folder / "run.json").read_text())["run_id"] == only.info.run_id and only.info.status == "FINISHED"
    assert json.loads((folder / "train.json").read_text())["epochs"] == 6

    # An output_dir given is where the run goes.
    mine = [o for o in overrides if "epochs" not in o] + ["models.mlp.training.epochs=1", f"output_dir={project / 'mine'}"]
    run([sys.executable, "-m", "pipeline.train", *mine], project, env={"MLFLOW_TRACKING_URI": sweep_env["uri"]})
    assert (project / "mine" / "model.keras").is_file() and (project / "mine" / ".hydra").is_dir()


@pytest.mark.slow
def test_an_interrupted_grid_sweep_run_again_skips_its_finished_jobs(sweep_env):
    project, uri = sweep_env["project"], sweep_env["uri"]
    command = [sys.executable, "-m", "pipeline.train", "-m", "model=linear", "models.linear.optimizer.learning_rate=0.02,0.05,0.1",
               *(o for o in TINY if "linear.optimizer" not in o)]  # fmt: skip
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    with (project / "first.log").open("w") as log:
        first = subprocess.Popen(command, cwd=project, env=env, stdout=log, stderr=subprocess.STDOUT)
    client, deadline = mlflow.MlflowClient(tracking_uri=uri), time.monotonic() + 300

    def finished() -> list:
        experiment = client.get_experiment_by_name("sweep-tests")
        found = client.search_runs([experiment.experiment_id], "attributes.status = 'FINISHED'") if experiment else []
        return [r for r in found if "mlflow.parentRunId" in r.data.tags]

    while not finished():
        assert first.poll() is None, (project / "first.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "no job finished within 300 s"
        time.sleep(0.1)
    first.send_signal(signal.SIGINT)  # Ctrl-C
    first.wait(timeout=120)
    text = (project / "first.log").read_text()
    assert first.returncode == 130 and "Traceback" not in text, text[-3000:]
    assert text.rstrip().endswith("digitlab: interrupted; run the same command again to continue"), text[-3000:]
    done_before = {r.data.params["models.linear.optimizer.learning_rate"] for r in finished()}
    assert 1 <= len(done_before) < 3

    second = run(command, project, env={"MLFLOW_TRACKING_URI": uri})
    assert (second.stdout + second.stderr).count("skipped") == len(done_before), second.stdout[-3000:]
    parent, children, _ = sweep_runs(uri)
    ok = [c for c in children if c.info.status == "FINISHED"]
    assert sorted(c.data.params["models.linear.optimizer.learning_rate"] for c in ok) == ["0.02", "0.05", "0.1"], "each job once"
    assert parent.info.status == "FINISHED" and parent.data.metrics["best_val_accuracy"] == max(c.data.metrics["best_val_accuracy"] for c in ok)

    # sweep.skip_finished=false: a new sweep, every job again.
    run([*command, "sweep.skip_finished=false"], project, env={"MLFLOW_TRACKING_URI": uri})
    experiment = client.get_experiment_by_name("sweep-tests").experiment_id
    assert len(client.search_runs([experiment], "tags.sweep = 'true'")) == 2
