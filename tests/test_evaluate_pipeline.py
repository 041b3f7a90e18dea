"""The whole DAG under DVC on tiny data: evaluate and report outputs, DVC metrics and plots."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run

MODELS = ("linear", "mlp", "cnn")


@pytest.mark.slow
def test_dvc_exp_run_produces_metrics_plots_and_report(project: Path, tmp_path: Path) -> None:
    env = {"DIGITLAB_CACHE_DIR": str(tmp_path / "cache"), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    settings = ["dataset=digits", *(f"models.{name}.training.epochs=2" for name in MODELS)]
    run(["dvc", "exp", "run", *(arg for setting in settings for arg in ("-S", setting))], project, env=env, timeout=900)

    for name in MODELS:
        result = json.loads((project / "reports" / name / "metrics.json").read_text())
        assert result["n_test"] == 360 and 0 <= result["accuracy"] <= 1
        assert (project / "reports" / name / "figures" / "confusion_matrix.png").stat().st_size > 1000
    html = (project / "reports" / "report.html").read_text()
    assert all(f'id="row-{name}"' in html for name in MODELS)
    assert "McNemar" in (project / "reports" / "summary.md").read_text()

    shown = json.loads(run(["dvc", "metrics", "show", "--json"], project, env=env).stdout)
    metrics_files = next(iter(shown.values()))["data"]
    for name in MODELS:
        assert metrics_files[f"reports/{name}/metrics.json"]["data"]["accuracy"] == pytest.approx(
            json.loads((project / "reports" / name / "metrics.json").read_text())["accuracy"]
        )
    plots = run(["dvc", "plots", "show", "--json"], project, env=env).stdout
    assert "reports/cnn/confusion.csv" in plots and "Accuracy (train and validation)" in plots
    out = run(["dvc", "plots", "show", "-o", str(tmp_path / "plots")], project, env=env)
    assert (tmp_path / "plots" / "index.html").is_file(), out.stdout
