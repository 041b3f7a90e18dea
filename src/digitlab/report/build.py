"""The report stage: compare every recipe of the pipeline run in one self-contained HTML page.

Reads, per recipe under ``settings.models`` (one or more), the evaluate
stage's outputs (:class:`~digitlab.evaluation.outputs.EvaluationOutputs`:
metrics.json, predictions.npz, figures/) and the train stage's
(:class:`~digitlab.training.outputs.TrainOutputs`: train.json, run.json,
history.csv). Writes ``<paths.reports>/report.html`` (images embedded as
base64, opens from disk) and ``<paths.reports>/summary.md``. Every registered
figure (:mod:`digitlab.evaluation.figures`) is shown, laid out as it asks.

MLflow: the report goes to a run named ``report`` in the recipes' experiment,
tagged with each recipe's training run id (``digitlab.run.<recipe>``) and the
best recipe (``digitlab.best_model``). With ``report.register_alias`` set, the
best recipe's model (highest test accuracy) is registered as
``report.registered_model_name`` and given that alias.
"""

from __future__ import annotations

import base64
import itertools
import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from jinja2 import Environment, PackageLoader, select_autoescape

from digitlab import interrupts
from digitlab.data.prepared import Meta, load_meta
from digitlab.errors import DigitlabError
from digitlab.evaluation import metrics, plots
from digitlab.evaluation.figures import FigureSpec, Placement, report_order
from digitlab.evaluation.outputs import EvaluationMetrics, EvaluationOutputs
from digitlab.io import atomic_write_text
from digitlab.training.outputs import TrainOutputs, TrainResult

if TYPE_CHECKING:
    from digitlab.settings import Layout, ReportSettings, Settings

log = logging.getLogger(__name__)

# A difference is called real when McNemar's p-value is below this.
SIGNIFICANCE_LEVEL = 0.05


@dataclass
class ModelResult:
    """Everything the report shows about one recipe."""

    name: str
    metrics: EvaluationMetrics
    train: TrainResult
    y_true: np.ndarray
    y_pred: np.ndarray
    history: pd.DataFrame
    figures: dict[str, Path] = field(default_factory=dict)
    run_url: str | None = None

    @property
    def run_id(self) -> str | None:
        return self.train.run.run_id


@dataclass(frozen=True)
class Comparison:
    model_a: str
    model_b: str
    test: metrics.McNemarResult
    verdict: str


def run_url(ui_url: str | None, experiment_id: str | None, run_id: str | None) -> str | None:
    """Link to a run in the MLflow UI, when a UI address is configured (without any credentials it holds)."""
    from digitlab.redact import split_credentials

    if not (ui_url and experiment_id and run_id):
        return None
    base = split_credentials(str(ui_url))[0]  # the browser asks for them; a report never holds a password
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def load_model_result(recipe: str, layout: Layout, ui_url: str | None) -> ModelResult:
    """One recipe's evaluation and training, read through the two stages' output contracts."""
    evaluated = EvaluationOutputs(layout.report_dir(recipe), recipe).require()
    trained = TrainOutputs(layout.model_dir(recipe), recipe)
    trained.require(trained.metrics, trained.run, trained.history)  # the report reads no model
    train = trained.read_result()
    predictions = evaluated.read_predictions()
    return ModelResult(
        name=recipe,
        metrics=evaluated.read_metrics(),
        train=train,
        y_true=predictions.y_true,
        y_pred=predictions.y_pred,
        history=trained.read_history(),
        figures=evaluated.figure_files(),
        run_url=run_url(ui_url, train.run.experiment_id, train.run.run_id),
    )


def compare_pairwise(results: list[ModelResult], alpha: float = SIGNIFICANCE_LEVEL) -> list[Comparison]:
    """McNemar's test for every pair of recipes, on the same test images (none for a single recipe)."""
    reference = results[0]
    for result in results[1:]:
        if not np.array_equal(result.y_true, reference.y_true):
            raise DigitlabError(
                f"models {reference.name!r} and {result.name!r} were evaluated on different test images: "
                "re-run the evaluate stage of every model on the same prepared data (dvc repro evaluate)"
            )
    comparisons = []
    for a, b in itertools.combinations(results, 2):
        test = metrics.mcnemar_test(metrics.mcnemar_table(a.y_true, a.y_pred, b.y_pred))
        comparisons.append(Comparison(a.name, b.name, test, metrics.mcnemar_verdict(a.name, b.name, test, alpha)))
    return comparisons


