"""A run's durable outbox: what a stage logs reaches MLflow through a journal on disk.

Why not MLflow's own async logging (``mlflow.config.enable_async_logging``): its
queue lives in memory (a killed process loses it) and a batch whose HTTP retries
(``MLFLOW_HTTP_REQUEST_MAX_RETRIES``) run out is dropped with an error. A
tracking server that is down for a minute would cost a training its metrics or
stop it. digitlab keeps MLflow's client, its REST calls and its retry settings,
and puts a journal in front of them:

- every metric step, param, tag, artifact, the model and the end of the run is
  appended (and fsynced) to ``.digitlab/journal/<run id>/entries.jsonl``, with
  a copy of each file logged: appending never waits
  for the server;
- a background sender delivers the entries in order (consecutive metrics, params
  and tags as one ``log_batch``), records how far it got in ``state.json``,
  and on a failure waits (0.5 s doubling to 10 s) and tries again, for as long
  as the process lives. Metrics carry their own timestamps, so an entry sent
  twice (the server committed it but the answer was lost) is stored once;
- when the stage ends, it waits up to ``tracking.delivery_timeout_s`` for the
  sender. A journal that is fully delivered is removed; one that is not stays,
  and ``digitlab sync`` delivers it later (:func:`sync_all`).

Several processes may append to one run's journal in turn (the train stage,
then evaluate); one at a time delivers it (a file lock).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from digitlab.io import atomic_write_json, read_json
from digitlab.redact import redact

log = logging.getLogger("digitlab.journal")

ENTRIES, STATE, META = "entries.jsonl", "state.json", "journal.json"
FIRST_RETRY_S, LAST_RETRY_S = 0.5, 10.0
# MLflow's limits per log_batch call.
BATCH_LIMITS = {"metrics": 1000, "params": 100, "tags": 100}


def journal_root() -> Path:
    from digitlab.config import home_root

    return home_root() / ".digitlab" / "journal"


def now_ms() -> int:
    return int(time.time() * 1000)


class Journal:
    """The writing side: append entries for run ``run_id`` of the store at ``uri``; a sender delivers them."""

    def __init__(self, directory: Path, run_id: str, uri: str) -> None:
        self.directory, self.run_id, self.uri = directory, run_id, uri
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._sender: Sender | None = None
        self._closed_state: dict[str, Any] = {}
        directory.mkdir(parents=True, exist_ok=True)
        self._writer = _claim(directory)
        if not (directory / META).is_file():
            atomic_write_json(directory / META, {"run_id": run_id, "uri": redact(uri)})
        _trim_torn_tail(directory / ENTRIES)
        self._count = len(read_entries(directory))

    @classmethod
    def for_run(cls, run_id: str, uri: str, root: Path | None = None) -> Journal:
        return cls((root or journal_root()) / run_id, run_id, uri)

    # -- appending: never waits for the server ------------------------------------------------
    def append(self, entry: dict[str, Any]) -> None:
        line = json.dumps(entry, separators=(",", ":"), allow_nan=True) + "\n"
        with self._lock, open(self.directory / ENTRIES, "a", encoding="utf-8") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())
            self._count += 1
        self._wake.set()

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.append({"kind": "metrics", "metrics": {k: float(v) for k, v in metrics.items()}, "step": step or 0, "ts": now_ms()})

    def log_params(self, params: dict[str, str]) -> None:
        self.append({"kind": "params", "params": {k: str(v) for k, v in params.items()}})

    def set_tags(self, tags: dict[str, str]) -> None:
        self.append({"kind": "tags", "tags": {k: str(v) for k, v in tags.items()}})

    def log_artifact(self, path: Path | str, folder: str | None = None) -> None:
        """Log a file as it is now (a copy is kept until it is delivered)."""
        self.append({"kind": "artifact", "file": self._keep(Path(path)), "folder": folder})

    def log_text(self, text: str, name: str) -> None:
        self.append({"kind": "text", "text": text, "name": name})

    def log_inputs(self, datasets: list[dict[str, Any]]) -> None:
        """Log dataset inputs (``mlflow.log_input``), described as :func:`digitlab.lineage.dataset_inputs` does."""
        self.append({"kind": "inputs", "datasets": datasets})

    def log_table(self, table, name: str) -> None:
        """Log a DataFrame as an MLflow table (``mlflow.load_table`` finds it)."""
        kept = Path("files") / f"{self._count:06d}-{os.getpid()}" / "table.json"
        (self.directory / kept).parent.mkdir(parents=True, exist_ok=True)
        table.to_json(self.directory / kept, orient="split", index=False)
        self.append({"kind": "table", "file": kept.as_posix(), "name": name})

    def log_model(self, model_file: Path, sample) -> None:
        """Log a saved ``.keras`` model as the run's MLflow model, with an input sample (an array) for its signature."""
        import numpy as np

        kept = self._keep(model_file)
        np.save(self.directory / Path(kept).with_name("sample.npy"), np.asarray(sample, dtype=np.float32))
        self.append({"kind": "model", "file": kept, "sample": Path(kept).with_name("sample.npy").as_posix()})

    def end(self, status: str) -> None:
        self.append({"kind": "end", "status": status, "ts": now_ms()})

    def _keep(self, path: Path) -> str:
        relative = Path("files") / f"{self._count:06d}-{os.getpid()}" / path.name  # two writers of one run never share a folder
        target = self.directory / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)  # a copy, not a link: a file rewritten in place later must not change what was logged
        return relative.as_posix()

    # -- delivering ---------------------------------------------------------------------------
    def start_sender(self) -> None:
        self._sender = Sender(self.directory, self.uri, self._wake)
        self._sender.start()

    @property
    def pending(self) -> int:
        """Entries not delivered yet, this process's and any other writer's of the run."""
        return len(read_entries(self.directory)) - delivered(self.directory)

    @property
    def model_uri(self) -> str | None:
        """The URI of the model once it was delivered (also after the journal was closed and removed)."""
        return _state(self.directory).get("model_uri") or self._closed_state.get("model_uri")

    def close(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for delivery; True (and the journal removed) when all was delivered."""
        deadline = time.monotonic() + timeout
        while self.pending and time.monotonic() < deadline:
            self._wake.set()
            time.sleep(0.05)
        if self._sender is not None:
            self._sender.stop()
        try:
            if self.pending:
                return False
            self._closed_state = _state(self.directory)
            if self._writer.is_locked:  # else another writer holds it, and removes it when it closes
                shutil.rmtree(self.directory, ignore_errors=True)
            return True
        finally:
            self._writer.release()


def _claim(directory: Path):
    """This process writes the journal now: ``digitlab sync`` must not remove it under its feet.

    Another writer of the same run (two queued experiments evaluating one cached training)
    may close the journal, delivered, and remove its folder while this one waits for the
    lock: then the folder is made again and claimed anew.
    """
    from filelock import FileLock, Timeout

    deadline = time.monotonic() + 30
    while True:
        directory.mkdir(parents=True, exist_ok=True)
        lock = FileLock(directory / ".writer.lock")
        try:
            lock.acquire(timeout=max(0.0, deadline - time.monotonic()))
        except FileNotFoundError:  # the folder was removed between mkdir and open
            continue
        except Timeout:
            log.warning("journal %s is held by another process; appending anyway", directory)
            directory.mkdir(parents=True, exist_ok=True)
            return lock
        if (directory / ".writer.lock").exists():
            return lock
        lock.release()  # held the lock of a removed folder: its last writer closed it


def _trim_torn_tail(path: Path) -> None:
    """Cut a last line a kill left half-written, so the next entry starts on a line of its own."""
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(path, "r+b") as handle:
            handle.truncate(data.rfind(b"\n") + 1)


def read_entries(directory: Path) -> list[dict[str, Any]]:
    path = directory / ENTRIES
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").split("\n")
    return [json.loads(line) for line in lines[:-1] if line]  # the last piece is "" or a torn line


def _state(directory: Path) -> dict[str, Any]:
    path = directory / STATE
    return read_json(path) if path.is_file() else {}


def delivered(directory: Path) -> int:
    return int(_state(directory).get("delivered", 0))


@dataclass
class Delivery:
    """Deliver a journal's undelivered entries in order, through one MLflow client."""

    directory: Path
    client: Any  # mlflow.MlflowClient
    run_id: str = field(init=False)

    def __post_init__(self) -> None:
        self.run_id = read_json(self.directory / META)["run_id"]

    def deliver(self) -> int:
        """Send what is pending; returns how many entries were delivered. Raises on the first failure."""
        from filelock import FileLock, Timeout

        try:
            with FileLock(self.directory / ".deliver.lock", timeout=0):
                return self._deliver_locked()
        except Timeout:  # another process delivers this journal now
            return 0

    def _deliver_locked(self) -> int:
        entries = read_entries(self.directory)
        state = _state(self.directory)
        done = start = int(state.get("delivered", 0))
        for group in _groups(entries, start):
            extra = self._send_or_set_aside(group)
            done += len(group)
            state.update(extra, delivered=done)
            atomic_write_json(self.directory / STATE, state)
            self._forget_files(group)
        return done - start

    def _send_or_set_aside(self, group: list[dict[str, Any]]) -> dict[str, Any]:
        """Send a group; one the server refuses for good (HTTP 400/404: it will never take it) is set aside
        in ``rejected.jsonl`` with a warning, so it can't hold back the entries after it."""
        from mlflow.exceptions import MlflowException

        try:
            return self._send(group)
        except MlflowException as error:
            if error.get_http_status_code() not in (400, 404):
                raise
            with open(self.directory / "rejected.jsonl", "a", encoding="utf-8") as handle:
                handle.writelines(json.dumps({**entry, "error": _one_line(error)}) + "\n" for entry in group)
            log.warning("MLflow refused %d journal entries of run %s (%s); kept in %s", len(group), self.run_id,
                        _one_line(error), self.directory / "rejected.jsonl")  # fmt: skip
            return {}

    def _send(self, group: list[dict[str, Any]]) -> dict[str, Any]:
        kind = group[0]["kind"]
        if kind in BATCH_LIMITS:
            self._send_batch(group)
        elif kind == "artifact":
            entry = group[0]
            self.client.log_artifact(self.run_id, str(self.directory / entry["file"]), entry["folder"])
        elif kind == "text":
            self.client.log_text(self.run_id, group[0]["text"], group[0]["name"])
        elif kind == "inputs":
            self._send_inputs(group[0]["datasets"])
        elif kind == "table":
            import pandas as pd

            table = pd.read_json(self.directory / group[0]["file"], orient="split")
            self.client.log_table(self.run_id, table, group[0]["name"])
        elif kind == "model":
            return {"model_uri": self._send_model(group[0])}
        elif kind == "end":
            self.client.set_terminated(self.run_id, group[0]["status"], end_time=group[0]["ts"])
        return {}

    def _send_batch(self, group: list[dict[str, Any]]) -> None:
        from mlflow.entities import Metric, Param, RunTag

        metrics = [Metric(k, v, e["ts"], e["step"]) for e in group if e["kind"] == "metrics" for k, v in e["metrics"].items()]
        params = [Param(k, v) for e in group if e["kind"] == "params" for k, v in e["params"].items()]
        tags = {k: v for e in group if e["kind"] == "tags" for k, v in e["tags"].items()}  # the last value of a tag wins
        self.client.log_batch(self.run_id, metrics=metrics, params=params, tags=[RunTag(k, v) for k, v in tags.items()])

    def _send_inputs(self, datasets: list[dict[str, Any]]) -> None:
        from mlflow.entities import Dataset, DatasetInput, InputTag
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        fields = ("name", "digest", "source_type", "source", "schema", "profile")
        inputs = [DatasetInput(Dataset(**{k: d["dataset"].get(k) for k in fields}), [InputTag(MLFLOW_DATASET_CONTEXT, d["context"])]) for d in datasets]
        self.client.log_inputs(self.run_id, datasets=inputs)

    def _send_model(self, entry: dict[str, Any]) -> str:
        import mlflow
        import numpy as np

        from digitlab import tracking
        from digitlab.models import load_model

        model = load_model(self.directory / entry["file"])
        sample = np.load(self.directory / entry["sample"])
        mlflow.set_experiment(experiment_id=self.client.get_run(self.run_id).info.experiment_id)
        with mlflow.start_run(run_id=self.run_id, log_system_metrics=False):
            return tracking.log_model(model, sample)

    def _forget_files(self, group: list[dict[str, Any]]) -> None:
        for entry in group:
            for key in ("file", "sample"):
                if key in entry:
                    shutil.rmtree((self.directory / entry[key]).parent, ignore_errors=True)


def _groups(entries: list[dict[str, Any]], start: int) -> Iterator[list[dict[str, Any]]]:
    """Undelivered entries in order: runs of metrics/params/tags as one batch (within MLflow's limits), others alone."""
    group: list[dict[str, Any]] = []
    sizes = dict.fromkeys(BATCH_LIMITS, 0)
    for entry in entries[start:]:
        kind = entry["kind"]
        size = len(entry.get(kind, {})) if kind in BATCH_LIMITS else 0
        if group and (kind not in BATCH_LIMITS or group[0]["kind"] not in BATCH_LIMITS or sizes[kind] + size > BATCH_LIMITS[kind]):
            yield group
            group, sizes = [], dict.fromkeys(BATCH_LIMITS, 0)
        group.append(entry)
        if kind in BATCH_LIMITS:
            sizes[kind] += size
    if group:
        yield group


class Sender(threading.Thread):
    """Delivers a journal in the background, retrying with back-off while the server is away."""

    def __init__(self, directory: Path, uri: str, wake: threading.Event) -> None:
        super().__init__(name=f"digitlab-journal-{directory.name}", daemon=True)
        self.directory, self.uri, self.wake = directory, uri, wake
        self._stopping = threading.Event()
        self.failures = 0

    def stop(self) -> None:
        self._stopping.set()
        self.wake.set()
        self.join(timeout=30)

    def run(self) -> None:
        import mlflow

        delivery = Delivery(self.directory, mlflow.MlflowClient(self.uri))
        while not self._stopping.is_set():
            self.wake.clear()
            wait = self._attempt(delivery)
            self.wake.wait(wait)

    def _attempt(self, delivery: Delivery) -> float:
        """One delivery pass; how long to wait before the next one."""
        try:
            delivery.deliver()
        except Exception as error:  # noqa: BLE001 - any failure of the server or the network: try again later
            self.failures += 1
            if self.failures == 1:
                log.warning("MLflow server %s unreachable (%s): logging to %s and retrying", redact(self.uri), _one_line(error), self.directory)
            return min(FIRST_RETRY_S * 2 ** (self.failures - 1), LAST_RETRY_S)
        if self.failures:
            log.info("MLflow server %s is back: journal %s delivered", redact(self.uri), self.directory.name)
        self.failures = 0
        return 1.0  # also picks up what other processes append


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return redact(f"{type(error).__name__}: {text[:200]}")


def _remove_unless_written(directory: Path) -> None:
    """Remove a delivered journal, unless a process still appends to it (it removes it when it closes)."""
    from filelock import FileLock, Timeout

    try:
        with FileLock(directory / ".writer.lock", timeout=0):
            shutil.rmtree(directory, ignore_errors=True)
    except Timeout:
        pass


def deliver_leftovers(uri: str) -> None:
    """Before a stage starts: deliver what earlier processes left in journals for the store at ``uri`` (a kill,
    an outage), if the server takes it now."""
    try:
        for line in sync_all(only_uri=uri):
            log.info("%s (left by an earlier process)", line)
    except Exception as error:  # noqa: BLE001 - best effort: `digitlab sync` says more
        log.warning("journals in %s wait for `digitlab sync`: %s", journal_root(), _one_line(error))


def pending_journals(root: Path | None = None) -> list[Path]:
    root = root or journal_root()
    return sorted(p for p in root.glob("*") if (p / META).is_file() and read_entries(p)[delivered(p) :]) if root.is_dir() else []


def sync_all(uri: str | None = None, root: Path | None = None, only_uri: str | None = None) -> list[str]:
    """Deliver every journal of the project (``digitlab sync``), to ``uri`` or each one's own (or only those of
    ``only_uri``). Returns one line per journal; raises on the first failure."""
    import mlflow

    lines = []
    for directory in pending_journals(root):
        meta = read_json(directory / META)
        if only_uri is not None and meta["uri"] != redact(only_uri):
            continue
        target = uri or meta["uri"]
        count = Delivery(directory, mlflow.MlflowClient(target)).deliver()
        left = len(read_entries(directory)) - delivered(directory)
        if not left:
            _remove_unless_written(directory)
        lines.append(f"run {meta['run_id']}: delivered {count} entries to {redact(target)}" + (f", {left} left" if left else ""))
    return lines


def _sync(args) -> None:
    from digitlab import tracking
    from digitlab.errors import TrackingUnavailable

    root = journal_root()
    waiting = pending_journals(root)
    if not waiting:
        print(f"nothing to deliver: no pending journal in {root}")
        return
    uris = {args.uri or read_json(d / META)["uri"] for d in waiting}
    for uri in sorted(uris):  # credentials, reachability: one line when the server is still away
        tracking.configure(tracking.TrackingSettings(uri=uri))
    try:
        lines = sync_all(args.uri, root)
    except Exception as error:  # noqa: BLE001 - the server went away again: what was delivered stays delivered
        raise TrackingUnavailable(f"delivery stopped ({_one_line(error)}); run `digitlab sync` again later") from error
    print("\n".join(lines))


def add_sync_command(commands) -> None:
    """``digitlab sync``: deliver the journals that an unreachable tracking server left behind."""
    sync = commands.add_parser(
        "sync",
        help="send to the MLflow server what runs logged while it was unreachable",
        description="Deliver every pending run journal of the project (.digitlab/journal/) to its MLflow server, "
        "in order; a delivered journal is removed. Safe to run while stages run and to run again.",
    )
    sync.add_argument("--uri", default=None, help="deliver to this tracking URI instead of the one each journal names")
    sync.set_defaults(handler=_sync)
