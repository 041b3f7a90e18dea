"""MLflow connection and runs across processes: a real tracking server, a closed port (a killed training: test_faults.py)."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import mlflow
import pytest

from digitlab import tracking
from digitlab.errors import DigitlabError
from digitlab.tracking import TrackingSettings
from digitlab.training.loop import train
from tests.conftest import ctrl_c_at_a_random_moment, free_port, tiny_settings

ROOT = Path(__file__).resolve().parents[1]
TINY_MLP = [
    "model=mlp", "models.mlp.model.hidden_units=[32]", "models.mlp.optimizer.learning_rate=0.01",
    "models.mlp.training.batch_size=64", "tracking.log_models=false",
]  # fmt: skip


@pytest.fixture
def data_dir(tiny_prepared: Path, tmp_path: Path) -> Path:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "prepared").symlink_to(tiny_prepared)
    return tmp_path / "data"


def test_resolve_uri_prefers_config_then_environment_and_anchors_relative_sqlite(monkeypatch):
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////tmp/from-env.db")
    assert tracking.resolve_uri(TrackingSettings(uri="http://example.invalid:5000")) == "http://example.invalid:5000"
    assert tracking.resolve_uri(TrackingSettings()) == "sqlite:////tmp/from-env.db"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert tracking.resolve_uri(TrackingSettings()) == f"sqlite:///{ROOT / 'mlflow.db'}"
    # A relative SQLite path is the project's, wherever the command runs.
    assert tracking.resolve_uri(TrackingSettings(uri="sqlite:///stores/mlflow.db")) == f"sqlite:///{ROOT / 'stores' / 'mlflow.db'}"


def test_experiment_creation_tolerates_a_concurrent_creator(mlflow_uri: str) -> None:
    """Two jobs starting at once both look the experiment up, find nothing, and create it: both must get it."""
    import threading

    settings = TrackingSettings(experiment="raced")
    barrier, ids, errors = threading.Barrier(4), [], []

    def start() -> None:
        barrier.wait()
        try:
            ids.append(tracking.experiment_id(settings, "digits"))
        except Exception as exc:  # noqa: BLE001 - the test reports any failure
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(set(ids)) == 1 and len(ids) == 4


def test_closed_port_is_an_error_within_seconds_naming_the_uri():
    uri = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(DigitlabError, match=rf"MLflow tracking server {uri} is unreachable.*mlflow server --host 127\.0\.0\.1"):
        tracking.configure(TrackingSettings(uri=uri, connect_timeout=3))
    assert time.monotonic() - started < 5


def test_flat_params_fit_mlflow_limits():
    settings = tiny_settings(f"tracking.experiment={'x' * 499}", "dataset.name=" + "d" * 100)
    params = tracking.flat_params(settings)
    assert params["models.cnn.optimizer.name"] == "adam" and all(len(value) <= tracking.MAX_PARAM_LENGTH for value in params.values())
    assert params["models.mlp.model.hidden_units"] == "[32]"




def test_training_logs_to_a_real_tracking_server(mlflow_server, data_dir, tmp_path):
    settings = tiny_settings(
        *TINY_MLP, "models.mlp.training.epochs=1", f"paths.data={data_dir}", f"tracking.uri={mlflow_server}",
        f"output_dir={tmp_path / 'out'}", "tracking.log_models=true",
    )  # fmt: skip
    result = train(settings).run
    assert result.tracking_uri == mlflow_server
    client = mlflow.MlflowClient(tracking_uri=mlflow_server)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["model"] == "mlp"
    assert len(client.get_metric_history(result.run_id, "val_accuracy")) == 2
    assert {"config.yaml", "curves.png"} <= {a.path for a in client.list_artifacts(result.run_id)}
    assert any((tmp_path / "artifacts").rglob("curves.png")), "artifacts go through the server to its destination"


def test_run_tags_name_the_dvc_experiment_and_commit(monkeypatch):
    monkeypatch.setenv("DVC_EXP_NAME", "crisp-lynx")
    tags = tracking.run_tags("cnn", "mnist_5k")
    assert tags["model"] == "cnn" and tags["dataset"] == "mnist_5k" and tags["dvc_experiment"] == "crisp-lynx"
    assert tags["git_commit"] == tracking.git_commit(ROOT) and len(tags["git_commit"]) == 40
    assert "hydra_overrides" not in tags  # not a Hydra job


def test_a_run_starts_even_when_another_experiment_is_active(mlflow_uri: str) -> None:
    """A notebook that called mlflow.set_experiment before must not break training's runs."""
    cfg = TrackingSettings(experiment="digitlab-tests")
    with tracking.tracked_run(cfg, "mlp", "digits") as first:
        tracking.active_run().journal.log_metrics({"accuracy": 0.5}, step=1)
    mlflow.set_experiment("someone-elses-experiment")
    with tracking.tracked_run(cfg, "mlp", "digits", run_id=first.run_id) as resumed:
        tracking.active_run().journal.log_metrics({"accuracy": 0.75}, step=2)
    assert resumed.run_id == first.run_id and not first.journal.directory.exists()  # delivered: nothing kept
    client = mlflow.MlflowClient()
    assert client.get_run(first.run_id).info.status == "FINISHED"
    assert [(m.step, m.value) for m in client.get_metric_history(first.run_id, "accuracy")] == [(1, 0.5), (2, 0.75)]


