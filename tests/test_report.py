"""The report stage: every model's numbers, McNemar verdicts, MLflow report run and registration."""

from __future__ import annotations

import json
import re
import shutil

import mlflow
import pytest

from digitlab.errors import DigitlabError
from digitlab.report import build

pytest.register_assert_rewrite("tests.evaluation_fixtures")
from tests.evaluation_fixtures import MODEL_NAMES, config  # noqa: E402

pytest_plugins = ["tests.evaluation_fixtures"]


def metrics_of(root, name):
    return json.loads((root / "reports" / name / "metrics.json").read_text())


def test_report_shows_every_model_with_its_metrics(reported):
    root, run_ids, _, best = reported
    html = (root / "reports" / "report.html").read_text()
    for name in MODEL_NAMES:
        result = metrics_of(root, name)
        row = re.search(rf'<tr class="[^"]*" id="row-{name}">(.*?)</tr>', html, re.S)
        assert row, f"no table row for {name}"
        cells = re.findall(r"<td>(.*?)</td>", row.group(1), re.S)
        assert f"{100 * result['accuracy']:.2f}%" in cells[1]
        assert f"[{100 * result['accuracy_ci_low']:.1f}%, {100 * result['accuracy_ci_high']:.1f}%]" in cells[1]
        assert cells[2] == f"{result['loss']:.4f}"
        assert cells[3] == f"{result['f1_macro']:.4f}"
        assert cells[6] == f"{result['n_params']:,}"
        # Linked to the run in the MLflow UI (tracking.ui_url is set).
        run_cell = re.search(r'<td class="run">(.*?)</td>', row.group(1), re.S).group(1)
        assert 'href="http://127.0.0.1:5000/#/experiments/' in run_cell and f'/runs/{run_ids[name]}"' in run_cell
    assert f'class="best" id="row-{best}"' in html
    # Self-contained: every picture is embedded, nothing is fetched.
    assert html.count('src="data:image/png;base64,') >= 1 + 5 * len(MODEL_NAMES)
    assert not re.search(r'src="(?!data:)', html)
    assert html.count("McNemar") >= 1 and len(re.findall(r"<li>.*? (really better than|No real difference between) ", html)) == 3


def test_summary_lists_models_and_verdicts(reported):
    root, _, _, best = reported
    summary = (root / "reports" / "summary.md").read_text()
    for name in MODEL_NAMES:
        result = metrics_of(root, name)
        line = next(line for line in summary.splitlines() if line.startswith(f"| {name} ") or line.startswith(f"| **{name}** "))
        assert f"{100 * result['accuracy']:.2f}%" in line and f"{result['f1_macro']:.4f}" in line
    assert f"Best model: **{best}**" in summary
    assert "models:/digitlab-digits@champion" in summary
    assert len(re.findall(r"^- .*(really better than|No real difference)", summary, re.M)) == 3


def test_report_run_and_registered_champion(reported):
    root, run_ids, uri, best = reported
    client = mlflow.MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_run(run_ids["linear"]).info.experiment_id], "attributes.run_name = 'report'")
    assert len(runs) == 1
    report_run = runs[0]
    assert report_run.info.status == "FINISHED"
    assert report_run.data.tags["digitlab.best_model"] == best
    assert all(report_run.data.tags[f"digitlab.run.{name}"] == run_ids[name] for name in MODEL_NAMES)
    assert {a.path for a in client.list_artifacts(report_run.info.run_id)} >= {"report.html", "summary.md"}
    version = client.get_model_version_by_alias("digitlab-digits", "champion")
    assert version.run_id == run_ids[best]
    assert all(client.get_run(run_id).info.status == "FINISHED" for run_id in run_ids.values())


def test_missing_evaluation_names_the_file(evaluated, tmp_path, monkeypatch):
    root, _, uri = evaluated
    copy = tmp_path / "project"
    shutil.copytree(root, copy)
    (copy / "reports" / "mlp" / "predictions.npz").unlink()
    (copy / "reports" / "report.html").unlink(missing_ok=True)
    monkeypatch.setenv("DVC_ROOT", str(copy))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{copy / 'mlflow.db'}")
    with pytest.raises(DigitlabError, match=r"reports/mlp/predictions\.npz is missing.*evaluate stage.*'mlp'"):
        build.run(config())
    assert not (copy / "reports" / "report.html").exists()


def test_registering_needs_a_logged_model(evaluated, tmp_path, monkeypatch):
    root, _, _ = evaluated
    copy = tmp_path / "project"
    shutil.copytree(root, copy)
    for name in MODEL_NAMES:  # as if trained with tracking.log_models=false
        path = copy / "models" / name / "run.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "model_uri": None}))
    monkeypatch.setenv("DVC_ROOT", str(copy))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{copy / 'mlflow.db'}")
    with pytest.raises(DigitlabError, match=r"register_alias='champion'.*no model_uri.*tracking.log_models=true"):
        build.run(config("report.register_alias=champion"))
