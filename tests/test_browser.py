"""What a user sees, in a real headless browser (Chromium, the Debian package ``chromium``).

- ``dvc plots show`` writes a page that draws the confusion matrix with the network off: the
  project's template (``plots.html_template`` in ``.dvc/config``, ``vendor/vega/``) carries
  Vega, Vega-Lite and Vega-Embed, where DVC's own page loads them from a CDN (and, offline,
  draws nothing: the control case).
- MLflow's UI shows a training run's datasets, system metrics and source, on the run page
  and in the experiment's runs table.

Without Chromium the tests skip, saying why; under CI (env CI set) they fail instead.
``DIGITLAB_UI_SCREENSHOT=docs/mlflow-ui.png`` also saves the runs table's screenshot there
(the README's picture).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest

from .conftest import ROOT, run, tiny_settings
from .stack_fixtures import require

# The network, off: every host name fails to resolve, and anything that would still go out
# goes to a proxy on the discard port, where nothing listens.
OFFLINE = ("--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=127.0.0.1:9")


def chromium() -> str:
    """The Chromium binary; skips (fails under CI) when there is none."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    require("headless Chromium", None if path else "no chromium on PATH (Debian: apt-get install chromium)")
    return path


def browse(url: str, profile: Path, *args: str, budget_ms: int = 15000) -> str:
    """Load ``url`` in headless Chromium, let it run ``budget_ms`` of virtual time; its stdout (``--dump-dom``: the DOM)."""
    cmd = [
        chromium(), "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars",
        f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}", *args, url,
    ]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)
    assert result.returncode == 0, f"chromium exited {result.returncode}: {result.stderr[-2000:]}"
    return result.stdout


def visible_text(html: str) -> str:
    """The text of a DOM dump, on one line: no scripts, styles or tags."""
    text = re.sub(r"<(script|style)\b.*?</\1>", " ", html, flags=re.S | re.I)
    return " ".join(re.sub(r"<[^>]+>", " ", text).replace("&amp;", "&").split())


def coloured_pixels(png: Path) -> int:
    """Pixels of a screenshot that are clearly coloured (not white, grey or black): drawn marks."""
    from PIL import Image

    rgb = np.asarray(Image.open(png).convert("RGB")).astype(int)
    return int(((rgb.max(axis=2) - rgb.min(axis=2)) > 40).sum())


@pytest.fixture
def browser() -> str:
    """Chromium, checked before any other fixture starts a server or copies a project."""
    return chromium()


# -- dvc plots show, offline ------------------------------------------------------------------------
def write_confusion(project: Path) -> Path:
    """reports/evaluation/linear/confusion.csv as the evaluate stage writes it, from real predictions
    (a nearest-centroid classifier on scikit-learn's digits)."""
    from sklearn.datasets import load_digits

    from digitlab.evaluation.outputs import EvaluationOutputs

    digits = load_digits()
    x, y = digits.data, digits.target
    centroids = np.stack([x[:1000][y[:1000] == c].mean(axis=0) for c in range(10)])
    predicted = ((x[1000:, None, :] - centroids[None]) ** 2).sum(axis=2).argmin(axis=1)
    outputs = EvaluationOutputs(project / "reports" / "evaluation" / "linear", "linear")
    outputs.directory.mkdir(parents=True)
    outputs.write_confusion(y[1000:], predicted, [str(c) for c in range(10)])
    return outputs.confusion


