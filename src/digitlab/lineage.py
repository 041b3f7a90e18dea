"""Where a training run came from, as MLflow's UI shows it: source, datasets and system metrics.

Three things, logged for every training run (:func:`recorded`, around the fit):

- the **source**: the standard tags ``mlflow.source.name`` (the entry point, relative to the
  project root, e.g. ``pipeline/train.py``), ``mlflow.source.type`` (``LOCAL``),
  ``mlflow.source.git.commit`` (and ``.branch``, ``.repoURL`` when there is one): the UI's
  Source column and the run page's "Source" and "Git commit";
- the **datasets**: the prepared train, validation and test splits as MLflow dataset inputs
  (what ``mlflow.log_input`` logs, with the contexts ``training``, ``validation`` and
  ``testing``): the UI's Dataset column and the run's Datasets panel. Each is named
  ``<dataset>-<split>``, its digest is the split file's sha256 from ``meta.json`` (cut to
  MLflow's 36 characters), its source the split file, its schema the image tensor and the
  labels, and its profile the number of images, the image shape and the class counts;
- **system metrics** (``tracking.system_metrics``): MLflow's own monitors (CPU, memory, disk,
  network, and NVIDIA/AMD GPUs when ``pynvml``/``pyrsmi`` find one) sampled every
  ``tracking.system_metrics_interval_s`` seconds, logged as ``system/...`` metrics, the UI's
  "System metrics" tab.

All three go through the run's journal (:mod:`digitlab.journal`) like every other param,
tag and metric: an unreachable server delays them, never loses them nor stops the training.
(MLflow's own :class:`~mlflow.system_metrics.system_metrics_monitor.SystemMetricsMonitor`
logs straight to the server and stops for good at its first failed call; :class:`JournalMonitor`
keeps its monitors and metric names and hands each sample to the journal instead.)
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import json
import logging
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from digitlab.config import project_root
from digitlab.data.prepared import SPLITS, Meta
from digitlab.redact import redact

if TYPE_CHECKING:
    from digitlab.journal import Journal
    from digitlab.tracking import TrackingSettings

log = logging.getLogger(__name__)

CONTEXTS = {"train": "training", "val": "validation", "test": "testing"}  # mlflow.data.context of each split
DIGEST_LENGTH = 36  # MLflow's limit on a dataset digest


@contextlib.contextmanager
def recorded(tracking: TrackingSettings, journal: Journal, meta: Meta, prepared: Path, resumed: bool = False) -> Iterator[None]:
    """Log the run's source and datasets now, and system metrics while the block runs (a ``resumed`` run's
    system metrics continue after its last step)."""
    journal.set_tags(source_tags())
    journal.log_inputs(dataset_inputs(meta, Path(prepared)))
    monitor = start_monitor(journal, tracking.system_metrics_interval_s, resumed) if tracking.system_metrics else None
    try:
        yield
    finally:
        if monitor is not None:
            monitor.finish()


# -- source ---------------------------------------------------------------------------------------
def _git(*args: str) -> str | None:
    try:
        result = subprocess.run(["git", *args], cwd=project_root(), capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None


def source_name(argv0: str | None = None) -> str:
    """The entry point that runs: its path relative to the project root when inside it (``pipeline/train.py``)."""
    path = Path(argv0 if argv0 is not None else sys.argv[0] or "python")
    with contextlib.suppress(OSError, ValueError):
        return path.resolve().relative_to(project_root().resolve()).as_posix()
    return path.name or "python"


def source_tags() -> dict[str, str]:
    """MLflow's standard source tags (those the fluent ``mlflow.start_run`` would set) for this process."""
    from mlflow.utils.mlflow_tags import (
        MLFLOW_GIT_BRANCH,
        MLFLOW_GIT_COMMIT,
        MLFLOW_GIT_REPO_URL,
        MLFLOW_SOURCE_NAME,
        MLFLOW_SOURCE_TYPE,
        MLFLOW_USER,
    )

    tags = {MLFLOW_SOURCE_NAME: source_name(), MLFLOW_SOURCE_TYPE: "LOCAL"}
    with contextlib.suppress(Exception):
        tags[MLFLOW_USER] = getpass.getuser()
    optional = {
        MLFLOW_GIT_COMMIT: _git("rev-parse", "HEAD"),
        MLFLOW_GIT_BRANCH: _git("rev-parse", "--abbrev-ref", "HEAD"),
        MLFLOW_GIT_REPO_URL: _git("remote", "get-url", "origin"),
    }
    tags.update({key: redact(value) for key, value in optional.items() if value and value != "HEAD"})
    return tags


# -- datasets -------------------------------------------------------------------------------------
def _digest(meta: Meta, path: Path) -> str:
    """The split file's sha256 as ``meta.json`` records it (preprocess wrote it), else computed now."""
    digest = meta.checksums.get(path.name)
    if not digest and path.is_file():
        sha = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                sha.update(block)
        digest = sha.hexdigest()
    return (digest or "unknown")[:DIGEST_LENGTH]


