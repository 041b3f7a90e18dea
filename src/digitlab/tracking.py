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
from urllib.parse import urlparse

from omegaconf import DictConfig

from digitlab.config import home_root
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
