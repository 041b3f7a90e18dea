"""The report stage: compare every model of the pipeline run in one self-contained HTML page.

Reads, per model under ``cfg.models``, the evaluate stage's
``<paths.reports>/<model>/`` (metrics.json, predictions.npz, figures/) and
the train stage's ``<paths.models>/<model>/`` (train.json, run.json, history.csv).
Writes ``<paths.reports>/report.html`` (images embedded as base64, opens from
disk) and ``<paths.reports>/summary.md``.

MLflow: the report goes to a run named ``report`` in the models' experiment,
tagged with each model's training run id (``digitlab.run.<model>``) and the
best model (``digitlab.best_model``). With ``report.register_alias`` set, the
best model (highest test accuracy) is registered as
``report.registered_model_name`` and given that alias.
"""

from __future__ import annotations

import base64
import io
import itertools
import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
from jinja2 import Environment, PackageLoader, select_autoescape
from omegaconf import DictConfig

from digitlab.config import atomic_write_text, project_root
from digitlab.data.prepared import load_meta
from digitlab.errors import DigitlabError
from digitlab.evaluation import metrics, plots
from digitlab.evaluation.evaluate import FIGURES, load_history, read_train_info

log = logging.getLogger(__name__)

# A difference is called real when McNemar's p-value is below this.
SIGNIFICANCE_LEVEL = 0.05
EVALUATE_OUTPUTS = ("metrics.json", "predictions.npz")


@dataclass
class ModelResult:
    """Everything the report shows about one model."""

    name: str
    metrics: dict
    train_info: dict
    y_true: np.ndarray
    y_pred: np.ndarray
    history: pd.DataFrame
    figures: dict[str, Path] = field(default_factory=dict)
    run_url: str | None = None

    @property
    def run_id(self) -> str | None:
        return self.train_info.get("run_id")


@dataclass(frozen=True)
class Comparison:
    model_a: str
    model_b: str
    test: metrics.McNemarResult
    verdict: str


def _require_file(path: Path, model: str, stage: str) -> Path:
    if not path.is_file():
        raise DigitlabError(f"{path} is missing: the report expects the {stage} stage's outputs for model {model!r} (run dvc repro {stage}@{model})")
    return path


def run_url(ui_url: str | None, experiment_id: str | None, run_id: str | None) -> str | None:
    """Link to a run in the MLflow UI, when a UI address is configured."""
    if not (ui_url and experiment_id and run_id):
        return None
    return f"{str(ui_url).rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def load_model_result(name: str, reports_dir: Path, models_dir: Path, ui_url: str | None) -> ModelResult:
    evaluated = reports_dir / name
    trained = models_dir / name
    for filename in EVALUATE_OUTPUTS:
        _require_file(evaluated / filename, name, "evaluate")
    _require_file(trained / "train.json", name, "train")
    train_info = read_train_info(trained)
    history = load_history(_require_file(trained / "history.csv", name, "train"))
    with np.load(evaluated / "predictions.npz") as predictions:
        y_true, y_pred = predictions["y_true"], predictions["y_pred"]
    figures = {key: evaluated / "figures" / filename for key, filename in FIGURES.items() if (evaluated / "figures" / filename).is_file()}
    return ModelResult(
        name=name,
        metrics=json.loads((evaluated / "metrics.json").read_text(encoding="utf-8")),
        train_info=train_info,
        y_true=y_true,
        y_pred=y_pred,
        history=history,
        figures=figures,
        run_url=run_url(ui_url, train_info.get("experiment_id"), train_info.get("run_id")),
    )


def compare_pairwise(results: list[ModelResult], alpha: float = SIGNIFICANCE_LEVEL) -> list[Comparison]:
    """McNemar's test for every pair of models, on the same test images."""
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
    return max(results, key=lambda r: (r.metrics["accuracy"], -r.metrics["log_loss"]))


def png_data_uri(source: Path | plots.Figure) -> str:
    """A PNG file or a figure as a ``data:`` URI, so the HTML needs no other file."""
    if isinstance(source, Path):
        data = source.read_bytes()
    else:
        buffer = io.BytesIO()
        source.savefig(buffer, dpi=plots.DPI, format="png")
        plots.plt.close(source)
        data = buffer.getvalue()
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def table_rows(results: list[ModelResult]) -> list[dict]:
    """The comparison table, one dict per model (raw numbers; the templates format them)."""
    return [
        {
            "model": r.name,
            "accuracy": r.metrics["accuracy"],
            "ci_low": r.metrics["accuracy_ci_low"],
            "ci_high": r.metrics["accuracy_ci_high"],
            "confidence_level": r.metrics.get("confidence_level", 0.95),
            "loss": r.metrics["loss"],
            "f1_macro": r.metrics["f1_macro"],
            "top_k": r.metrics.get("top_k"),
            "top_k_accuracy": r.metrics["top_k_accuracy"],
            "roc_auc_macro": r.metrics["roc_auc_macro"],
            "params": r.metrics["n_params"],
            "epochs": r.train_info.get("epochs"),
            "best_epoch": r.train_info.get("best_epoch"),
            "stopped_early": r.train_info.get("stopped_early"),
            "train_time_s": r.train_info.get("train_time_s"),
            "throughput": r.metrics["throughput_images_per_s"],
            "run_id": r.run_id,
            "run_url": r.run_url,
        }
        for r in results
    ]


