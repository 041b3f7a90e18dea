"""MLflow: where runs go and how a stage connects to the store.

The default store is the SQLite file ``mlflow.db`` at the project root (the
real root, also for ``dvc exp run --temp``/``--queue`` copies and sweeps), so
every run of a project lands in one place. ``$MLFLOW_TRACKING_URI`` wins over
the default; ``tracking.uri`` in the config wins over both. A relative SQLite
path (``sqlite:///mlflow.db``) is relative to the project root.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated
from urllib.parse import urlparse

from pydantic import Field, field_validator

from digitlab.config import home_root, project_root
from digitlab.errors import DigitlabError
from digitlab.redact import redact, redact_data, split_credentials
from digitlab.schema import PositiveFloat, Strict

log = logging.getLogger(__name__)

# Stores MLflow 3 accepts as a tracking URI (the ./mlruns file store it refuses by default).
_URI_SCHEMES = re.compile(r"^(sqlite|https?|(postgresql|mysql|mssql)(\+\w+)?)$")
_URI_ALLOWED = "a URI of an MLflow store: sqlite:///PATH, http(s)://HOST[:PORT] or postgresql://USER@HOST/DB"


class TrackingSettings(Strict):
    uri: str | None = None  # null: $MLFLOW_TRACKING_URI, else sqlite:///<project root>/mlflow.db
    experiment: Annotated[str, Field(min_length=1, max_length=500)] | None = None  # null: digitlab-<dataset>
    ui_url: str | None = None  # base URL of a tracking UI, for links in the report
    log_models: bool = True
    connect_timeout: PositiveFloat = 10  # seconds before an unreachable server is an error
    # A RUNNING run of another host (or without a pid) whose last heartbeat is older is stale:
    # its process was killed. Longer than the slowest evaluation period. See digitlab.runs.
    stale_after_s: PositiveFloat = 3600

    @field_validator("uri")
    @classmethod
    def _known_store(cls, uri: str | None) -> str | None:
        if uri is not None:
            check_uri(uri)
        return uri

    @field_validator("ui_url")
    @classmethod
    def _web_address(cls, url: str | None) -> str | None:
        parsed = urlparse(url or "")
        if url is not None and (parsed.scheme not in ("http", "https") or not parsed.hostname):
            raise ValueError("an http(s)://HOST[:PORT] address of the MLflow UI, or null")
        return url


def check_uri(uri: str) -> None:
    """Raise ValueError saying what is allowed when ``uri`` is no MLflow store digitlab can use."""
    parsed = urlparse(uri)
    if not _URI_SCHEMES.match(parsed.scheme or ""):
        raise ValueError(_URI_ALLOWED)
    if parsed.scheme == "sqlite" and not uri.startswith("sqlite:///") or uri.rstrip("/") == "sqlite:":
        raise ValueError("sqlite:///PATH (three slashes; a relative PATH is relative to the project root)")
    if parsed.scheme != "sqlite" and not parsed.hostname:
        raise ValueError(_URI_ALLOWED + " (the host is missing)")


def resolve_uri(tracking: TrackingSettings) -> str:
    """The tracking URI a run uses: config, then $MLFLOW_TRACKING_URI, then <root>/mlflow.db."""
    uri = tracking.uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        return f"sqlite:///{home_root() / 'mlflow.db'}"
    try:
        check_uri(uri)
    except ValueError as exc:
        raise DigitlabError(f"MLFLOW_TRACKING_URI={redact(uri)!r} is not valid: expected {exc}") from None
    database = sqlite_path(uri)
    if database is not None and not database.is_absolute():
        return f"sqlite:///{home_root() / database}"
    return uri


def client_uri(uri: str) -> str:
    """The URI the MLflow client is given: a server's credentials moved out of it, into this process's environment.

    A password in ``tracking.uri`` (e.g. from ``dvc exp run -S``, which ``digitlab params``
    cannot refuse) goes to ``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD``, which the
    client sends as HTTP basic auth; the URI left holds none, so nothing written from it can
    leak it. A database store's password must stay in its URI (its driver reads it there): every
    copy digitlab writes or prints is redacted instead (:mod:`digitlab.redact`).
    """
    if urlparse(uri).scheme not in ("http", "https"):
        return uri
    clean, user, password = split_credentials(uri)
    if password is not None:
        os.environ["MLFLOW_TRACKING_USERNAME"] = user or ""
        os.environ["MLFLOW_TRACKING_PASSWORD"] = password
        log.warning(
            "the tracking URI %s holds credentials: passing them to MLflow as MLFLOW_TRACKING_USERNAME/PASSWORD "
            "(set those instead, and keep passwords out of params.yaml)", redact(uri)
        )
    return clean


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI, else None."""
    return Path(uri[len("sqlite:///") :]) if uri.startswith("sqlite:///") else None


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