def test_dvc_plots_page_draws_the_confusion_matrix_offline(browser: str, project: Path, tmp_path: Path) -> None:
    confusion = write_confusion(project).relative_to(project).as_posix()
    run(["dvc", "plots", "show", confusion, "-o", "plots"], project)  # the template from .dvc/config
    page = project / "plots" / "index.html"
    html = page.read_text(encoding="utf-8")
    assert "reports_evaluation_linear_confusion_csv" in html and "<script src=" not in html, "the page must load nothing"

    dom = browse(page.as_uri(), tmp_path / "profile", *OFFLINE, "--dump-dom", budget_ms=10000)
    div = re.search(r'<div id="reports_evaluation_linear_confusion_csv".*?</div>', dom, re.S)
    assert div, "no plot in the page"
    canvas = re.search(r'<canvas width="(\d+)" height="(\d+)" class="marks"', div.group(0))
    assert canvas and int(canvas[1]) > 100 and int(canvas[2]) > 100, f"Vega drew no chart: {div.group(0)[:500]}"
    shot = tmp_path / "plots.png"
    browse(page.as_uri(), tmp_path / "profile", *OFFLINE, f"--screenshot={shot}", "--window-size=800,600", budget_ms=10000)
    drawn = coloured_pixels(shot)
    assert drawn > 20000, f"the confusion matrix was not painted ({drawn} coloured pixels)"

    # The control: DVC's own page (scripts from a CDN) draws nothing offline, so the checks above can fail.
    from dvc_render.html import PAGE_HTML

    (tmp_path / "dvc-default.html").write_text(PAGE_HTML)
    run(["dvc", "plots", "show", confusion, "-o", "default", "--html-template", str(tmp_path / "dvc-default.html")], project)
    default = (project / "default" / "index.html").as_uri()
    assert 'class="marks"' not in browse(default, tmp_path / "profile", *OFFLINE, "--dump-dom", budget_ms=10000)
    browse(default, tmp_path / "profile", *OFFLINE, f"--screenshot={shot}", "--window-size=800,600", budget_ms=10000)
    assert coloured_pixels(shot) < 1000


# -- MLflow's UI -----------------------------------------------------------------------------------
def test_mlflow_ui_shows_datasets_system_metrics_and_source(browser: str, mlflow_server: str, tiny_prepared: Path, tmp_path: Path, monkeypatch) -> None:
    from digitlab.tracking import git_commit
    from digitlab.training.loop import train

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "prepared").symlink_to(tiny_prepared)
    monkeypatch.setattr(sys, "argv", [str(ROOT / "pipeline" / "train.py")])  # as `python -m pipeline.train` runs
    settings = tiny_settings(
        "model=linear", "models.linear.training.epochs=3", f"paths.data={tmp_path / 'data'}", f"tracking.uri={mlflow_server}",
        f"output_dir={tmp_path / 'out'}", "tracking.log_models=false", "tracking.system_metrics_interval_s=1",
    )  # fmt: skip
    result = train(settings).run

    client = mlflow.MlflowClient(mlflow_server)
    logged = client.get_run(result.run_id)
    inputs = {i.dataset.name: i for i in logged.inputs.dataset_inputs}
    assert sorted(inputs) == ["digits-test", "digits-train", "digits-val"]
    assert [t.value for t in inputs["digits-train"].tags] == ["training"]
    assert '"num_rows": 1200' in inputs["digits-train"].dataset.profile and '"num_classes": 10' in inputs["digits-train"].dataset.profile
    assert logged.data.tags["mlflow.source.name"] == "pipeline/train.py" and logged.data.tags["mlflow.source.type"] == "LOCAL"
    commit = git_commit()
    assert logged.data.tags.get("mlflow.source.git.commit") == commit
    assert "system/cpu_utilization_percentage" in logged.data.metrics and "system/system_memory_usage_megabytes" in logged.data.metrics

    experiment = f"{mlflow_server}/#/experiments/{result.experiment_id}"
    page = visible_text(browse(f"{experiment}/runs/{result.run_id}", tmp_path / "profile", "--dump-dom", "--window-size=1400,900"))
    assert "digits-train" in page and "training" in page, page[:3000]
    assert "system/cpu_utilization_percentage" in page, page[:3000]
    assert "train.py" in page and (commit is None or commit[:7] in page), page[:3000]

    table = visible_text(browse(f"{experiment}/runs", tmp_path / "profile", "--dump-dom", "--window-size=1400,900"))
    assert "Dataset" in table and "Source" in table, table[:3000]
    assert "linear-digits" in table and "digits-train" in table and "train.py" in table, table[:3000]

    shot = tmp_path / "runs.png"
    browse(f"{experiment}/runs", tmp_path / "profile", f"--screenshot={shot}", "--window-size=1920,560")
    assert coloured_pixels(shot) > 1000, "the runs table was not painted"
    if os.environ.get("DIGITLAB_UI_SCREENSHOT"):
        from PIL import Image

        target = Path(os.environ["DIGITLAB_UI_SCREENSHOT"])
        image = Image.open(shot).convert("RGB")
        image = image.crop((0, 0, min(image.width, 1430), image.height))  # the table, without the assistant panel
        image.quantize(colors=64).save(ROOT / target if not target.is_absolute() else target, optimize=True)