def split_dataset(meta: Meta, prepared: Path, split: str):
    """One prepared split as an ``mlflow.data`` dataset (metadata only: the images are not read)."""
    import numpy as np
    from mlflow.data.dataset import Dataset
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.schema import TensorDatasetSchema
    from mlflow.types import Schema, TensorSpec

    path = prepared / f"{split}.npz"
    counts = meta.counts.get(split, {})
    rows = int(sum(counts.values()))
    schema = TensorDatasetSchema(
        features=Schema([TensorSpec(np.dtype(np.uint8), (-1, *meta.image_shape), "x")]),
        targets=Schema([TensorSpec(np.dtype(np.int64), (-1,), "y")]),
    )
    profile = {
        "num_rows": rows,
        "num_classes": meta.num_classes,
        "features_shape": [rows, *meta.image_shape],
        "targets_shape": [rows],
        "class_counts": counts,
    }

    class PreparedSplit(Dataset):
        def _compute_digest(self) -> str:
            return _digest(meta, path)

        @property
        def profile(self) -> dict[str, Any]:
            return profile

        @property
        def schema(self) -> TensorDatasetSchema:
            return schema

        def to_dict(self) -> dict[str, str]:
            return {**super().to_dict(), "schema": json.dumps(schema.to_dict()), "profile": json.dumps(profile)}

    with warnings.catch_warnings():  # "can be interpreted in multiple ways: LocalArtifactDatasetSource, LocalArtifactDatasetSource"
        warnings.simplefilter("ignore", UserWarning)
        source = resolve_dataset_source(str(path.resolve()))  # a LocalArtifactDatasetSource, source type "local"
    return PreparedSplit(source, name=f"{meta.dataset}-{split}")


def dataset_inputs(meta: Meta, prepared: Path) -> list[dict[str, Any]]:
    """The journal's description of the run's dataset inputs: the fields of each ``mlflow.entities.Dataset``
    and its context. The journal delivers them with ``MlflowClient.log_inputs`` (``Delivery._send_inputs``)."""
    return [{"dataset": split_dataset(meta, prepared, split).to_dict(), "context": CONTEXTS[split]} for split in SPLITS]


# -- system metrics -------------------------------------------------------------------------------
def start_monitor(journal: Journal, interval_s: float, resumed: bool = False):
    """MLflow's system-metrics monitor for the journal's run, started; ``finish()`` it. None if it can't run."""
    # MLflow's INFO lines ("Skip logging GPU metrics...", "Started monitoring...") on every training: debug here.
    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
    try:
        monitor = _monitor_class()(journal, interval_s, _next_step(journal) if resumed else 0)
    except Exception as error:  # noqa: BLE001 - system metrics are a nicety: never stop a training for them
        log.warning("system metrics are not logged: %s: %s", type(error).__name__, error)
        return None
    monitor.start()
    log.debug("system metrics of run %s every %g s: %s", journal.run_id, interval_s, ", ".join(type(m).__name__ for m in monitor.monitors))
    return monitor


def _monitor_class():
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    class JournalMonitor(SystemMetricsMonitor):
        """MLflow's monitor (its CPU, memory, disk, network and GPU monitors, its ``system/`` names), publishing
        through the journal: no call to the server from here, so an outage neither stops it nor loses samples."""

        def __init__(self, journal: Journal, interval_s: float, first_step: int) -> None:
            super().__init__(journal.run_id, sampling_interval=interval_s, samples_before_logging=1, tracking_uri=journal.uri)
            self.sampling_interval = interval_s  # the setting wins over $MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL
            self._journal = journal
            self._logging_step = first_step

        def monitor(self) -> None:
            # Wait, sample, log; when stopped, one last sample (also for a run shorter than the interval).
            import psutil

            psutil.cpu_percent()  # CPU use is measured between two calls: the first one returns a meaningless 0
            while True:
                stopping = self._shutdown_event.wait(self.sampling_interval)
                try:
                    self.collect_metrics()
                except Exception as error:  # noqa: BLE001 - a monitor that fails (a GPU gone) ends the sampling
                    log.warning("system metrics stopped: %s: %s", type(error).__name__, error)
                    return
                self.publish_metrics(self.aggregate_metrics())
                if stopping:
                    return

        def publish_metrics(self, metrics: dict[str, float]) -> None:
            prefix = self._metrics_prefix + (self.node_id + "/" if self.node_id else "")
            self._journal.log_metrics({prefix + key: value for key, value in metrics.items()}, step=self._logging_step)
            self._logging_step += 1
            for monitor in self.monitors:
                monitor.clear_metrics()

        def finish(self) -> None:
            if self._process is None:
                return
            self._shutdown_event.set()
            self._process.join(timeout=30)
            self._process = None

    return JournalMonitor


def _next_step(journal: Journal) -> int:
    """The step after the run's last system metric (a resumed run continues its curves), 0 for a new run."""
    import mlflow

    try:
        metrics = mlflow.MlflowClient(journal.uri).get_run(journal.run_id).data._metric_objs
    except Exception:  # noqa: BLE001 - the server is away: start at 0 (the samples keep their own timestamps)
        return 0
    steps = [metric.step for metric in metrics if metric.key.startswith("system/")]
    return max(steps) + 1 if steps else 0
