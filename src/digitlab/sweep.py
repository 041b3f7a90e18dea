"""Hydra callback: a sweep is one parent MLflow run with a nested run per job.

Registered in ``conf/config.yaml`` (``hydra.callbacks``), so every
``python -m pipeline.train -m ...`` gets it. The parent is created before the
first job and its id handed to the jobs through ``$DIGITLAB_PARENT_RUN_ID``,
where :func:`digitlab.tracking.start_run` nests the job's run under it. The id
travels with the callback object too, which Hydra pickles into the joblib
launcher's worker processes, and ``on_job_start`` sets it there.

The parent carries the tags of :mod:`digitlab.runs` (host, pid of the sweep's
process, a heartbeat refreshed as each job starts); a sweep closes the parents
that killed sweeps left RUNNING before it creates its own.
"""

from __future__ import annotations

import atexit
import logging
import os
import time
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from digitlab import runs, tracking
from digitlab.redact import redact

log = logging.getLogger(__name__)


class MlflowSweepCallback(Callback):
    def __init__(self) -> None:
        self.parent_run_id: str | None = None
        self.tracking_uri: str | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        import mlflow

        from digitlab.config import fail
        from digitlab.errors import DigitlabError
        from digitlab.settings import load_settings

        try:  # the sweep's common settings, checked before any job starts
            settings = load_settings(OmegaConf.masked_copy(config, [key for key in config if key != "hydra"]))
            self.tracking_uri = tracking.configure(settings.tracking)
        except DigitlabError as error:
            fail(error)
        client = mlflow.MlflowClient(self.tracking_uri)
        overrides = redact(" ".join(config.hydra.overrides.task))
        tags = {"sweep": "true", "hydra_overrides": overrides, "sweeper": str(config.hydra.sweeper._target_).rsplit(".", 1)[-1]}
        tags.update(runs.process_tags())
        commit = tracking.git_commit()
        if commit:
            tags["git_commit"] = commit
        experiment = tracking.experiment_id(settings.tracking, settings.dataset.name)
        # Parents of sweeps that were killed (no on_multirun_end, no atexit) are closed KILLED.
        runs.close_stale_runs(settings.tracking, experiment, "tags.sweep = 'true'")
        run = client.create_run(experiment, tags=tags, run_name=f"sweep {overrides}"[:250])
        self.parent_run_id = run.info.run_id
        client.log_param(run.info.run_id, "sweep_dir", str(config.hydra.sweep.dir))
        os.environ[tracking.PARENT_RUN_ENV] = self.parent_run_id
        # A job that raises skips on_multirun_end: don't leave the parent RUNNING.
        atexit.register(self._end_parent, "FAILED")
        log.info("sweep: MLflow parent run %s in %s", self.parent_run_id, self.tracking_uri)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if self.parent_run_id:
            os.environ[tracking.PARENT_RUN_ENV] = self.parent_run_id
            self._heartbeat()

    def _heartbeat(self) -> None:
        """The parent is alive while jobs start (a job's own run beats per evaluation)."""
        import mlflow
        from mlflow.exceptions import MlflowException

        try:
            mlflow.MlflowClient(self.tracking_uri).set_tag(self.parent_run_id, runs.HEARTBEAT_TAG, str(int(time.time())))
        except MlflowException as exc:  # a missed heartbeat must not fail the job
            log.warning("sweep: could not refresh the parent run's heartbeat: %s", exc)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        import mlflow

        if not self.parent_run_id:
            return
        client = mlflow.MlflowClient(self.tracking_uri)
        parent = client.get_run(self.parent_run_id)
        children = client.search_runs(
            [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{self.parent_run_id}'"
        )
        scored = [child for child in children if "best_val_accuracy" in child.data.metrics]
        client.log_metric(self.parent_run_id, "jobs", len(children))
        if scored:
            best = max(scored, key=lambda child: child.data.metrics["best_val_accuracy"])
            client.log_metric(self.parent_run_id, "best_val_accuracy", best.data.metrics["best_val_accuracy"])
            client.set_tag(self.parent_run_id, "best_run_id", best.info.run_id)
        self._end_parent("FINISHED")

    def _end_parent(self, status: str) -> None:
        import mlflow

        if not self.parent_run_id:
            return
        client = mlflow.MlflowClient(self.tracking_uri)
        if client.get_run(self.parent_run_id).info.status == "RUNNING":
            client.set_terminated(self.parent_run_id, status)
        os.environ.pop(tracking.PARENT_RUN_ENV, None)
        self.parent_run_id = None
