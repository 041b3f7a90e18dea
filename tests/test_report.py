"""The report stage: every model's numbers, McNemar verdicts, MLflow report run and registration."""

from __future__ import annotations

import json
import random
import re
import shutil

import matplotlib.pyplot as plt
import mlflow
import pytest

from digitlab.errors import DigitlabError
from digitlab.evaluation import evaluate, figures
from digitlab.report import build
from digitlab.settings import Layout
from digitlab.training.outputs import TrainOutputs

pytest.register_assert_rewrite("tests.evaluation_fixtures")
from tests.conftest import ctrl_c_at_a_random_moment  # noqa: E402
from tests.evaluation_fixtures import MODEL_NAMES, evaluation_dir, fake_project, layout, make_project, settings, update_run  # noqa: E402

pytest_plugins = ["tests.evaluation_fixtures"]


def metrics_of(root, name):
    return json.loads((evaluation_dir(root, name) / "metrics.json").read_text())


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


def test_ctrl_c_at_any_moment_of_logging_the_report_leaves_no_run_running(evaluated, tmp_path, monkeypatch):
    """A Ctrl-C after MLflow created the report's run but before the block that ends it was entered left it RUNNING
    (until the next report). Stops at random moments of the report's run, on a real SQLite store: it always ends."""
    root, _, _ = evaluated
    copy = tmp_path / "project"
    shutil.copytree(root, copy)
    uri = f"sqlite:///{copy / 'mlflow.db'}"
    monkeypatch.setenv("DVC_ROOT", str(copy))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    config, where = settings(), layout(copy)
    results = [build.load_model_result(name, where, None) for name in MODEL_NAMES]
    page = copy / "reports" / "report.html"
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text("<html></html>")
    chance = random.Random(0)
    for _ in range(25):
        ctrl_c_at_a_random_moment(lambda: build.log_report_run(results, [page], config.tracking), chance, 0.15)
    client = mlflow.MlflowClient(uri)
    experiment = results[0].train.run.experiment_id
    runs = client.search_runs([experiment], "attributes.run_name = 'report'", max_results=100)
    assert len(runs) > 10 and [r.info.run_id for r in runs if r.info.status == "RUNNING"] == []


def test_missing_evaluation_names_the_file(evaluated, tmp_path, monkeypatch):
    root, _, uri = evaluated
    copy = tmp_path / "project"
    shutil.copytree(root, copy)
    (evaluation_dir(copy, "mlp") / "predictions.npz").unlink()
    (copy / "reports" / "report.html").unlink(missing_ok=True)
    monkeypatch.setenv("DVC_ROOT", str(copy))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{copy / 'mlflow.db'}")
    with pytest.raises(DigitlabError, match=r"reports/evaluation/mlp/predictions\.npz is missing.*evaluate stage.*'mlp'"):
        build.run(settings(), layout(copy))
    assert not (copy / "reports" / "report.html").exists()


def test_registering_needs_a_logged_model(evaluated, tmp_path, monkeypatch):
    root, _, _ = evaluated
    copy = tmp_path / "project"
    shutil.copytree(root, copy)
    for name in MODEL_NAMES:  # as if trained with tracking.log_models=false
        update_run(TrainOutputs(copy / "models" / name, name), model_uri=None)
    monkeypatch.setenv("DVC_ROOT", str(copy))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{copy / 'mlflow.db'}")
    with pytest.raises(DigitlabError, match=r"register_alias='champion'.*no model_uri.*tracking.log_models=true"):
        build.run(settings("report.register_alias=champion"), layout(copy))


# A recipe added in conf/ only: its architecture, optimizer and schedule chosen from the groups.
FOURTH_RECIPE = ("+architecture@models.wide.model=mlp", "+optimizer@models.wide.optimizer=adam", "+training@models.wide.training=default")