def best_model(results: list[ModelResult]) -> ModelResult:
    """Highest test accuracy; ties go to the lower log loss."""
    return max(results, key=lambda r: (r.metrics.accuracy, -r.metrics.log_loss))


def png_data_uri(source: Path | plots.Figure) -> str:
    """A PNG file or a figure as a ``data:`` URI, so the HTML needs no other file."""
    data = source.read_bytes() if isinstance(source, Path) else plots.png_bytes(source)
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def table_rows(results: list[ModelResult]) -> list[dict]:
    """The comparison table, one dict per recipe (raw numbers; the templates format them)."""
    return [
        {
            "model": r.name,
            "accuracy": r.metrics.accuracy,
            "ci_low": r.metrics.accuracy_ci_low,
            "ci_high": r.metrics.accuracy_ci_high,
            "confidence_level": r.metrics.confidence_level,
            "loss": r.metrics.loss,
            "f1_macro": r.metrics.f1_macro,
            "top_k": r.metrics.top_k,
            "top_k_accuracy": r.metrics.top_k_accuracy,
            "roc_auc_macro": r.metrics.roc_auc_macro,
            "params": r.metrics.n_params,
            "epochs": r.train.metrics.epochs,
            "best_epoch": r.train.metrics.best_epoch,
            "stopped_early": r.train.metrics.stopped_early,
            "train_time_s": r.train.metrics.train_time_s,
            "throughput": r.metrics.throughput_images_per_s,
            "run_id": r.run_id,
            "run_url": r.run_url,
        }
        for r in results
    ]


def figure_sections(results: list[ModelResult]) -> list[tuple[FigureSpec, list[tuple[str, str]]]]:
    """Every registered figure the report shows, with (recipe, image) for each recipe that has it."""
    sections = []
    for spec in report_order():
        if spec.placement is Placement.NOT_SHOWN:
            continue
        images = [(r.name, png_data_uri(r.figures[spec.key])) for r in results if spec.key in r.figures]
        if images:
            sections.append((spec, images))
    return sections


def curves_figure(results: list[ModelResult]) -> str:
    """Every recipe's training curves overlaid in one figure, as a data URI."""
    figure = plots.training_curves_figure(
        {r.name: r.history for r in results},
        {r.name: r.train.metrics.best_epoch for r in results},
        title="Training curves of every model (solid train, dashed validation, dotted best epoch)",
    )
    return png_data_uri(figure)


def _environment() -> Environment:
    environment = Environment(
        loader=PackageLoader("digitlab", "templates"), autoescape=select_autoescape(("html", "html.j2"), default=False), trim_blocks=True, lstrip_blocks=True
    )
    environment.filters["pct"] = lambda value, digits=2: f"{100 * value:.{digits}f}%"
    environment.filters["num"] = lambda value, digits=4: "n/a" if value is None else f"{value:.{digits}f}"
    environment.filters["thousands"] = lambda value: "n/a" if value is None else f"{int(round(value)):,}"
    return environment


def render(results: list[ModelResult], comparisons: list[Comparison], meta: Meta, registered: str | None) -> tuple[str, str]:
    """The HTML report and the Markdown summary."""
    context = {
        "dataset": meta.dataset,
        "num_classes": meta.num_classes,
        "n_test": int(results[0].metrics.n_test),
        "generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "rows": table_rows(results),
        "best": best_model(results).name,
        "comparisons": comparisons,
        "alpha": SIGNIFICANCE_LEVEL,
        "registered": registered,
        "curves": curves_figure(results),
        "figures": figure_sections(results),
    }
    environment = _environment()
    return environment.get_template("report.html.j2").render(context), environment.get_template("summary.md.j2").render(context)