def _create_store_once(uri: str) -> None:
    """Create (migrate) a SQLite store under a file lock: two first-time writers at once race otherwise."""
    import mlflow
    from filelock import FileLock

    database = sqlite_path(uri)
    if database is None:
        return
    database.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(database.with_name(f".{database.name}.lock"), timeout=300):
        mlflow.MlflowClient(uri).search_experiments(max_results=1)


def configure(tracking: TrackingSettings) -> str:
    """Point MLflow at the configured store, failing fast if a server is unreachable. Returns the URI."""
    import mlflow

    uri = client_uri(resolve_uri(tracking))
    check_reachable(uri, tracking.connect_timeout)
    # Keep a dead server from stalling a run for minutes in MLflow's retries.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(int(tracking.connect_timeout * 3)))
    _create_store_once(uri)
    mlflow.set_tracking_uri(uri)
    return uri


def experiment_name(tracking: TrackingSettings, dataset: str) -> str:
    """The MLflow experiment of a run: ``tracking.experiment``, else ``digitlab-<dataset>``."""
    return tracking.experiment or f"digitlab-{dataset}"


# MLflow rejects longer param values; a long list is cut, with a marker.
MAX_PARAM_LENGTH = 6000
PARENT_RUN_ENV = "DIGITLAB_PARENT_RUN_ID"


def flat_params(settings) -> dict[str, str]:
    """The full validated settings as MLflow params: dotted keys, passwords redacted, values cut to MLflow's limit."""
    from digitlab.config import to_flat_dict

    params = {}
    for key, value in to_flat_dict(settings.model_dump(mode="json")).items():
        text = redact(str(value))
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
    """Tags that say where a run came from: model, dataset, commit, DVC experiment, Hydra overrides (passwords redacted)."""
    tags = {"model": model, "dataset": dataset}
    optional = {
        "git_commit": git_commit(),
        "dvc_experiment": os.environ.get("DVC_EXP_NAME"),
        "hydra_overrides": hydra_overrides(),
    }
    tags.update({key: value for key, value in optional.items() if value})
    return redact_data(tags)


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


