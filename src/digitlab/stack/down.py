"""``digitlab stack down`` and ``digitlab stack status``."""

from __future__ import annotations

import socket
from typing import Any
from urllib.parse import urlsplit

from digitlab.stack import postgres, procs, s3, server
from digitlab.stack.layout import Layout, read_state, write_state
from digitlab.stack.up import say


def down(layout: Layout) -> None:
    """Stop the server, copy the bucket out of moto and stop it, stop PostgreSQL; data stays. No process is left."""
    state = read_state(layout)
    services = state.get("services", {})
    process = procs.alive(services.get("mlflow"))
    if process:
        procs.terminate(process)
    say("mlflow", f"stopped (pid {process.pid})" if process else "was not running")
    bucket = services.get("s3", {})
    process = procs.alive(bucket)
    if process:
        client = s3.client(bucket["endpoint"], layout, False)
        count = s3.snapshot(client, bucket["bucket"], layout)
        procs.terminate(process)
        say("s3", f"stopped (pid {process.pid}); {count} objects saved in {layout.snapshot}")
    else:
        say("s3", "external endpoint, left as it is" if bucket.get("external") else "was not running")
    store = services.get("postgres", {})
    pid = postgres.postmaster_pid(layout) if not store.get("external") else None
    if procs.alive({"pid": pid}):
        postgres.stop(layout)
        say("postgres", f"stopped (pid {pid}); data kept in {layout.postgres}")
    else:
        say("postgres", "external server, left as it is" if store.get("external") else "was not running")
    if state:
        write_state(layout, state)


def _listening(address: str) -> bool:
    parts = urlsplit(address if "://" in address else f"tcp://{address}")
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or (80 if parts.scheme == "http" else 443)), timeout=3):
            return True
    except OSError:
        return False


def service_status(layout: Layout, name: str, entry: dict[str, Any]) -> tuple[bool, str]:
    """(whether ``name`` is up, its status line)."""
    if entry.get("external"):
        up, pid = _listening(entry["address"]), "external"
    elif name == "postgres":
        process = procs.alive({"pid": postgres.postmaster_pid(layout)})
        up, pid = process is not None, process.pid if process else "-"
    else:
        process = procs.alive(entry)
        up, pid = process is not None, process.pid if process else "-"
        if up and name == "mlflow":
            up = server.healthy(entry["local_url"])
    return up, f"{name:<8} {'up' if up else 'down':<5} {entry.get('address', '-'):<28} pid {pid}"


def status(layout: Layout) -> int:
    """One line per service, the UI and the password file; 0 when everything is up, else 1."""
    state = read_state(layout)
    if not state.get("services"):
        print(f"no stack in {layout.root}: start one with `digitlab stack up`")
        return 1
    results = [service_status(layout, name, state["services"].get(name, {})) for name in ("postgres", "s3", "mlflow")]
    lines = [line for _, line in results]
    mlflow = state["services"].get("mlflow", {})
    lines.append(f"UI       {mlflow.get('url', '-')}")
    if state.get("credentials_file"):
        lines.append(f"login    user admin, password in {state['credentials_file']}")
    if state.get("dvc_remote"):
        lines.append(f"DVC      remote 'team' = {state['dvc_remote']}")
    print("\n".join(lines))
    return 0 if all(up for up, _ in results) else 1
