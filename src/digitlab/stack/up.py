"""``digitlab stack up``: start what is not running (reuse what is), one progress line per service."""

from __future__ import annotations

import dataclasses
import errno
import socket
import time
from pathlib import Path
from typing import Any

from digitlab.errors import DigitlabError
from digitlab.redact import redact
from digitlab.stack import DEFAULT_BUCKET, DEFAULT_PORT, dvc_remote, postgres, procs, s3, server
from digitlab.stack.layout import Layout, read_state, write_state
from digitlab.stack.options import StackOptions


def say(service: str, text: str) -> None:
    print(f"{service:<8} {text}", flush=True)


def choose_port(option: str, requested: int | None, previous: int | None) -> int:
    """The port asked for (it must be free), else the last one when still free, else a free one."""
    if requested is not None:
        if not procs.port_free("127.0.0.1", requested):
            raise DigitlabError(f"{option}={requested} is not valid: expected a free port (another program listens on it)")
        return requested
    if previous and procs.port_free("127.0.0.1", previous):
        return int(previous)
    return procs.free_port()


def postmaster_port(layout: Layout) -> int | None:
    try:
        return int((layout.postgres / "postmaster.pid").read_text().splitlines()[3])
    except (OSError, ValueError, IndexError):
        return None


def up_postgres(layout: Layout, options: StackOptions, previous: dict[str, Any]) -> tuple[postgres.Database, dict]:
    """The backend store: the --database-url server, or the local cluster (initdb the first time, started unless running)."""
    url = options.database_url or (previous.get("url") if previous.get("external") else None)
    if url:
        database = postgres.external(layout, url)
        say("postgres", f"using {database.uri} (--database-url)")
        return database, {"external": True, "url": redact(url), "address": f"{database.host}:{database.port}"}
    running = procs.alive({"pid": postgres.postmaster_pid(layout)})
    if running and postmaster_port(layout):
        port = postmaster_port(layout)
        say("postgres", f"already running on 127.0.0.1:{port} (pid {running.pid})")
    else:
        port = choose_port("--pg-port", options.pg_port, previous.get("port"))
        created = postgres.init_cluster(layout)
        postgres.start(layout, port)
        say("postgres", f"{'created and started' if created else 'started'} on 127.0.0.1:{port} (pid {postgres.postmaster_pid(layout)})")
    database = postgres.ensure_role(layout, port)
    entry = {"external": False, "pid": postgres.postmaster_pid(layout), "port": port, "address": f"127.0.0.1:{port}"}
    studies = {"studies_uri": database.sibling(postgres.STUDIES), "passfile": str(database.passfile)}
    return database, {**entry, "data": str(layout.postgres), "uri": database.uri, **studies}


def up_s3(layout: Layout, options: StackOptions, previous: dict[str, Any]) -> tuple[dict, dict[str, str]]:
    """The bucket: on the --s3-endpoint server, or on moto_server (started unless running, the snapshot restored)."""
    bucket = options.bucket or previous.get("bucket") or DEFAULT_BUCKET
    endpoint = options.s3_endpoint or (previous.get("endpoint") if previous.get("external") else None)
    if endpoint:
        env = s3.credentials_env(layout, external=True)
        s3.ensure_bucket(s3.client(endpoint, layout, True), bucket, endpoint)
        say("s3", f"using bucket {bucket} at {endpoint} (--s3-endpoint)")
        return {"external": True, "endpoint": endpoint, "bucket": bucket, "address": endpoint}, env
    env = s3.credentials_env(layout, external=False)
    process = procs.alive(previous)
    if process and previous.get("bucket") == bucket:
        port = int(previous["port"])
        say("s3", f"already running on 127.0.0.1:{port} (pid {process.pid})")
    else:
        if process:
            procs.terminate(process)
        port = choose_port("--s3-port", options.s3_port, previous.get("port"))
        process = s3.start_moto(layout, port)
        client = s3.client(f"http://127.0.0.1:{port}", layout, False)
        s3.ensure_bucket(client, bucket, f"http://127.0.0.1:{port}")
        restored = s3.restore(client, bucket, layout)
        say("s3", f"moto_server started on 127.0.0.1:{port} (pid {process.pid}), bucket {bucket}, {restored} objects restored")
    endpoint = f"http://127.0.0.1:{port}"
    entry = {"external": False, **procs.identity(process), "port": port, "endpoint": endpoint, "bucket": bucket, "address": endpoint}
    return entry, env


def server_urls(host: str, port: int) -> tuple[str, str]:
    """(the URL others use, the URL this machine uses)."""
    local = f"http://127.0.0.1:{port}"
    if host in ("0.0.0.0", "::"):
        return f"http://{socket.getfqdn()}:{port}", local
    return f"http://{host}:{port}", (local if host in ("127.0.0.1", "localhost") else f"http://{host}:{port}")