def register_best(result: ModelResult, registered_model_name: str, alias: str) -> str:
    """Register ``result``'s logged MLflow model under ``registered_model_name`` with ``alias``; returns ``name@alias (version N)``."""
    import mlflow

    model_uri = result.train.run.model_uri
    if not model_uri:
        raise DigitlabError(
            f"report.register_alias={alias!r} asks to register the best model {result.name!r}, but its run.json has no "
            "model_uri: train it with tracking.log_models=true, or set report.register_alias=null"
        )
    version = mlflow.register_model(model_uri, registered_model_name, tags={"digitlab.model": result.name})
    mlflow.MlflowClient().set_registered_model_alias(registered_model_name, alias, version.version)
    log.info("registered %s (%s) as models:/%s@%s (version %s)", result.name, model_uri, registered_model_name, alias, version.version)
    return f"models:/{registered_model_name}@{alias} (version {version.version}, model {result.name})"


def register(settings: ReportSettings, results: list[ModelResult], layout: Layout) -> str | None:
    """The best recipe registered under ``report.register_alias``, when that is set."""
    alias = settings.register_alias
    if not alias:
        return None
    if not any(r.run_id for r in results):
        raise DigitlabError(f"report.register_alias={alias!r} needs MLflow runs, but no run.json in {layout.models} has a run_id")
    return register_best(best_model(results), settings.registered_model_name, alias)


def log_report_run(results: list[ModelResult], paths: list[Path], tracking_settings) -> str:
    """A finished run named ``report`` in the recipes' experiment, holding the report files.

    A report stage killed while logging left its run RUNNING: that one is closed KILLED first.
    """
    import mlflow

    from digitlab.runs import close_stale_runs, process_tags

    experiment_id = results[0].train.run.experiment_id
    close_stale_runs(tracking_settings, experiment_id, "attributes.run_name = 'report'")
    tags = {f"digitlab.run.{r.name}": r.run_id for r in results if r.run_id}
    tags.update({"digitlab.best_model": best_model(results).name, **process_tags()})
    # Started and ended whole: a stop between MLflow creating the run and the block that ends it left it RUNNING.
    with interrupts.whole(lambda: mlflow.start_run(experiment_id=experiment_id, run_name="report", tags=tags)) as active:
        mlflow.log_metrics({f"{r.name}_test_accuracy": float(r.metrics.accuracy) for r in results})
        for path in paths:
            mlflow.log_artifact(str(path))
    return active.info.run_id


def connected(tracking_settings) -> bool:
    """Whether the tracking store takes the report now. An unreachable server costs the report its MLflow
    run (and the registration), with a warning, never the report itself."""
    from digitlab import tracking
    from digitlab.errors import TrackingUnavailable

    try:
        tracking.configure(tracking_settings)
    except TrackingUnavailable as error:
        log.warning("%s; the report is written without its MLflow run: rerun `dvc repro -f -s report` when it is back", error)
        return False
    return True


def run(settings: Settings, layout: Layout) -> Path:
    """Build the report over every recipe in ``settings.models``; returns the HTML path."""
    meta = load_meta(layout.prepared)
    results = [load_model_result(recipe, layout, settings.tracking.ui_url) for recipe in settings.models]
    comparisons = compare_pairwise(results)
    tracked = any(r.run_id for r in results) and connected(settings.tracking)
    registered = register(settings.report, results, layout) if tracked else None

    html, summary = render(results, comparisons, meta, registered)
    html_path = atomic_write_text(layout.reports / "report.html", html)
    summary_path = atomic_write_text(layout.reports / "summary.md", summary)
    for comparison in comparisons:
        log.info("McNemar: %s", comparison.verdict)
    best = best_model(results)
    log.info("best model: %s (test accuracy %.4f); report in %s", best.name, best.metrics.accuracy, html_path)
    if tracked:
        report_run = log_report_run(results, [html_path, summary_path], settings.tracking)
        log.info("logged the report to MLflow run %s (run name 'report')", report_run)
    return html_path