def _environment() -> Environment:
    environment = Environment(loader=PackageLoader("digitlab", "templates"), autoescape=select_autoescape(("html", "html.j2"), default=False), trim_blocks=True, lstrip_blocks=True)
    environment.filters["pct"] = lambda value, digits=2: f"{100 * value:.{digits}f}%"
    environment.filters["num"] = lambda value, digits=4: "n/a" if value is None else f"{value:.{digits}f}"
    environment.filters["thousands"] = lambda value: "n/a" if value is None else f"{int(round(value)):,}"
    return environment


def render(results: list[ModelResult], comparisons: list[Comparison], *, dataset: str, num_classes: int, registered: str | None) -> tuple[str, str]:
    """The HTML report and the Markdown summary."""
    best = best_model(results)
    curves = plots.training_curves_figure(
        {r.name: r.history for r in results},
        {r.name: r.train_info["best_epoch"] for r in results if r.train_info.get("best_epoch") is not None},
        title="Training curves of every model (solid train, dashed validation, dotted best epoch)",
    )
    context = {
        "dataset": dataset,
        "num_classes": num_classes,
        "n_test": int(results[0].metrics["n_test"]),
        "generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "rows": table_rows(results),
        "best": best.name,
        "comparisons": comparisons,
        "alpha": SIGNIFICANCE_LEVEL,
        "registered": registered,
        "curves": png_data_uri(curves),
        "figures": {
            key: [(r.name, png_data_uri(r.figures[key])) for r in results if key in r.figures]
            for key in ("confusion", "confusion_normalized", "errors", "roc", "weights")
        },
    }
    environment = _environment()
    return environment.get_template("report.html.j2").render(context), environment.get_template("summary.md.j2").render(context)


def register_best(result: ModelResult, registered_model_name: str, alias: str) -> str:
    """Register ``result``'s logged MLflow model under ``registered_model_name`` with ``alias``; returns ``name@alias (version N)``."""
    import mlflow

    model_uri = result.train_info.get("model_uri")
    if not model_uri:
        raise DigitlabError(
            f"report.register_alias={alias!r} asks to register the best model {result.name!r}, but its run.json has no "
            "model_uri: train it with tracking.log_models=true, or set report.register_alias=null"
        )
    version = mlflow.register_model(model_uri, registered_model_name, tags={"digitlab.model": result.name})
    mlflow.MlflowClient().set_registered_model_alias(registered_model_name, alias, version.version)
    log.info("registered %s (%s) as models:/%s@%s (version %s)", result.name, model_uri, registered_model_name, alias, version.version)
    return f"models:/{registered_model_name}@{alias} (version {version.version}, model {result.name})"


def log_report_run(results: list[ModelResult], paths: list[Path], best: ModelResult) -> str:
    """A finished run named ``report`` in the models' experiment, holding the report files."""
    import mlflow

    experiment_id = results[0].train_info.get("experiment_id")
    tags = {f"digitlab.run.{r.name}": r.run_id for r in results if r.run_id}
    tags["digitlab.best_model"] = best.name
    with mlflow.start_run(experiment_id=experiment_id, run_name="report", tags=tags) as active:
        mlflow.log_metrics({f"{r.name}_test_accuracy": float(r.metrics["accuracy"]) for r in results})
        for path in paths:
            mlflow.log_artifact(str(path))
    return active.info.run_id


def run(cfg: DictConfig) -> Path:
    """Build the report over every model in ``cfg.models``; returns the HTML path."""
    root = project_root()
    reports_dir = root / cfg.paths.reports
    models_dir = root / cfg.paths.models
    names = list(cfg.models)
    if not names:
        raise DigitlabError("models is empty: the report needs at least one model (see conf/config.yaml)")
    ui_url = cfg.tracking.get("ui_url")
    meta = load_meta(root / cfg.paths.data / "prepared")
    results = [load_model_result(name, reports_dir, models_dir, ui_url) for name in names]
    comparisons = compare_pairwise(results)
    best = best_model(results)
    tracked = any(r.run_id for r in results)
    alias = cfg.report.get("register_alias")

    registered = None
    if tracked:
        from digitlab import tracking

        tracking.configure(cfg.tracking)
    if alias:
        if not tracked:
            raise DigitlabError(f"report.register_alias={alias!r} needs MLflow runs, but no run.json in {models_dir} has a run_id")
        registered = register_best(best, str(cfg.report.registered_model_name), str(alias))

    html, summary = render(results, comparisons, dataset=meta.dataset, num_classes=meta.num_classes, registered=registered)
    html_path, summary_path = reports_dir / "report.html", reports_dir / "summary.md"
    atomic_write_text(html_path, html)
    atomic_write_text(summary_path, summary)
    for comparison in comparisons:
        log.info("McNemar: %s", comparison.verdict)
    log.info("best model: %s (test accuracy %.4f); report in %s", best.name, best.metrics["accuracy"], html_path)
    if tracked:
        report_run = log_report_run(results, [html_path, summary_path], best)
        log.info("logged the report to MLflow run %s (run name 'report')", report_run)
    return html_path
