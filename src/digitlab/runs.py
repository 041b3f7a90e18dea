"""Runs nobody will end: find the MLflow runs a killed process left RUNNING, and close them.

A process killed by SIGKILL or the OOM killer has no chance to end its run, which
would show as RUNNING for ever. So every run digitlab starts (a training, a
sweep's parent) carries tags that say who runs it: ``digitlab.host``,
``digitlab.pid``, ``digitlab.claimed`` (when that process took the run, unix
seconds) and ``digitlab.heartbeat`` (refreshed at each evaluation, and by a
sweep per job). A RUNNING run is stale when

- it was started on this host and its process is gone (or the pid now belongs to
  a process that started after the run was claimed: a reused pid), or
- it was started elsewhere (or carries no pid) and its last heartbeat is older
  than ``tracking.stale_after_s``.

:func:`close_stale` ends such runs KILLED, with the reason in the tag
``digitlab.killed_reason``. A train stage closes its own recipe's stale runs at
start (never the run it resumes), a sweep its stale parents, and
``digitlab runs --stale --close`` any in the project's store.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass

HOST_TAG = "digitlab.host"
PID_TAG = "digitlab.pid"
CLAIMED_TAG = "digitlab.claimed"
HEARTBEAT_TAG = "digitlab.heartbeat"
KILLED_TAG = "digitlab.killed_reason"
# A process that took a run was running by then; one that started later reuses its pid.
_CLOCK_SLACK_S = 2.0


@dataclass(frozen=True)
class StaleRun:
    run: object  # mlflow.entities.Run
    reason: str

    @property
    def run_id(self) -> str:
        return self.run.info.run_id


def process_tags() -> dict[str, str]:
    """The tags that say which process runs a run, from now on."""
    now = str(int(time.time()))
    tags = {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid()), CLAIMED_TAG: now, HEARTBEAT_TAG: now}
    node = os.environ.get("DIGITLAB_RAY_NODE_ID")  # a sweep's job on a Ray node (digitlab.raylaunch)
    if node:
        tags["ray.node_id"] = node
    return tags


def pid_alive(pid: int, claimed_at: float | None = None) -> bool:
    """Whether process ``pid`` of this host exists and was started by ``claimed_at`` (not a reused pid)."""
    import psutil

    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        started = process.create_time()
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True
    return claimed_at is None or started <= claimed_at + _CLOCK_SLACK_S


def _seconds(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def stale_reason(run, stale_after_s: float, now: float | None = None) -> str | None:
    """Why RUNNING ``run`` has no process left to end it, or None while it may still be alive."""
    tags, host = run.data.tags, socket.gethostname()
    started = run.info.start_time / 1000 if run.info.start_time else None
    pid = tags.get(PID_TAG, "")
    if tags.get(HOST_TAG) == host and pid.isdigit():
        if pid_alive(int(pid), _seconds(tags.get(CLAIMED_TAG)) or started):
            return None
        return f"its process {pid} on {host} is gone"
    last = _seconds(tags.get(HEARTBEAT_TAG)) or started
    age = (now or time.time()) - last if last else None
    if age is None or age <= stale_after_s:
        return None
    where = f" (on {tags[HOST_TAG]})" if tags.get(HOST_TAG) else ""
    return f"no heartbeat for {age:.0f} s{where}, more than tracking.stale_after_s={stale_after_s:g}"


def stale_runs(client, experiment_ids: Iterable[str], stale_after_s: float, filter_string: str = "", now: float | None = None) -> list[StaleRun]:
    """The RUNNING runs of ``experiment_ids`` (narrowed by an MLflow ``filter_string``) that are stale."""
    from mlflow.entities import ViewType

    query = "attributes.status = 'RUNNING'" + (f" and {filter_string}" if filter_string else "")
    ids = list(experiment_ids)
    if not ids:
        return []
    found, token = [], None
    while True:
        page = client.search_runs(ids, filter_string=query, run_view_type=ViewType.ACTIVE_ONLY, max_results=1000, page_token=token)
        found += [StaleRun(run, reason) for run in page if (reason := stale_reason(run, stale_after_s, now))]
        token = page.token
        if not token:
            return found


def close_stale(client, stale: Iterable[StaleRun], keep: str | None = None) -> list[StaleRun]:
    """End each stale run KILLED with its reason in ``digitlab.killed_reason``; never run ``keep``. Returns those closed."""
    from digitlab.journal import journal_root, pending_journals

    waiting = {path.name for path in pending_journals(journal_root())}  # their end is on its way: `digitlab sync`
    closed = []
    for entry in stale:
        if entry.run_id == keep or entry.run_id in waiting:
            continue
        client.set_tag(entry.run_id, KILLED_TAG, entry.reason)
        client.set_terminated(entry.run_id, "KILLED")
        closed.append(entry)
    return closed


def close_stale_runs(tracking_settings, experiment_id: str, filter_string: str, keep: str | None = None) -> list[StaleRun]:
    """Close the stale runs of one experiment that match ``filter_string`` (a stage's own kind of run)."""
    import logging

    import mlflow

    client = mlflow.MlflowClient()
    closed = close_stale(client, stale_runs(client, [experiment_id], tracking_settings.stale_after_s, filter_string), keep)
    for entry in closed:
        logging.getLogger(__name__).warning("closed stale MLflow run %s as KILLED: %s", entry.run_id, entry.reason)
    return closed


def describe(entry: StaleRun, experiment: str) -> str:
    """One line about a stale run: id, experiment, name, reason."""
    return f"{entry.run_id}  {experiment}  {entry.run.info.run_name or '-'}  {entry.reason}"


def project_stale_runs(settings, close: bool = False) -> list[str]:
    """One line per stale run of the project's store (``settings.tracking``); closed KILLED with ``close``."""
    import mlflow

    from digitlab import tracking

    client = mlflow.MlflowClient(tracking.configure(settings.tracking))
    names = {e.experiment_id: e.name for e in client.search_experiments()}
    stale = stale_runs(client, list(names), settings.tracking.stale_after_s)
    if close:
        close_stale(client, stale)
    verb = "closed as KILLED" if close else "stale"
    return [f"{verb}: {describe(entry, names.get(entry.run.info.experiment_id, '?'))}" for entry in stale]
