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

from digitlab import interrupts, runs, tracking
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
            preflight(config.hydra.launcher)
        except DigitlabError as error:
            fail(error)
        except TypeError as error:  # an unknown hydra.launcher key
            fail(DigitlabError(f"hydra.launcher: {error}"))
        client = mlflow.MlflowClient(self.tracking_uri)
        overrides = redact(" ".join(config.hydra.overrides.task))
        tags = {"sweep": "true", "hydra_overrides": overrides, "sweeper": str(config.hydra.sweeper._target_).rsplit(".", 1)[-1]}
        study = config.hydra.sweeper.get("study_name")
        if study:
            tags[STUDY_TAG] = str(study)
        tags.update(runs.process_tags())
        commit = tracking.git_commit()
        if commit:
            tags["git_commit"] = commit
        experiment = tracking.experiment_id(settings.tracking, settings.dataset.name)
        # Parents of sweeps that were killed (no on_multirun_end, no atexit) are closed KILLED.
        runs.close_stale_runs(settings.tracking, experiment, "tags.sweep = 'true'")
        previous = earlier_parent(client, experiment, tags) if settings.sweep.skip_finished else None
        folder = str(config.hydra.sweep.dir)
        # The parent (re)opened and its end at exit registered, or neither: a Ctrl-C in between left it RUNNING.
        with interrupts.held():
            if previous is not None:  # the same sweep (or study) again: continue under its parent
                self.parent_run_id = previous.info.run_id
                folders = previous.data.tags.get(SWEEP_DIRS_TAG, "").split(", ")
                reopen(client, previous, {**tags, SWEEP_DIRS_TAG: ", ".join([*filter(None, folders), folder])[-5000:]})
                log.info("sweep: continuing MLflow parent run %s (started %s)", self.parent_run_id, _when(previous.info.start_time))
            else:
                run = client.create_run(experiment, tags={**tags, SWEEP_DIRS_TAG: folder}, run_name=f"sweep {study or overrides}"[:250])
                self.parent_run_id = run.info.run_id
            os.environ[tracking.PARENT_RUN_ENV] = self.parent_run_id
            # A job that raises skips on_multirun_end: don't leave the parent RUNNING.
            atexit.register(self._end_parent, "FAILED")
        log.info("sweep: MLflow parent run %s in %s", self.parent_run_id, self.tracking_uri)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:  # also in a launcher's worker process
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
        scored = [child for child in scored if child.info.status == "FINISHED"] or scored
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


STUDY_TAG = "optuna.study"
SWEEP_DIRS_TAG = "sweep_dirs"  # the sweep's folders (hydra.sweep.dir), one more each time it is run again


def preflight(launcher: DictConfig) -> None:
    """The launcher's own checks (its settings, a cluster that answers), when it has them: before the parent run exists."""
    from hydra.utils import get_class

    check = getattr(get_class(str(launcher._target_)), "preflight", None)
    if check is not None:
        check(launcher)


def earlier_parent(client, experiment: str, tags: dict[str, str]):
    """The parent run of the same sweep run before: the latest with the same study, else an unfinished one with the same overrides."""
    def quoted(value: str) -> str:
        return "'" + value.replace("'", "\\'") + "'"

    if STUDY_TAG in tags:  # an Optuna study: all its trials under one parent, whatever became of the last process
        found = client.search_runs([experiment], f"tags.sweep = 'true' and tags.`{STUDY_TAG}` = {quoted(tags[STUDY_TAG])}",
                                   order_by=["attributes.start_time DESC"], max_results=1)  # fmt: skip
    else:  # a grid sweep interrupted (a finished one run again is a new sweep)
        found = [
            run for run in client.search_runs(
                [experiment], f"tags.sweep = 'true' and tags.hydra_overrides = {quoted(tags['hydra_overrides'])}",
                order_by=["attributes.start_time DESC"], max_results=5,
            )
            if run.info.status != "FINISHED" and STUDY_TAG not in run.data.tags
        ][:1]  # fmt: skip
    return found[0] if found else None


def reopen(client, run, tags: dict[str, str]) -> None:
    """Make an earlier parent this process's own again: RUNNING, with this process's tags."""
    if runs.KILLED_TAG in run.data.tags:
        client.delete_tag(run.info.run_id, runs.KILLED_TAG)
    for key, value in tags.items():
        client.set_tag(run.info.run_id, key, value)
    if run.info.status != "RUNNING":
        client.update_run(run.info.run_id, status="RUNNING")


def _when(milliseconds: int | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime((milliseconds or 0) / 1000))


def finished_job(settings) -> float | None:
    """A sweep job that already FINISHED under the sweep's parent with the same settings: its best validation accuracy.

    None (run the job) outside a sweep, with ``sweep.skip_finished=false``, for an
    Optuna trial (the study keeps those), or when no such run exists.
    """
    import mlflow

    from digitlab.config import settings_fingerprint

    parent = os.environ.get(tracking.PARENT_RUN_ENV)
    if not parent or not settings.sweep.skip_finished or settings.sweep.trial is not None:
        return None
    client = mlflow.MlflowClient(tracking.configure(settings.tracking))
    experiment = tracking.experiment_id(settings.tracking, settings.dataset.name)
    done = client.search_runs(
        [experiment],
        f"tags.mlflow.parentRunId = '{parent}' and tags.`{tracking.SETTINGS_TAG}` = '{settings_fingerprint(settings)}' "
        "and attributes.status = 'FINISHED'",
        max_results=1,
    )
    if not done or "best_val_accuracy" not in done[0].data.metrics:
        return None
    log.info("sweep: this job FINISHED before in MLflow run %s: skipped (sweep.skip_finished=false runs it again)", done[0].info.run_id)
    return done[0].data.metrics["best_val_accuracy"]