def experiment_id(tracking: TrackingSettings, dataset: str) -> str:
    """The id of the run's experiment, created (artifacts beside a SQLite store) when it does not exist yet.

    Look-up-then-create races when two jobs start at once (a queue, a parallel
    sweep): a creator that loses the race takes the winner's experiment.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    name = experiment_name(tracking, dataset)
    experiment = mlflow.get_experiment_by_name(name)
    if experiment:
        return experiment.experiment_id
    try:
        return mlflow.create_experiment(name, artifact_location=artifact_location(mlflow.get_tracking_uri(), name))
    except MlflowException as exc:
        existing = mlflow.get_experiment_by_name(name)
        if existing is None:
            raise
        log.debug("experiment %s was created concurrently (%s)", name, exc.error_code)
        return existing.experiment_id


def run_exists(run_id: str) -> bool:
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        mlflow.MlflowClient().get_run(run_id)
    except MlflowException:
        return False
    return True


def start_run(tracking: TrackingSettings, model: str, dataset: str, run_id: str | None = None):
    """Start a run for training ``model`` on ``dataset``, or continue run ``run_id`` (a resumed training).

    Under a sweep the run is nested in the sweep's parent run, whose id the
    sweep callback passes in ``$DIGITLAB_PARENT_RUN_ID``. The run is tagged with
    this process (host, pid, heartbeat) so that :mod:`digitlab.runs` can tell when
    a kill left it RUNNING. The run id is always
    explicit, so a stray ``$MLFLOW_RUN_ID`` can't redirect it.
    """
    import mlflow

    from digitlab.runs import process_tags

    if not run_id:
        parent = os.environ.get(PARENT_RUN_ENV)
        tags = {**run_tags(model, dataset), **process_tags()}
        if parent:
            tags["mlflow.parentRunId"] = parent
        run_id = mlflow.MlflowClient().create_run(experiment_id(tracking, dataset), tags=tags, run_name=f"{model}-{dataset}").info.run_id
    else:  # this process runs it now: who to ask whether it is still alive
        for key, value in process_tags().items():
            mlflow.MlflowClient().set_tag(run_id, key, value)
    # MLflow refuses to continue a run of another experiment than the process's active one
    # (set by any earlier mlflow.set_experiment, e.g. in a notebook): make the run's own active.
    mlflow.set_experiment(experiment_id=mlflow.MlflowClient().get_run(run_id).info.experiment_id)
    return mlflow.start_run(run_id=run_id)


@contextlib.contextmanager
def tracked_run(tracking: TrackingSettings, model: str, dataset: str, run_id: str | None = None) -> Iterator:
    """An active run (new, or ``run_id`` continued) that ends FINISHED, or FAILED with the error recorded."""
    import mlflow

    run = start_run(tracking, model, dataset, run_id)
    try:
        yield run
    except BaseException as error:
        end_run_failed(error)
        raise
    mlflow.end_run()


def log_settings(settings) -> None:
    """The validated settings as the active run's params and as ``config.yaml``, passwords redacted."""
    import mlflow
    import yaml

    mlflow.log_params(flat_params(settings))
    mlflow.log_text(yaml.safe_dump(redact_data(settings.model_dump(mode="json")), sort_keys=False), "config.yaml")


def log_model(model, sample) -> str:
    """Log a Keras model as an MLflow model with an input signature; returns its URI."""
    import keras
    import mlflow
    import numpy as np
    import tensorflow as tf
    from mlflow.models import infer_signature

    sample = np.asarray(sample, dtype=np.float32)
    signature = infer_signature(sample, model.predict(sample, verbose=0))
    # Named requirements: MLflow's inference would import the model in a subprocess (slow).
    requirements = [f"tensorflow=={tf.__version__}", f"keras=={keras.__version__}", f"numpy=={np.__version__}"]
    return mlflow.keras.log_model(model, name="model", signature=signature, pip_requirements=requirements).model_uri


def end_run_failed(error: BaseException) -> None:
    """End the active run FAILED with the error recorded (tag ``error`` and error.txt)."""
    import mlflow

    if mlflow.active_run() is None:
        return
    message = redact(f"{type(error).__name__}: {error}" if str(error) else type(error).__name__)
    run_id = mlflow.active_run().info.run_id
    try:
        mlflow.set_tag("error", message[:MAX_PARAM_LENGTH])
        mlflow.log_text(message + "\n", "error.txt")
    except Exception as exc:  # noqa: BLE001 - recording the error must not keep the run from ending
        log.warning("could not record the error in MLflow run %s: %s", run_id, exc)
    finally:
        try:
            mlflow.end_run(status="FAILED")
        except Exception:  # noqa: BLE001 - the fluent run is broken: end it through a client
            mlflow.MlflowClient().set_terminated(run_id, "FAILED")
