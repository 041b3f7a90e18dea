"""``digitlab stack`` options: parsed as text, then checked here, so a bad value is one line naming it (exit 2)."""

from __future__ import annotations

import argparse
import dataclasses
import re
from pathlib import Path
from urllib.parse import urlsplit

from digitlab.errors import ConfigError
from digitlab.stack import DEFAULT_BUCKET, DEFAULT_PORT

# S3's rules for bucket names: 3-63 lower-case letters, digits, '.' and '-', starting and ending with a letter or digit.
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_HOST = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclasses.dataclass(frozen=True)
class StackOptions:
    dir: Path
    host: str | None = None  # None (host, port, auth, workers): as the server ran last time, else the default
    port: int | None = None
    pg_port: int | None = None
    s3_port: int | None = None
    s3_endpoint: str | None = None
    bucket: str | None = None
    database_url: str | None = None
    auth: bool | None = None
    workers: int | None = None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", nargs="?", default=None, help="up | down | status")
    parser.add_argument("--dir", default=None, help="the stack's folder (default: <project>/.digitlab/stack)")
    parser.add_argument("--host", default=None, help="interface the MLflow server listens on (default 127.0.0.1; 0.0.0.0: all)")
    parser.add_argument("--port", default=None, help=f"the MLflow server's port (default: the last one, else {DEFAULT_PORT})")
    parser.add_argument("--pg-port", default=None, help="the local PostgreSQL's port (default: the last one, else a free one)")
    parser.add_argument("--s3-port", default=None, help="moto_server's port (default: the last one, else a free one)")
    parser.add_argument("--s3-endpoint", default=None, help="use this S3 endpoint (MinIO, AWS: https://s3.<region>.amazonaws.com) instead of moto")
    parser.add_argument("--bucket", default=None, help=f"the artifact bucket, also the DVC remote (default {DEFAULT_BUCKET})")
    parser.add_argument("--database-url", default=None, help="use this PostgreSQL server: postgresql://USER[:PASSWORD]@HOST[:PORT]/DB")
    parser.add_argument("--auth", default=None, help="basic (MLflow's basic-auth app, default) or none")
    parser.add_argument("--workers", default=None, help="the MLflow server's worker processes (default 2)")


def _port(option: str, value: str | None) -> int | None:
    if value is None:
        return None
    if not re.fullmatch(r"[0-9]{1,5}", value) or not 1 <= int(value) <= 65535:
        raise ConfigError(option, value, "a port number from 1 to 65535")
    return int(value)


def _count(option: str, value: str | None) -> int | None:
    if value is None:
        return None
    if not re.fullmatch(r"[0-9]{1,3}", value) or not 1 <= int(value) <= 64:
        raise ConfigError(option, value, "a whole number from 1 to 64")
    return int(value)


def _url(option: str, value: str | None, schemes: tuple[str, ...], allowed: str) -> str | None:
    if value is None:
        return None
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a port that is no number
    except ValueError:
        raise ConfigError(option, value, allowed) from None
    if parts.scheme not in schemes or not parts.hostname:
        raise ConfigError(option, value, allowed)
    return value


def _choice(option: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ConfigError(option, value, "one of " + ", ".join(choices))
    return value


def parse(args: argparse.Namespace, default_dir: Path) -> tuple[str, StackOptions]:
    """The action and the checked options; ConfigError (one line) for the first bad value."""
    action = _choice("action", args.action, ("up", "down", "status"))
    if args.bucket is not None and not _BUCKET.match(args.bucket):
        raise ConfigError("--bucket", args.bucket, "an S3 bucket name: 3-63 lower-case letters, digits, '.' or '-'")
    if args.host is not None and not _HOST.match(args.host):
        raise ConfigError("--host", args.host, "an IPv4 address or host name of this machine, e.g. 127.0.0.1 or 0.0.0.0")
    if args.dir is not None and not args.dir.strip():
        raise ConfigError("--dir", args.dir, "a folder path")
    db_allowed = "postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE"
    database_url = _url("--database-url", args.database_url, ("postgresql", "postgres", "postgresql+psycopg"), db_allowed)
    if database_url and (not urlsplit(database_url).username or not urlsplit(database_url).path.strip("/")):
        raise ConfigError("--database-url", database_url, db_allowed + " (the user and the database are needed)")
    options = StackOptions(
        dir=Path(args.dir).expanduser().resolve() if args.dir else default_dir,
        host=args.host,
        port=_port("--port", args.port),
        pg_port=_port("--pg-port", args.pg_port),
        s3_port=_port("--s3-port", args.s3_port),
        s3_endpoint=_url("--s3-endpoint", args.s3_endpoint, ("http", "https"), "an http(s)://HOST[:PORT] S3 endpoint"),
        bucket=args.bucket,
        database_url=database_url,
        auth=None if args.auth is None else _choice("--auth", args.auth, ("basic", "none")) == "basic",
        workers=_count("--workers", args.workers),
    )
    return action, options
