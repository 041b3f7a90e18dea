"""A tracking client on this machine finds the stack's credentials by itself.

When the tracking URI is the running stack's server (``state.json`` of
``$DIGITLAB_STACK_DIR``, else ``<project>/.digitlab/stack``) and
``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD`` are unset, they are
taken from the stack's credentials file into this process's environment, where
MLflow's client reads them. Nothing else is imported: every stage calls this.
"""

from __future__ import annotations

import configparser
import json
import os
from pathlib import Path
from urllib.parse import urlsplit

from digitlab.stack import STACK_DIR_ENV


def stack_dir() -> Path:
    from digitlab.config import home_root

    return Path(os.environ.get(STACK_DIR_ENV) or home_root() / ".digitlab" / "stack")


def _address(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    return parts.scheme, "127.0.0.1" if host == "localhost" else host, parts.port


def _state_for(uri: str) -> dict | None:
    """The running stack's state when ``uri`` is its MLflow server, else None."""
    if not uri.startswith(("http://", "https://")):
        return None
    try:
        state = json.loads((stack_dir() / "state.json").read_text(encoding="utf-8"))
        server = state["services"]["mlflow"]
        if _address(uri) in {_address(server["url"]), _address(server.get("local_url", server["url"]))}:
            return state
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def stack_study_storage(uri: str) -> str | None:
    """The Optuna study database of the stack whose server is ``uri`` (its PostgreSQL's ``optuna``), or None.

    The password stays in the stack's pgpass file: ``PGPASSFILE`` is pointed at it.
    """
    state = _state_for(uri)
    try:
        postgres = state["services"]["postgres"] if state else None
        url, passfile = postgres["studies_uri"], postgres.get("passfile")
    except (KeyError, TypeError):
        return None
    if passfile and not os.environ.get("PGPASSFILE"):
        os.environ["PGPASSFILE"] = passfile
    return url


def use_stack_credentials(uri: str) -> bool:
    """Put the stack's user and password into the environment when ``uri`` is its server; True if it did."""
    if os.environ.get("MLFLOW_TRACKING_USERNAME") or os.environ.get("MLFLOW_TRACKING_PASSWORD"):
        return False
    if not uri.startswith(("http://", "https://")):
        return False
    directory = stack_dir()
    try:
        state = json.loads((directory / "state.json").read_text(encoding="utf-8"))
        server = state["services"]["mlflow"]
        if _address(uri) not in {_address(server["url"]), _address(server.get("local_url", server["url"]))}:
            return False
        parser = configparser.ConfigParser(interpolation=None)
        parser.read(state["credentials_file"], encoding="utf-8")
        section = parser["mlflow"]
        user, password = section["mlflow_tracking_username"], section["mlflow_tracking_password"]
    except (OSError, ValueError, KeyError, TypeError, configparser.Error):
        return False
    os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = user, password
    return True