def check_address(host: str, port: int) -> None:
    """One line naming the option when the server could not listen on ``host:port``."""
    error = procs.bind_error(host if host != "localhost" else "127.0.0.1", port)
    if error is None:
        return
    if error.errno == errno.EADDRINUSE:
        raise DigitlabError(f"--port={port} is not valid: expected a free port (another program listens on it)")
    raise DigitlabError(f"--host={host} is not valid: expected an address of this machine ({error.strerror or error})")


def server_options(options: StackOptions, previous: dict[str, Any]) -> StackOptions:
    """The server's settings: those given, else those it ran with last time, else the defaults."""
    given = {key: getattr(options, key) for key in ("host", "port", "auth", "workers")}
    last = {key: previous[key] for key in given if previous.get(key) is not None}
    defaults = {"host": "127.0.0.1", "port": DEFAULT_PORT, "auth": True, "workers": 2}
    return dataclasses.replace(options, **{key: given[key] if given[key] is not None else last.get(key, defaults[key]) for key in given})


def up_mlflow(layout: Layout, options: StackOptions, previous: dict[str, Any], backend: tuple[postgres.Database, dict, dict]) -> dict:
    """The tracking server, restarted when what it was started with changed (the database, the bucket, the address)."""
    database, s3_entry, s3_env = backend
    options = server_options(options, previous)
    artifacts = f"s3://{s3_entry['bucket']}/mlflow"
    wanted = {"backend": database.uri, "artifacts": artifacts, "endpoint": s3_entry["endpoint"], "host": options.host,
              "port": options.port, "auth": options.auth, "workers": options.workers}  # fmt: skip
    url, local_url = server_urls(options.host, options.port)
    process = procs.alive(previous)
    if process and all(previous.get(key) == value for key, value in wanted.items()) and server.healthy(local_url):
        say("mlflow", f"already running at {url} (pid {process.pid})")
    else:
        if process:
            procs.terminate(process)
        check_address(options.host, options.port)
        if options.auth:
            server.ensure_auth(layout)
        env = server.environment(layout, database, {**s3_env, "MLFLOW_S3_ENDPOINT_URL": s3_entry["endpoint"]})
        started = time.monotonic()
        process = server.start(layout, server.command(database, artifacts, options), env, local_url)
        say("mlflow", f"server started at {url} (pid {process.pid}, {time.monotonic() - started:.0f} s)")
    return {**wanted, **procs.identity(process), "url": url, "local_url": local_url, "address": f"{options.host}:{options.port}"}


def up(options: StackOptions, project: Path) -> None:
    """Bring every service up (state.json written after each, so `stack down` finds what a failed `up` started)."""
    layout = Layout(options.dir)
    layout.create()
    state = read_state(layout)
    services = state.setdefault("services", {})
    state["dir"] = str(layout.root)
    if not procs.alive(services.get("mlflow")):  # a bad --host/--port fails before anything starts
        wanted = server_options(options, services.get("mlflow", {}))
        check_address(wanted.host, wanted.port)
    database, services["postgres"] = up_postgres(layout, options, services.get("postgres", {}))
    write_state(layout, state)
    services["s3"], s3_env = up_s3(layout, options, services.get("s3", {}))
    write_state(layout, state)
    services["mlflow"] = up_mlflow(layout, options, services.get("mlflow", {}), (database, services["s3"], s3_env))
    state["ui_url"] = services["mlflow"]["url"]
    state["credentials_file"] = str(layout.mlflow_credentials) if services["mlflow"]["auth"] else None
    credentials = None if services["s3"]["external"] else layout.aws_credentials
    bucket, endpoint = services["s3"]["bucket"], services["s3"]["endpoint"]
    state["dvc_remote"] = f"s3://{bucket}/dvc" if dvc_remote.configure(project, f"s3://{bucket}/dvc", endpoint, credentials) else None
    write_state(layout, state)
    print_summary(state, project)


def print_summary(state: dict[str, Any], project: Path) -> None:
    services = state["services"]
    mlflow, store, bucket = services["mlflow"], services["postgres"], services["s3"]
    lines = [
        f"digitlab stack is up ({state['dir']}):",
        f"  MLflow UI and tracking server  {mlflow['url']}",
        f"  login                          user admin, password in {state['credentials_file']}" if mlflow["auth"] else
        "  login                          none (--auth none)",
        f"  backend store                  {mlflow['backend']}",
        f"  artifacts                      {mlflow['artifacts']} at {bucket['endpoint']}",
    ]  # fmt: skip
    if state.get("dvc_remote"):
        lines.append(f"  DVC remote 'team' (default)    {state['dvc_remote']} ({project / '.dvc' / 'config.local'})")
    lines += [
        "Use it:  dvc exp run -S tracking=team      (runs log to the server; on this machine the login is found by itself)",
        f"         export MLFLOW_TRACKING_URI={mlflow['url']}   (other tools; plus MLFLOW_TRACKING_USERNAME/PASSWORD)",
        "         digitlab stack status   |   digitlab stack down",
    ]
    if store.get("external") is False:
        lines.insert(4, f"  PostgreSQL data                {store['data']}")
    print("\n".join(lines), flush=True)
