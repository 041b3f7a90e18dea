"""MLflow: where runs go and how a stage connects to the store.

The default store is the SQLite file ``mlflow.db`` at the project root (the
real root, also for ``dvc exp run --temp``/``--queue`` copies and sweeps), so
every run of a project lands in one place. ``$MLFLOW_TRACKING_URI`` wins over
the default; ``tracking.uri`` in the config wins over both. A relative SQLite
path (``sqlite:///mlflow.db``) is relative to the project root.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
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

from digitlab import interrupts
from digitlab.config import home_root, project_root
from digitlab.dblock import sqlite_file as sqlite_path  # the database file of a sqlite:/// URI
from digitlab.errors import DigitlabError, TrackingUnavailable
from digitlab.journal import Journal
from digitlab.redact import redact, redact_data, split_credentials
from digitlab.schema import NonNegativeFloat, PositiveFloat, Strict

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
    # At the end of a stage, how long to wait for the run's journal to reach an unreachable
    # server before leaving it for `digitlab sync` (the stage's outputs are written either way).
    delivery_timeout_s: NonNegativeFloat = 30
    # MLflow system metrics (CPU, memory, disk, network, GPU) of each training, one sample per interval:
    # digitlab.lineage, which also logs the run's source and datasets.
    system_metrics: bool = True
    system_metrics_interval_s: Annotated[float, Field(ge=1, le=3600)] = 10

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
        raise TrackingUnavailable(
            f"MLflow tracking server {uri} is unreachable ({exc.strerror or exc}): start it "
            f"(mlflow server --host {host} --port {port}) or set tracking.uri (tracking=sqlite for the local store)"
        ) from exc


def _create_store_once(uri: str) -> None:
    """Create (migrate) a database store once, however many first-time writers start at once.

    MLflow migrates a store's schema on first use, and two processes doing it at
    once fail ("duplicate column"): the first use happens under a lock of the
    database (:func:`digitlab.dblock.database_lock`; a file lock for SQLite, an
    advisory lock for PostgreSQL, across machines). A server migrates its store
    when it starts (nothing to do).
    """
    import mlflow

    from digitlab.dblock import database_lock

    if sqlite_path(uri) is None and not urlparse(uri).scheme.startswith("postgresql"):
        return
    with database_lock(uri, STORE_LOCK_KEY):
        mlflow.MlflowClient(uri).search_experiments(max_results=1)


# The advisory lock that serialises MLflow schema creation in a PostgreSQL store ("digitlab" in ASCII).
STORE_LOCK_KEY = 0x6469676974_6C6162 >> 16


def _server_message(response) -> str:
    """The error a server answered, on one line: MLflow's JSON ``message``, else the body's start."""
    try:
        text = str(response.json().get("message") or response.text)
    except ValueError:
        text = response.text
    return " ".join(redact(text).split())[:300] or response.reason or "no message"


def check_server(uri: str, timeout: float) -> None:
    """One real API call to an http(s) server, no retries: a refused login or a failing server is one line at once.

    401/403: the credentials (MLFLOW_TRACKING_USERNAME/PASSWORD) are wrong or missing,
    which no retry fixes (:class:`DigitlabError`). 5xx or no answer within ``timeout``:
    the server or the database behind it is down (:class:`TrackingUnavailable`).
    """
    import requests

    if urlparse(uri).scheme not in ("http", "https"):
        return
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    verify = os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH") or os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() != "true"
    try:
        response = requests.get(
            f"{uri.rstrip('/')}/api/2.0/mlflow/experiments/search", params={"max_results": 1}, timeout=timeout, verify=verify,
            auth=(user or "", password or "") if user or password else None,
            headers={"Authorization": f"Bearer {token}"} if token and not (user or password) else None,
        )  # fmt: skip
    except requests.RequestException as exc:
        raise TrackingUnavailable(f"MLflow tracking server {uri} did not answer within {timeout:g} s ({type(exc).__name__})") from None
    if response.status_code in (401, 403):
        who = f"the credentials of user {user!r}" if user or password else "to serve a client without credentials"
        raise DigitlabError(
            f"MLflow tracking server {uri} refused {who} (HTTP {response.status_code}): set MLFLOW_TRACKING_USERNAME/"
            "MLFLOW_TRACKING_PASSWORD to an account of that server (a `digitlab stack`: its password file, `digitlab stack status`)"
        )  # fmt: skip
    if response.status_code >= 500:
        raise TrackingUnavailable(f"MLflow tracking server {uri} failed (HTTP {response.status_code}): {_server_message(response)}")


def configure(tracking: TrackingSettings) -> str:
    """Point MLflow at the configured store, failing fast if a server is unreachable. Returns the URI."""
    import mlflow

    from digitlab.stack.client import use_stack_credentials

    uri = client_uri(resolve_uri(tracking))
    check_reachable(uri, tracking.connect_timeout)
    use_stack_credentials(uri)  # the server of this machine's `digitlab stack`: its login, unless one is set
    check_server(uri, tracking.connect_timeout)
    # No usage reports from a tool that runs offline; MLflow 3's telemetry thread also races the client
    # (KeyError '_MLFLOW_TELEMETRY_SESSION_ID' in a log_batch under load: benchmarks/tracking_load.py).
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
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
SETTINGS_TAG = "digitlab.settings_sha"  # what the run was told (digitlab.config.settings_fingerprint)


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


def require_run(run_id: str, where: str) -> None:
    """Fail with one line when run ``run_id`` (read from ``where``) is not in the configured store."""
    import mlflow

    if not run_exists(run_id):
        raise DigitlabError(
            f"MLflow run {run_id} ({where}) is not in the store {redact(mlflow.get_tracking_uri())}: "
            "use the tracking settings the model was trained with, or retrain it"
        )


def run_exists(run_id: str) -> bool:
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        mlflow.MlflowClient().get_run(run_id)
    except MlflowException:
        return False
    return True


def start_run(tracking: TrackingSettings, model: str, dataset: str, run_id: str | None = None):
    """Create a run for training ``model`` on ``dataset`` on the store, or claim run ``run_id`` (a resumed training).

    Under a sweep the run is nested in the sweep's parent run, whose id the
    sweep callback passes in ``$DIGITLAB_PARENT_RUN_ID``. The run is tagged with
    this process (host, pid, heartbeat) so that :mod:`digitlab.runs` can tell when
    a kill left it RUNNING. The run id is always explicit, so a stray
    ``$MLFLOW_RUN_ID`` can't redirect it. Returns the run (an ``mlflow.entities.Run``).
    """
    import mlflow

    from digitlab.runs import process_tags

    client = mlflow.MlflowClient()
    if not run_id:
        parent = os.environ.get(PARENT_RUN_ENV)
        tags = {**run_tags(model, dataset), **process_tags()}
        if parent:
            tags["mlflow.parentRunId"] = parent
        return client.create_run(experiment_id(tracking, dataset), tags=tags, run_name=f"{model}-{dataset}")
    for key, value in process_tags().items():  # this process runs it now: who to ask whether it is still alive
        client.set_tag(run_id, key, value)
    if client.get_run(run_id).info.status != "RUNNING":
        client.update_run(run_id, status="RUNNING")
    return client.get_run(run_id)


@dataclasses.dataclass
class TrackedRun:
    """A run a stage logs to: everything goes through its journal (:mod:`digitlab.journal`)."""

    run_id: str
    experiment_id: str
    uri: str
    journal: Journal
    end_status: str = "FINISHED"  # how the run ends without an error (KILLED: stopped on purpose, e.g. pruned)


_ACTIVE: contextvars.ContextVar[TrackedRun | None] = contextvars.ContextVar("digitlab_tracked_run", default=None)


def active_run() -> TrackedRun:
    """The run of the current :func:`tracked_run` block."""
    run = _ACTIVE.get()
    if run is None:
        raise RuntimeError("no digitlab run is active: log inside tracking.tracked_run")
    return run


@contextlib.contextmanager
def tracked_run(tracking: TrackingSettings, model: str, dataset: str, run_id: str | None = None) -> Iterator[TrackedRun]:
    """A run (new, or ``run_id`` continued) that ends FINISHED, or FAILED with the error recorded.

    The run is created on the store at once (a store that can't be reached fails
    the stage before any work); what is logged afterwards goes through the run's
    journal, so an outage of the server in between costs nothing (see :func:`close_journal`).
    """
    import mlflow

    run: TrackedRun | None = None
    token = None
    try:
        # Created and in its journal's hands before a stop can end the command: a Ctrl-C that came in between
        # left the run RUNNING. Such a stop is raised as the block ends, and ends the run like any other.
        with interrupts.held():
            info = start_run(tracking, model, dataset, run_id).info
            uri = mlflow.get_tracking_uri()
            run = TrackedRun(info.run_id, info.experiment_id, uri, Journal.for_run(info.run_id, uri))
            run.journal.start_sender()
        token = _ACTIVE.set(run)
        yield run
    except BaseException as error:
        if run is not None:
            with interrupts.held():  # the run's end is written whole: a stop meanwhile comes after it
                record_failure(run.journal, error)
        raise
    else:
        with interrupts.held():
            run.journal.end(run.end_status)
    finally:
        if token is not None:
            _ACTIVE.reset(token)
        if run is not None:
            close_journal(run.journal, tracking.delivery_timeout_s)


def close_journal(journal: Journal, timeout: float) -> bool:
    """Wait up to ``timeout`` s for a run's journal to reach the server; warn once, naming the way out, if it did not."""
    if journal.close(timeout):
        return True
    log.warning(
        "MLflow server %s unreachable: %d entries of run %s are kept in %s; deliver them with `digitlab sync` "
        "(the stage's own outputs are complete)", redact(journal.uri), journal.pending, journal.run_id, journal.directory,
    )  # fmt: skip
    return False