@pytest.mark.parametrize("recipes", [("solo",), ("linear", "mlp", "cnn", "wide")])
def test_report_over_any_number_of_recipes(tiny_prepared, tmp_path, recipes):
    if len(recipes) == 1:
        base = settings()
        config = base.model_copy(update={"models": {"solo": base.models["mlp"]}, "model": "solo"})
    else:
        config = settings(*FOURTH_RECIPE)
        assert tuple(config.models) == recipes
    fake_project(tmp_path, tiny_prepared, list(recipes))  # the last recipe is the most accurate
    html = build.run(config, Layout.for_settings(config, tmp_path)).read_text()
    summary = (tmp_path / "reports" / "summary.md").read_text()
    pairs = len(recipes) * (len(recipes) - 1) // 2
    assert len(re.findall(r'<tr class="[^"]*" id="row-', html)) == len(recipes)
    assert f'class="best" id="row-{recipes[-1]}"' in html and f"Best model: **{recipes[-1]}**" in summary
    assert len(re.findall(r"<li>.*? (really better than|No real difference between) ", html)) == pairs
    assert len(re.findall(r"^- .*(really better than|No real difference)", summary, re.M)) == pairs
    assert ("McNemar" in html) == ("McNemar" in summary) == (pairs > 0)
    assert ("digitlab: 1 model on digits" in html) == (len(recipes) == 1)
    # Every figure the recipes have, once per recipe; none they lack.
    for title in ("Confusion matrices", "ROC curves"):
        assert html.count(f'alt="{title}: ') == len(recipes)
    assert "Most confident mistakes" not in html
    assert html.count('src="data:image/png;base64,') == 1 + 2 * len(recipes)


@pytest.fixture
def extra_figure(monkeypatch):
    """A figure defined in this module, registered as a module of digitlab.evaluation.figures registers one.

    Registered on a copy of the registry's entries, so that it is gone after the test.
    """
    monkeypatch.setattr(figures.FIGURES, "_entries", dict(figures.FIGURES.items()))
    monkeypatch.setattr(figures, "_FILENAMES", dict(figures._FILENAMES))

    @figures.figure("confidence", filename="confidence.png", title="How sure the models are", note="Top-1 probability per test image.", order=45)
    def draw(data: figures.EvaluationData):
        figure, axes = plt.subplots(figsize=(5, 4))
        axes.hist(data.probabilities.max(axis=1), bins=20, range=(0, 1))
        axes.set_title(f"Top-1 probability ({data.recipe})")
        return figure

    return draw


def test_a_new_figure_is_drawn_logged_and_reported(extra_figure, evaluated, tiny_prepared, trained_models, tmp_path, mlflow_uri, monkeypatch):
    root, _, _ = evaluated
    project = tmp_path / "project"
    run_ids = make_project(project, tiny_prepared, trained_models, monkeypatch)
    shutil.copytree(root / "reports", project / "reports")  # mlp and cnn: evaluated before the figure existed
    assert [spec.key for spec in figures.report_order()] == ["confusion", "confusion_normalized", "curves", "errors", "confidence", "roc", "weights"]

    evaluate.run(settings(), layout(project), "linear")
    assert (evaluation_dir(project, "linear") / "figures" / "confidence.png").stat().st_size > 1000
    assert not (evaluation_dir(project, "mlp") / "figures" / "confidence.png").exists()
    logged = {a.path for a in mlflow.MlflowClient(tracking_uri=mlflow_uri).list_artifacts(run_ids["linear"], "evaluation/figures")}
    assert "evaluation/figures/confidence.png" in logged

    html = build.run(settings(), layout(project)).read_text()
    section = html.split("<h2>How sure the models are</h2>")[1].split("<h2>")[0]
    assert '<p class="note">Top-1 probability per test image.</p>' in section
    assert section.count('src="data:image/png;base64,') == 1 and "<figcaption>linear</figcaption>" in section
    # In the report's order: after the mistakes (order 40), before the ROC curves (50).
    assert html.index("<h2>Most confident mistakes</h2>") < html.index("<h2>How sure the models are</h2>") < html.index("<h2>ROC curves</h2>")
