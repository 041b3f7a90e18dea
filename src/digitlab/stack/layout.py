"""Where a stack keeps its files, and the two ways they are written: secrets (0600) and state.json."""

from __future__ import annotations

import configparser
import dataclasses
import io
import json
import os
import secrets
import tempfile
from pathlib import Path
from typing import Any

from digitlab.io import atomic_write_json


@dataclasses.dataclass(frozen=True)
class Layout:
    """The files of one stack directory."""

    root: Path

    @property
    def postgres(self) -> Path:
        return self.root / "postgres"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def secrets(self) -> Path:
        return self.root / "secrets"

    @property
    def snapshot(self) -> Path:
        return self.root / "s3-snapshot"

    @property
    def state(self) -> Path:
        return self.root / "state.json"

    @property
    def pgpass(self) -> Path:
        return self.secrets / "pgpass"

    @property
    def aws_credentials(self) -> Path:
        return self.secrets / "aws-credentials"

    @property
    def mlflow_credentials(self) -> Path:
        """The tracking client's user and password, in the format of MLflow's ``~/.mlflow/credentials``."""
        return self.secrets / "mlflow-credentials"

    @property
    def auth_config(self) -> Path:
        return self.secrets / "basic-auth.ini"

    @property
    def flask_secret(self) -> Path:
        return self.secrets / "flask-secret-key"

    def create(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        self.secrets.mkdir(mode=0o700, exist_ok=True)
        os.chmod(self.secrets, 0o700)


def write_secret(path: Path, text: str) -> Path:
    """Write ``text`` atomically to a file only its owner can read or write (0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # 0600 from the start
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(name, path)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
    return path


def new_password() -> str:
    return secrets.token_urlsafe(24)


def secret_value(path: Path) -> str:
    """A generated secret kept in ``path``: read it, or make one (0600) the first time."""
    if path.is_file():
        return path.read_text(encoding="utf-8").strip()
    value = new_password()
    write_secret(path, value + "\n")
    return value


def ini_text(sections: dict[str, dict[str, str]]) -> str:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_dict(sections)
    buffer = io.StringIO()
    parser.write(buffer)
    return buffer.getvalue()


def read_ini(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(path, encoding="utf-8")
    return parser


def read_state(layout: Layout) -> dict[str, Any]:
    try:
        return json.loads(layout.state.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def write_state(layout: Layout, state: dict[str, Any]) -> None:
    atomic_write_json(layout.state, state)
