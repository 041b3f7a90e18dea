"""Sweeps on a real Ray cluster (hydra/launcher=ray, digitlab.raylaunch): two nodes on 127.0.0.1, each
started with `ray start`; the head killed mid-sweep; a cluster that is not there."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import mlflow
import pytest

from .conftest import free_port, run
from .ray_cluster import RayCluster, ray_unavailable
from .stack_fixtures import require
from .test_sweep import TINY, sweep_env, sweep_runs  # noqa: F401 - sweep_env is a fixture

pytestmark = pytest.mark.slow


@pytest.fixture
def ray_available() -> None:
    require("Ray", ray_unavailable())


def sweep(seeds: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "pipeline.train", "-m", "model=linear", f"seed={seeds}", "hydra/launcher=ray",
            "hydra.sweep.dir=multirun/ray", *TINY, *extra]  # fmt: skip


def test_a_sweep_runs_its_jobs_on_both_nodes_under_one_parent(ray_available, sweep_env):
    project, uri = sweep_env["project"], sweep_env["uri"]
    with RayCluster(nodes=2) as cluster:
        result = run(sweep("1,2,3,4"), project, env={**cluster.env, "MLFLOW_TRACKING_URI": uri, "RAY_ADDRESS": cluster.address})
    output = result.stdout + result.stderr
    assert f"Ray: 4 job(s) on Ray cluster at 127.0.0.1:{cluster.port}: 2 node(s), 2 CPUs" in output, output[-3000:]
    parent, children, _ = sweep_runs(uri)
    assert parent.info.status == "FINISHED" and len(children) == 4
    assert all(child.info.status == "FINISHED" for child in children)
    assert sorted(child.data.params["seed"] for child in children) == ["1", "2", "3", "4"]
    assert len({child.data.tags["ray.node_id"] for child in children}) == 2, "the jobs ran on both nodes"
    assert all(child.data.tags["digitlab.pid"] != parent.data.tags["digitlab.pid"] for child in children)
    assert all((project / "multirun" / "ray" / str(n) / "history.csv").is_file() for n in range(4))
    assert parent.data.metrics["best_val_accuracy"] == max(child.data.metrics["best_val_accuracy"] for child in children)


def test_the_head_killed_mid_sweep_is_one_line_and_the_same_command_continues(ray_available, sweep_env):
    project, uri = sweep_env["project"], sweep_env["uri"]
    client = mlflow.MlflowClient(uri)
    slower = ("models.linear.training.epochs=6", "hydra.launcher.lost_after_s=5")
    command = sweep("1,2,3,4", *slower)
    port = free_port()
    with RayCluster(nodes=2, port=port) as cluster:
        env = {**os.environ, **cluster.env, "MLFLOW_TRACKING_URI": uri, "RAY_ADDRESS": cluster.address}
        with (project / "first.log").open("w") as log:
            first = subprocess.Popen(command, cwd=project, env=env, stdout=log, stderr=subprocess.STDOUT)

        def finished() -> list:
            experiment = client.get_experiment_by_name("sweep-tests")
            found = client.search_runs([experiment.experiment_id], "attributes.status = 'FINISHED'") if experiment else []
            return [r for r in found if "mlflow.parentRunId" in r.data.tags]

        deadline = time.monotonic() + 300
        while not finished():
            assert first.poll() is None, (project / "first.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no job finished within 300 s"
            time.sleep(0.2)
        cluster.kill_head()
        assert first.wait(timeout=120) == 1
    log_text = (project / "first.log").read_text()
    errors = [line for line in log_text.splitlines() if line.startswith("digitlab: error:")]
    assert len(errors) == 1 and f"head at 127.0.0.1:{port} stopped answering" in errors[0], log_text[-3000:]
    assert "Traceback" not in log_text, log_text[-3000:]
    parent, children, _ = sweep_runs(uri)
    assert parent.info.status == "FAILED"
    done_before = {c.data.params["seed"] for c in children if c.info.status == "FINISHED"}
    assert 1 <= len(done_before) < 4

    with RayCluster(nodes=2, port=port) as cluster:  # the cluster back, at the same address: the same command continues
        second = run(command, project, env={**cluster.env, "MLFLOW_TRACKING_URI": uri, "RAY_ADDRESS": cluster.address})
    assert (second.stdout + second.stderr).count("skipped") == len(done_before), second.stderr[-3000:]
    parent, children, _ = sweep_runs(uri)
    assert parent.info.status == "FINISHED"
    assert sorted(c.data.params["seed"] for c in children if c.info.status == "FINISHED") == ["1", "2", "3", "4"], "each job once"


def test_no_cluster_at_the_address_is_one_line_and_exit_2(sweep_env):
    project, uri = sweep_env["project"], sweep_env["uri"]
    address = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    result = run(sweep("1,2", "hydra.launcher.connect_timeout_s=2"), project, env={"MLFLOW_TRACKING_URI": uri, "RAY_ADDRESS": address}, check=False)
    assert result.returncode == 2, result.stderr[-3000:]
    assert time.monotonic() - started < 60
    lines = [line for line in result.stderr.splitlines() if line.startswith("digitlab: error:")]
    assert lines == [f"digitlab: error: hydra.launcher.address={address}: no Ray cluster answers there within 2 s "
                     f"(start one: ray start --head --port {address.rsplit(':', 1)[1]}; or leave address null for a private one on this machine)"]  # fmt: skip
    assert "Traceback" not in result.stderr
    experiment = mlflow.MlflowClient(uri).get_experiment_by_name("sweep-tests")
    assert experiment is None or not mlflow.MlflowClient(uri).search_runs([experiment.experiment_id], "attributes.status = 'RUNNING'")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("hydra.launcher.num_cpus=-1", "hydra.launcher.num_cpus=-1 is not valid: expected a number >= 0"),
        ("hydra.launcher.address=nowhere", "hydra.launcher.address='nowhere' is not valid: expected host:port of a Ray head"),
    ],
)
def test_a_bad_launcher_setting_is_one_line_and_exit_2(sweep_env, override: str, message: str):
    result = run(sweep("1,2", override), sweep_env["project"], env={"MLFLOW_TRACKING_URI": sweep_env["uri"]}, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("digitlab: error:")]
    assert len(lines) == 1 and message in lines[0], result.stderr[-3000:]


def test_an_optuna_search_on_a_private_cluster_writes_no_token_and_leaves_nothing_running(ray_available, sweep_env, tmp_path):
    import optuna
    import psutil

    def raylets() -> set[int]:
        return {p.pid for p in psutil.process_iter(["name"]) if p.info["name"] == "raylet"}

    project, uri = sweep_env["project"], sweep_env["uri"]
    before, home = raylets(), tmp_path / "home"
    home.mkdir()
    env = {"MLFLOW_TRACKING_URI": uri, "HOME": str(home)}  # no RAY_ADDRESS, no RAY_AUTH_*: Ray's defaults
    command = [sys.executable, "-m", "pipeline.train", "-m", "hparams_search=optuna", "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=2",
               "hydra/launcher=ray", "hydra.launcher.address=local", "hydra.sweep.dir=multirun/optuna-ray", *TINY]  # fmt: skip
    result = run(command, project, env=env)
    assert "a private Ray cluster" in result.stderr + result.stdout
    study = optuna.load_study(study_name="digitlab-mlp-digits", storage=f"sqlite:///{project / 'optuna.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    parent, children, _ = sweep_runs(uri)
    assert parent.info.status == "FINISHED" and len(children) == 2 and all("ray.node_id" in c.data.tags for c in children)
    assert not (home / ".ray").exists(), "Ray's token was written to ~/.ray"
    deadline = time.monotonic() + 30
    while raylets() - before and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not raylets() - before, "the private cluster outlived its sweep"