def log_settings(settings) -> None:
    """The validated settings as the active run's params and as ``config.yaml``, passwords redacted."""
    import yaml

    from digitlab.config import settings_fingerprint

    journal = active_run().journal
    journal.log_params(flat_params(settings))
    journal.set_tags({SETTINGS_TAG: settings_fingerprint(settings)})
    journal.log_text(yaml.safe_dump(redact_data(settings.model_dump(mode="json")), sort_keys=False), "config.yaml")


def log_model(model, sample) -> str:
    """Log a Keras model as an MLflow model of the fluent active run, with an input signature; returns its URI."""
    import keras
    import mlflow
    import numpy as np
    import tensorflow as tf
    from mlflow.models import infer_signature

    sample = np.asarray(sample, dtype=np.float32)
    # The model called on the few sample images, not model.predict: with op determinism on (training's
    # default) predict's tf.data pipeline made TensorFlow print an error line ("NodeDef mentions attribute
    # use_unbounded_threadpool...") at the end of every training, harmless and nothing a user can act on.
    signature = infer_signature(sample, np.asarray(model(sample, training=False)))
    # Named requirements: MLflow's inference would import the model in a subprocess (slow).
    requirements = [f"tensorflow=={tf.__version__}", f"keras=={keras.__version__}", f"numpy=={np.__version__}"]
    return mlflow.keras.log_model(model, name="model", signature=signature, pip_requirements=requirements).model_uri


def record_failure(journal: Journal, error: BaseException) -> None:
    """End a run FAILED with the error recorded (tag ``error`` and error.txt)."""
    message = redact(f"{type(error).__name__}: {error}" if str(error) else type(error).__name__)
    journal.set_tags({"error": message[:MAX_PARAM_LENGTH]})
    journal.log_text(message + "\n", "error.txt")
    journal.end("FAILED")
