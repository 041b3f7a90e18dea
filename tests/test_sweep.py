"""Hydra multirun sweeps of the train stage: one MLflow parent run, a nested run per job."""

from __future__ import annotations

import shutil
from pathlib import Path

import mlflow
import pytest

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
    parents = [r for r in runs if r.data.tags.get("sweep") == "true"]
    assert len(parents) == 1, [r.info.run_name for r in runs]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    return parents[0], children, runs


def test_parallel_multirun_is_one_parent_with_a_child_per_job(sweep_env):
    project = sweep_env["project"]
    result = run(
        ["python", "-m", "pipeline.train", "-m", "model=linear,mlp", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
         "hydra.sweep.dir=multirun/test", *TINY],
        # A stray run id must not capture the jobs (pitfall 7).
        project, env={"MLFLOW_RUN_ID": "0" * 32, "MLFLOW_TRACKING_URI": sweep_env["uri"]},
    )  # fmt: skip
    parent, children, runs = sweep_runs(sweep_env["uri"])
    assert len(runs) == 3 and sorted(c.data.tags["model"] for c in children) == ["linear", "mlp"]
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