def test_ctrl_c_at_any_moment_of_starting_a_run_leaves_no_run_running(mlflow_uri: str) -> None:
    """A Ctrl-C after the store created the run but before its journal could end it left the run RUNNING
    until the next start closed it as stale. Stops at random moments of a run's start, body and end, on a real
    SQLite store: every run ends at once."""
    cfg = TrackingSettings(experiment="stops")
    chance = random.Random(0)
    with tracking.tracked_run(cfg, "mlp", "digits"):  # the experiment exists: every stop below lands in a run's start
        pass

    def one_run() -> None:
        with tracking.tracked_run(cfg, "mlp", "digits"):
            tracking.active_run().journal.log_metrics({"accuracy": 0.5}, step=1)

    for _ in range(30):
        ctrl_c_at_a_random_moment(one_run, chance, 0.2)
    client = mlflow.MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name("stops").experiment_id], max_results=100)
    assert len(runs) > 10 and [r.info.run_id for r in runs if r.info.status == "RUNNING"] == []


def _ui_tree(port: int) -> list:
    """The processes of the `make ui` started with UI_PORT=port: make and everything under it."""
    import psutil

    (make,) = [p for p in psutil.process_iter(["cmdline"]) if f"UI_PORT={port}" in (p.info["cmdline"] or [])]
    return [make, *make.children(recursive=True)]


def _make_ui(port: int) -> list[str]:
    import sys

    venv = Path(sys.executable).parent.parent
    return ["make", "-s", "-f", str(ROOT / "Makefile"), "-o", str(venv / ".installed"), "ui", f"VENV={venv}", f"UI_PORT={port}"]


def test_make_ui_serves_without_mlflows_job_runner(tmp_path, monkeypatch):
    """`make ui` for real (its Makefile rule, this environment's venv, a store in tmp): no Huey workers of MLflow's
    job runner in its process tree."""
    from tests.conftest import command_lines, job_runner_lines, serving

    monkeypatch.delenv("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", raising=False)
    with serving(_make_ui, "/health", tmp_path, timeout=120) as url:
        port = int(url.rsplit(":", 1)[1])
        assert job_runner_lines(_ui_tree(port)) == [], [line[:4] for line in command_lines(_ui_tree(port))]
    assert (tmp_path / "mlflow.db").is_file(), "the store of the folder make ran in"


def test_make_ui_hands_mlflow_the_job_runner_setting_a_user_exported(tmp_path):
    """MLFLOW_SERVER_ENABLE_JOB_EXECUTION=true exported: `make ui` starts MLflow's server with it, not with its own
    false. (MLflow then starts its eight job-runner processes, 25 s of CPU: the test stops the server once it has
    seen the setting in the server's environment, before that.)"""
    import subprocess

    import psutil

    from digitlab.stack.procs import terminate_started
    from tests.conftest import user_env

    port = free_port()
    make = subprocess.Popen(_make_ui(port), cwd=tmp_path, env=user_env({"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "true"}),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    try:
        deadline, seen = time.monotonic() + 60, None
        while seen is None and time.monotonic() < deadline and make.poll() is None:
            for process in psutil.Process(make.pid).children(recursive=True):
                try:
                    if any(part.endswith("mlflow") for part in process.cmdline()[:2]):
                        seen = process.environ().get("MLFLOW_SERVER_ENABLE_JOB_EXECUTION")
                except psutil.Error:  # ended meanwhile
                    continue
            time.sleep(0.1)
        assert seen == "true", f"mlflow's environment had {seen!r} (make exited {make.poll()})"
    finally:
        terminate_started(make)
