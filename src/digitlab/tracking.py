"""MLflow: where runs go and how a stage connects to the store.

The default store is the SQLite file ``mlflow.db`` at the project root (the
real root, also for ``dvc exp run --temp``/``--queue`` copies and sweeps), so
every run of a project lands in one place. ``$MLFLOW_TRACKING_URI`` wins over
the default; ``tracking.uri`` in the config wins over both.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
from pathlib import Path
from urllib.parse import urlparse

from omegaconf import DictConfig

from digitlab.config import home_root, project_root
from digitlab.errors import DigitlabError

log = logging.getLogger(__name__)


def resolve_uri(tracking: DictConfig | dict) -> str:
    """The tracking URI a run uses: config, then $MLFLOW_TRACKING_URI, then <root>/mlflow.db."""
    uri = tracking.get("uri") or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return str(uri)
    return f"sqlite:///{home_root() / 'mlflow.db'}"


def check_reachable(uri: str, timeout: float = 10.0) -> None:
    """Fail within ``timeout`` seconds, naming the URI, when a tracking server can't be reached.

    MLflow's own client retries for minutes before it gives up; a user would
    rather know at once that the server is down or the URI is mistyped.
    """
    parsed = urlparse(uri)
    if parsed.scheme not in ("http", "https"):
        return
    host = parsed.hostname or "localhost"
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        raise DigitlabError(
            f"MLflow tracking server {uri} is unreachable ({exc.strerror or exc}): start it "
            f"(mlflow server --host {host} --port {port}) or set tracking.uri (tracking=sqlite for the local store)"
        ) from exc


def configure(tracking: DictConfig | dict) -> str:
    """Point MLflow at the configured store, failing fast if a server is unreachable. Returns the URI."""
    import mlflow

    uri = resolve_uri(tracking)
    check_reachable(uri, float(tracking.get("connect_timeout") or 10))
    # Keep a dead server from stalling a run for minutes in MLflow's retries.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(int(tracking.get("connect_timeout") or 10) * 3))
    mlflow.set_tracking_uri(uri)
    return uri


def experiment_name(cfg: DictConfig) -> str:
    """The MLflow experiment of a run: ``tracking.experiment``, else ``digitlab-<dataset>``."""
    return str(cfg.tracking.get("experiment") or f"digitlab-{cfg.dataset.name}")


# MLflow rejects longer param values; a long list is cut, with a marker.
MAX_PARAM_LENGTH = 6000
PARENT_RUN_ENV = "DIGITLAB_PARENT_RUN_ID"


def flat_params(cfg: DictConfig) -> dict[str, str]:
    """The full resolved config as MLflow params: dotted keys, values cut to MLflow's limit."""
    from digitlab.config import to_flat_dict

    params = {}
    for key, value in to_flat_dict(cfg).items():
        text = str(value)
        params[key] = text if len(text) <= MAX_PARAM_LENGTH else text[: MAX_PARAM_LENGTH - 3] + "..."
    return params


def git_commit(root: Path | None = None) -> str | None:
    """The commit the project's work tree is at, or None outside git."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root or project_root(), capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None


def hydra_overrides() -> str | None:
    """The command-line overrides of the current Hydra job, or None outside Hydra."""
    try:
        from hydra.core.hydra_config import HydraConfig
    except ImportError:
        return None
    if not HydraConfig.initialized():
        return None
    return " ".join(HydraConfig.get().overrides.task) or None


def run_tags(model: str, dataset: str) -> dict[str, str]:
    """Tags that say where a run came from: model, dataset, commit, DVC experiment, Hydra overrides."""
    tags = {"model": model, "dataset": dataset}
    optional = {
        "git_commit": git_commit(),
        "dvc_experiment": os.environ.get("DVC_EXP_NAME"),
        "hydra_overrides": hydra_overrides(),
    }
    tags.update({key: value for key, value in optional.items() if value})
    return tags


def artifact_location(uri: str, experiment: str) -> str | None:
    """Where a new experiment of a SQLite store keeps its artifacts: beside the store.

    MLflow's default for a database store is ``./mlruns`` in the working
    directory: a test's or a ``dvc exp run --temp`` copy's artifacts would land
    wherever the command happened to run. A server decides for itself (None).
    """
    parsed = urlparse(uri)
    if parsed.scheme != "sqlite" or not uri.startswith("sqlite:///"):
        return None
    database = Path(uri[len("sqlite:///") :])
    safe_name = "".join(c if c.isalnum() or c in "-_." else "_" for c in experiment)
    return (database.parent / "mlruns" / safe_name).as_uri()


def experiment_id(cfg: DictConfig) -> str:
    """The id of the run's experiment, created (artifacts beside a SQLite store) when it does not exist yet."""
    import mlflow

    name = experiment_name(cfg)
    experiment = mlflow.get_experiment_by_name(name)
    if experiment:
        return experiment.experiment_id
    return mlflow.create_experiment(name, artifact_location=artifact_location(mlflow.get_tracking_uri(), name))


def run_exists(run_id: str) -> bool:
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        mlflow.MlflowClient().get_run(run_id)
    except MlflowException:
        return False
    return True


def start_run(cfg: DictConfig, model: str, dataset: str, run_id: str | None = None):
    """Start a run for training ``model`` on ``dataset``, or continue run ``run_id`` (a resumed training).

    Under a sweep the run is nested in the sweep's parent run, whose id the
    sweep callback passes in ``$DIGITLAB_PARENT_RUN_ID``. The run id is always
    explicit, so a stray ``$MLFLOW_RUN_ID`` can't redirect it.
    """
    import mlflow

    if not run_id:
        parent = os.environ.get(PARENT_RUN_ENV)
        tags = run_tags(model, dataset)
        if parent:
            tags["mlflow.parentRunId"] = parent
        run_id = mlflow.MlflowClient().create_run(experiment_id(cfg), tags=tags, run_name=f"{model}-{dataset}").info.run_id
    # MLflow refuses to continue a run of another experiment than the process's active one
    # (set by any earlier mlflow.set_experiment, e.g. in a notebook): make the run's own active.
    mlflow.set_experiment(experiment_id=mlflow.MlflowClient().get_run(run_id).info.experiment_id)
    return mlflow.start_run(run_id=run_id)


def end_run_failed(error: BaseException) -> None:
    """End the active run FAILED with the error recorded (tag ``error`` and error.txt)."""
    import mlflow

    if mlflow.active_run() is None:
        return
    message = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    try:
        mlflow.set_tag("error", message[:MAX_PARAM_LENGTH])
        mlflow.log_text(message + "\n", "error.txt")
    finally:
        mlflow.end_run(status="FAILED")
