"""``mlflow server``: PostgreSQL behind it, artifacts proxied to the bucket, MLflow's basic-auth app in front.

The admin password is generated once into the auth config (0600, read through
``MLFLOW_AUTH_CONFIG_PATH``) and into ``secrets/mlflow-credentials``, the client's
copy in the format of MLflow's ``~/.mlflow/credentials``. The auth app's users live
in a SQLite file in the stack directory.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from digitlab.stack import procs
from digitlab.stack.layout import Layout, ini_text, read_ini, secret_value, write_secret
from digitlab.stack.options import StackOptions
from digitlab.stack.postgres import Database

ADMIN = "admin"


# MLflow's auth app checks the password's hash (tens of ms of CPU, by design) on every request unless it keeps
# the logins it verified: each evaluation a training logs is a request, so without this the team server spent most
# of its CPU checking the same password again, 12x fewer metrics/s than without auth (benchmarks/RESULTS.md,
# "Tracking store under load"). A password changed or a user deleted through the server is dropped from the
# worker that served the change at once; each other worker (`--workers`) keeps accepting the old login for up to
# this long. Set in the auth config; one a user changed there is kept.
AUTH_CACHE_TTL_S = 60


def ensure_auth(layout: Layout) -> str:
    """The auth app's config and the client's credentials file (made once); returns the admin's user name."""
    if layout.auth_config.is_file() and layout.mlflow_credentials.is_file():
        config = read_ini(layout.auth_config)
        if config.has_section("mlflow") and not config.has_option("mlflow", "auth_cache_ttl_seconds"):  # made before the cache
            config.set("mlflow", "auth_cache_ttl_seconds", str(AUTH_CACHE_TTL_S))
            write_secret(layout.auth_config, ini_text({name: dict(config[name]) for name in config.sections()}))
        return read_ini(layout.mlflow_credentials)["mlflow"]["mlflow_tracking_username"]
    password = secret_value(layout.secrets / "mlflow-admin-password")
    config = {
        "default_permission": "READ",
        "database_uri": f"sqlite:///{layout.secrets / 'mlflow-auth.db'}",  # password hashes: in the 0700 folder
        "admin_username": ADMIN,
        "admin_password": password,
        "authorization_function": "mlflow.server.auth:authenticate_request_basic_auth",
        "auth_cache_ttl_seconds": str(AUTH_CACHE_TTL_S),
    }
    write_secret(layout.auth_config, ini_text({"mlflow": config}))
    write_secret(layout.mlflow_credentials, ini_text({"mlflow": {"mlflow_tracking_username": ADMIN, "mlflow_tracking_password": password}}))
    return ADMIN


# MLflow's job runner (its GenAI jobs; digitlab runs none) is eight more processes per server: 2.4 GB of RSS
# instead of 0.5 GB, and 25 s of CPU per start instead of 6 s (benchmarks/RESULTS.md, "The tracking server").
# Off unless the environment turns it on. Every ``mlflow server`` digitlab starts gets it (the stack, tests, benchmarks).
JOB_RUNNER_ENV = "MLFLOW_SERVER_ENABLE_JOB_EXECUTION"
WITHOUT_JOB_RUNNER = {JOB_RUNNER_ENV: "false"}


def server_env() -> dict[str, str]:
    """This process's environment for an ``mlflow server``: without MLflow's job runner unless it says otherwise."""
    return {**WITHOUT_JOB_RUNNER, **os.environ}


def command(database: Database, artifacts: str, options: StackOptions) -> list[str]:
    """The server's command line: addresses only, never a password."""
    executable = Path(sys.executable).parent / "mlflow"
    line = [str(executable), "server", "--host", options.host, "--port", str(options.port), "--workers", str(options.workers),
            "--backend-store-uri", database.uri, "--artifacts-destination", artifacts]  # fmt: skip
    if options.host not in ("127.0.0.1", "localhost"):
        line += ["--allowed-hosts", "*"]  # reached by other machines under names this one can't know
    return [*line, "--app-name", "basic-auth"] if options.auth else line


def environment(layout: Layout, database: Database, s3_env: dict[str, str]) -> dict[str, str]:
    """The server's environment: where its secrets are (files), the S3 endpoint, the auth config."""
    env = {**server_env(), **s3_env, "MLFLOW_AUTH_CONFIG_PATH": str(layout.auth_config)}
    env["MLFLOW_FLASK_SERVER_SECRET_KEY"] = secret_value(layout.flask_secret)
    if database.passfile:
        env["PGPASSFILE"] = str(database.passfile)
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        env.pop(name, None)  # the server's own settings come from its command line
    return env


def healthy(url: str) -> bool:
    import requests

    try:
        return requests.get(f"{url}/health", timeout=2).ok
    except requests.RequestException:
        return False


def start(layout: Layout, line: list[str], env: dict[str, str], url: str):
    """Start the server and wait for /health (its first start against a fresh database migrates it: seconds)."""
    log = layout.logs / "mlflow.log"
    process = procs.spawn(line, log, env, layout.root)
    procs.wait_until(lambda: healthy(url), process, "mlflow server", log, timeout=180)
    if (layout.secrets / "mlflow-auth.db").is_file():
        os.chmod(layout.secrets / "mlflow-auth.db", 0o600)  # the users' password hashes
    warm_up(layout, url)
    return process


def warm_up(layout: Layout, url: str) -> None:
    """A few real API calls, so that each worker's first (slow: imports, database, login) is not a user's."""
    import requests

    login = None
    if layout.mlflow_credentials.is_file():
        section = read_ini(layout.mlflow_credentials)["mlflow"]
        login = (section["mlflow_tracking_username"], section["mlflow_tracking_password"])
    for _ in range(4):
        try:
            requests.get(f"{url}/api/2.0/mlflow/experiments/search", params={"max_results": 1}, auth=login, timeout=60)
        except requests.RequestException:
            return
