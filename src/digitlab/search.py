"""Hyperparameter search: digitlab's Hydra sweeper on Optuna's ask-and-tell API.

``python -m pipeline.train -m hparams_search=optuna`` runs a search whose Optuna
study lives in a database, named after the search (``hydra.sweeper.study_name``):

- ``n_trials`` is the study's total. Run the same command again after Ctrl-C (or
  a lost machine) and it continues the study: trials that never ended are
  retried with the same parameters, only the missing trials run, and their
  MLflow runs nest under the search's MLflow parent of the first time.
- Several processes, on one machine or many, started on the same study share it:
  each asks for the next trial under a lock of the study's database
  (:func:`digitlab.dblock.database_lock`), so together they run ``n_trials``.
- Trials are pruned: the training reports its validation accuracy after every
  evaluation (:class:`ReportToTrial`), and the study's pruner (median, Hyperband,
  ...) stops a hopeless trial early. Its MLflow run ends KILLED with the tag
  ``pruned=true``; its best model is kept like any other.
- The study's database: ``hydra.sweeper.storage``, else ``optuna.db`` beside a
  SQLite tracking store (or in the project), else, with ``tracking=team``, the
  database ``optuna`` of the team stack's PostgreSQL.

Why not ``hydra-optuna-sweeper``: its stable 1.3 pins Optuna < 3 (2.10, whose
RDB storage fails on SQLAlchemy 2); 1.4.0rc3 needs release candidates of both
hydra-core and omegaconf, counts ``n_trials`` per invocation (not per study),
leaves interrupted trials RUNNING for ever and has no pruning: a job never sees
its trial. See docs/sweeps.md.

Works with every launcher: the job finds its trial from ``sweep.trial`` (the
trial number the sweeper passes as an override) and the sweeper's settings in
Hydra's job config, so a Ray or SLURM worker reaches the study on its own.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import socket
import threading
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from digitlab import interrupts
from digitlab.errors import ConfigError, DigitlabError

log = logging.getLogger("digitlab.search")

SPACE_FORMS = (
    "choice(a, b, ...), a,b,c, interval(low, high), tag(log, interval(low, high)), tag(int, interval(low, high)) "
    "or range(start, stop[, step])"
)
SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "hyperband", "percentile", "threshold", "none")

# Trial user attributes (visible in optuna-dashboard).
HOST_ATTR, PID_ATTR = "digitlab.host", "digitlab.pid"
FAILED_ATTR = "digitlab.failed"  # the job failed: the trial counts, it is not retried
RETRY_OF_ATTR = "digitlab.retry_of"  # an interrupted trial's number, on the trial that retries it
PRUNED_ATTR = "digitlab.pruned_at"  # the evaluation at which the training stopped

HEARTBEAT_S, GRACE_S = 30, 120  # a trial whose process missed its heartbeats this long is failed and retried


# --- the search space ------------------------------------------------------------------------


@dataclasses.dataclass
class Space:
    """What a study samples (Optuna distributions) and what every trial gets unchanged."""

    distributions: dict[str, Any]
    fixed: list[str]
    # Choices that are not plain scalars (lists, dicts) are sampled as their override text.
    encoded: set[str] = dataclasses.field(default_factory=set)

    def overrides(self, params: Mapping[str, Any]) -> list[str]:
        """The Hydra overrides of one trial's sampled ``params``."""
        return [*self.fixed, *(f"{name}={value if name in self.encoded else override_value(value)}" for name, value in params.items())]


def override_value(value: Any) -> str:
    """A sampled value as Hydra override text."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str) and not re.fullmatch(r"[\w.\-/:+]+", value):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return str(value)


def parse_space(params: Mapping[str, Any] | None, arguments: Sequence[str]) -> Space:
    """The search space of ``hydra.sweeper.params`` and of the command line's sweep overrides (``a=1,2``)."""
    import optuna.distributions as dist
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    space = Space({}, [])
    items = [(f"hydra.sweeper.params.{name}", f"{name}={value}") for name, value in (params or {}).items()]
    items += [(argument.split("=", 1)[0], argument) for argument in arguments]
    for setting, text in items:
        try:
            (override,) = parser.parse_overrides([text])
        except HydraException as exc:
            raise ConfigError(setting, text.split("=", 1)[-1], SPACE_FORMS, str(exc).splitlines()[0]) from None
        name = override.get_key_element()
        if not override.is_sweep_override():
            space.fixed.append(text)
            continue
        value = override.value()
        if isinstance(value, IntervalSweep):
            low, high, log_scale = value.start, value.end, "log" in value.tags
            if not low < high or (log_scale and low <= 0):
                raise ConfigError(setting, text.split("=", 1)[1], "interval(low, high) with low < high (and 0 < low on a log scale)")
            if "int" in value.tags:
                space.distributions[name] = dist.IntDistribution(int(low), int(high), log=log_scale)
            else:
                space.distributions[name] = dist.FloatDistribution(float(low), float(high), log=log_scale)
        elif isinstance(value, RangeSweep):
            values = list(_range_values(value))
            if not values:
                raise ConfigError(setting, text.split("=", 1)[1], "a range with at least one value")
            space.distributions[name] = dist.CategoricalDistribution(values)
        elif isinstance(value, ChoiceSweep):
            choices = list(value.list)
            if not all(choice is None or isinstance(choice, (bool, int, float, str)) for choice in choices):
                choices = [_override_text(choice) for choice in choices]
                space.encoded.add(name)
            space.distributions[name] = dist.CategoricalDistribution(choices)
        else:  # glob() and the like
            raise ConfigError(setting, text.split("=", 1)[1], SPACE_FORMS)
    if not space.distributions:
        raise ConfigError("hydra.sweeper.params", "{}", "at least one parameter to search (" + SPACE_FORMS + ")")
    return space


def _range_values(sweep) -> Iterable[Any]:
    value, step = sweep.start, sweep.step
    if step == 0:
        return
    while (value < sweep.stop) if step > 0 else (value > sweep.stop):
        yield value
        value += step


def _override_text(value: Any) -> str:
    """A list or dict choice as override text, e.g. ``[64, 32]``."""
    if isinstance(value, list):
        return "[" + ",".join(_override_text(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{key}:{_override_text(item)}" for key, item in value.items()) + "}"
    return override_value(value)


# --- where the study lives -----------------------------------------------------------------


def default_storage(tracking_uri: str) -> str:
    """The study's database when ``hydra.sweeper.storage`` is null (see the module's docstring)."""
    from digitlab.config import home_root
    from digitlab.dblock import sqlite_file
    from digitlab.stack.client import stack_study_storage

    database = sqlite_file(tracking_uri)
    if database is not None:
        # Beside mlflow.db, not in it: Optuna and MLflow both keep their schema version in `alembic_version`.
        return f"sqlite:///{database.parent / 'optuna.db'}"
    team = stack_study_storage(tracking_uri)
    if team is not None:
        return team
    return f"sqlite:///{home_root() / 'optuna.db'}"


def open_storage(url: str):
    """Optuna's RDB storage at ``url``, with heartbeats (a trial whose process died is noticed and retried)."""
    import optuna

    engine: dict[str, Any] = {}
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
        engine = {"connect_args": {"timeout": 60}}  # several processes share the file
    try:
        with quiet_heartbeats():
            return optuna.storages.RDBStorage(url, engine_kwargs=engine, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S)
    except Exception as exc:  # noqa: BLE001 - any driver's connection error: one line
        from digitlab.redact import redact

        raise DigitlabError(f"hydra.sweeper.storage: cannot open the study database {redact(url)}: {str(exc).splitlines()[0]}") from None


@contextlib.contextmanager
def quiet_heartbeats():
    """Optuna's heartbeats, used with ask-and-tell: its warnings say nothing a user can act on.

    ("... is an experimental feature" since Optuna 2.9; "Heartbeat of storage is supposed to be
    used with Study.optimize": here the sweeper beats for the trials its launcher runs.)
    """
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
        yield


def make_sampler(name: str, seed: int | None, space: Space):
    import optuna

    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    grid = {}
    for key, distribution in space.distributions.items():
        if not isinstance(distribution, optuna.distributions.CategoricalDistribution):
            raise ConfigError(f"hydra.sweeper.params.{key}", "an interval", "choice(...), a,b or range(...) with sampler=grid")
        grid[key] = list(distribution.choices)
    return optuna.samplers.GridSampler(grid, seed=seed)


def make_pruner(options: Mapping[str, Any] | None):
    """An Optuna pruner from ``{name: median|hyperband|percentile|threshold|none, <its options>}``."""
    import optuna

    options = dict(options or {})
    name = options.pop("name", "median")
    classes = {
        "median": optuna.pruners.MedianPruner, "hyperband": optuna.pruners.HyperbandPruner,
        "percentile": optuna.pruners.PercentilePruner, "threshold": optuna.pruners.ThresholdPruner,
        "none": optuna.pruners.NopPruner,
    }  # fmt: skip
    if name not in classes:
        raise ConfigError("hydra.sweeper.pruner.name", name, ", ".join(PRUNERS))
    import inspect

    accepted = inspect.signature(classes[name]).parameters
    ignored = sorted(key for key in options if key not in accepted)
    if ignored:  # the defaults are the median pruner's: another pruner goes without them
        log.debug("the %s pruner takes no %s", name, ", ".join(ignored))
    try:
        return classes[name](**{key: value for key, value in options.items() if key in accepted})
    except (TypeError, ValueError) as exc:
        raise ConfigError("hydra.sweeper.pruner", options, f"the options of Optuna's {classes[name].__name__}", str(exc)) from None


# --- the sweeper ---------------------------------------------------------------------------


@dataclasses.dataclass
class SearchOptions:
    """``hydra.sweeper`` (conf/hydra/sweeper/digitlab_optuna.yaml)."""

    study_name: str
    storage: str | None = None
    direction: str = "maximize"
    n_trials: int = 20
    n_jobs: int = 1
    sampler: str = "tpe"
    seed: int | None = None
    pruner: Mapping[str, Any] | None = None
    params: Mapping[str, Any] | None = None

    def check(self) -> None:
        if not self.study_name or not isinstance(self.study_name, str):
            raise ConfigError("hydra.sweeper.study_name", self.study_name, "a name for the study")
        if self.direction not in ("maximize", "minimize"):
            raise ConfigError("hydra.sweeper.direction", self.direction, "maximize or minimize")
        for key in ("n_trials", "n_jobs"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"hydra.sweeper.{key}", value, "a whole number >= 1")
        if self.storage and urlsplit(self.storage).password:
            raise ConfigError(
                "hydra.sweeper.storage", "a URL with a password",
                "a URL without one (Hydra writes the sweeper's settings to multirun.yaml): put the password in ~/.pgpass or $PGPASSFILE",
            )  # fmt: skip
        if self.sampler not in SAMPLERS:
            raise ConfigError("hydra.sweeper.sampler", self.sampler, ", ".join(SAMPLERS))


class Search:
    """One process's part of a study: ask trials under the study's lock, launch them, tell their outcome."""

    def __init__(self, options: SearchOptions, storage_url: str, space: Space, launcher, sweep_dir: Path) -> None:
        import optuna

        self.options, self.storage_url, self.space, self.launcher, self.sweep_dir = options, storage_url, space, launcher, sweep_dir
        self.storage = open_storage(storage_url)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        try:
            self.study = optuna.create_study(
                study_name=options.study_name, storage=self.storage, direction=options.direction,
                pruner=make_pruner(options.pruner), load_if_exists=True,
            )  # fmt: skip
        except ValueError as exc:  # e.g. the study exists with another direction
            raise ConfigError("hydra.sweeper.study_name", options.study_name, "a study of the same direction", str(exc)) from None
        if self.study.direction.name.lower() != options.direction:
            raise ConfigError(
                "hydra.sweeper.direction", options.direction,
                f"{self.study.direction.name.lower()}, the direction of the existing study {options.study_name}",
            )  # fmt: skip
        from digitlab.dblock import advisory_key, holds_a_lock

        self.lock_key = advisory_key(f"optuna-study:{options.study_name}")
        self.locked = holds_a_lock(storage_url)  # ask() and recover() exclude every other process
        self.in_flight: dict[int, Any] = {}  # trial number -> Trial
        self._stop = threading.Event()
        self.ran = 0

    # The study's state, under its lock.

    def _lock(self):
        from digitlab.dblock import database_lock

        return database_lock(self.storage_url, self.lock_key)

    def counted(self) -> int:
        """Trials that count towards ``n_trials``: ended (complete, pruned, or failed by their job) or running."""
        from optuna.trial import TrialState

        trials = self.study.get_trials(deepcopy=False)
        return sum(
            1 for t in trials
            if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
            or (t.state == TrialState.FAIL and FAILED_ATTR in t.user_attrs)
        )  # fmt: skip

    def recover(self) -> list[int]:
        """Fail the trials whose process is gone and retry each once with its parameters.

        Gone: on this host, its pid is dead; on any host, its heartbeats stopped; with a storage that
        :func:`~digitlab.dblock.database_lock` locks, a RUNNING trial that no process marked as its own
        (a process killed between creating and marking a trial, both done under the lock held here; a
        trial left RUNNING by Optuna's own API too). One that no process of ours ran is not retried.
        """
        import optuna
        from optuna.trial import TrialState

        from digitlab.runs import pid_alive

        host = socket.gethostname()
        for trial in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            pid = trial.user_attrs.get(PID_ATTR)
            started = trial.datetime_start.timestamp() if trial.datetime_start else None
            # No owner: its process was killed between creating and marking it, which it does under the lock we hold.
            orphan = pid is None and self.locked
            if orphan or trial.user_attrs.get(HOST_ATTR) == host and isinstance(pid, int) and not pid_alive(pid, started):
                self.storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        optuna.storages.fail_stale_trials(self.study)
        trials = self.study.get_trials(deepcopy=False)
        retried = {t.user_attrs.get(RETRY_OF_ATTR) for t in trials}
        again = []
        for trial in trials:
            interrupted = trial.state == TrialState.FAIL and FAILED_ATTR not in trial.user_attrs and PID_ATTR in trial.user_attrs
            if interrupted and trial.number not in retried:
                self.study.enqueue_trial(trial.params, user_attrs={RETRY_OF_ATTR: trial.number})
                again.append(trial.number)
        if again:
            log.info("study %s: retrying interrupted trials %s with their parameters", self.options.study_name, again)
        return again

    def ask(self) -> list:
        """Up to ``n_jobs`` new trials, so that the study holds no more than ``n_trials`` (other processes included)."""
        with self._lock(), quiet_heartbeats():
            self.recover()
            room = min(self.options.n_jobs, self.options.n_trials - self.counted())
            trials = []
            for _ in range(max(room, 0)):
                # A sampler seeded per trial: processes sharing a study never draw the same "random" start.
                self.study.sampler = make_sampler(self.options.sampler, self._seed(), self.space)
                # Created, marked as this process's and in flight, or not at all: a Ctrl-C in between left a
                # trial RUNNING with no owner, counted towards n_trials forever.
                with interrupts.held():
                    trial = self.study.ask(fixed_distributions=self.space.distributions)
                    trial.set_user_attr(HOST_ATTR, socket.gethostname())
                    trial.set_user_attr(PID_ATTR, os.getpid())
                    self.in_flight[trial.number] = trial
                trials.append(trial)
        return trials

    def _seed(self) -> int | None:
        if self.options.seed is None:
            return None
        return int(self.options.seed) + len(self.study.get_trials(deepcopy=False))

    # Running.

    def run(self) -> None:
        from hydra.core.utils import JobStatus

        with self._lock(), quiet_heartbeats():
            # Trials a Ctrl-C or a lost process left RUNNING are failed (and retried) first, so they are not counted.
            self.recover()
            done = self.counted()
        log.info(
            "study %s in %s: %d of %d trials already counted", self.options.study_name, _redacted(self.storage_url), done, self.options.n_trials,
        )  # fmt: skip
        beat = threading.Thread(target=self._heartbeats, name="optuna-heartbeat", daemon=True)
        beat.start()
        try:
            while trials := self.ask():
                batch = [[*self.space.overrides(trial.params), f"sweep.trial={trial.number}"] for trial in trials]
                for trial, overrides in zip(trials, batch, strict=True):
                    log.info("trial %d of study %s: %s", trial.number, self.options.study_name, " ".join(overrides[len(self.space.fixed) :]))
                returns = self.launcher.launch(batch, initial_job_idx=self._job_number(trials))
                interrupts.raise_if_stopped()  # a stop a job failed on: its trial stays in flight, retried next time
                self.ran += len(batch)
                for trial, ret in zip(trials, returns, strict=True):
                    self._tell(trial, ret.status == JobStatus.COMPLETED, ret._return_value)
                    del self.in_flight[trial.number]
        finally:
            self._stop.set()
            # Trials still in flight (Ctrl-C, a lost cluster): they stay unfinished and are
            # failed and retried by the next run of the same command (recover()).
            if self.in_flight:
                log.warning(
                    "study %s: trials %s interrupted; run the same command again to continue the study",
                    self.options.study_name, sorted(self.in_flight),
                )  # fmt: skip
                self._fail_interrupted()
        self.write_results()

    def _job_number(self, trials: list) -> int:
        """The first job number of a batch: its trials' own numbers when they follow each other (asked together
        under the study's lock), so that each trial's folder, multirun/<time>/<trial number>, is its own even when
        two processes sharing the study start in the same second (the same multirun/<time>/)."""
        numbers = [trial.number for trial in trials]
        return numbers[0] if numbers == list(range(numbers[0], numbers[0] + len(numbers))) else self.ran

    def _tell(self, trial, completed: bool, value: Any) -> None:
        from optuna.trial import TrialState

        attrs = self.storage.get_trial(trial._trial_id).user_attrs
        if not completed:
            trial.set_user_attr(FAILED_ATTR, str(value).splitlines()[0][:500] if str(value) else type(value).__name__)
            self.study.tell(trial, state=TrialState.FAIL)
            log.warning("trial %d failed: %s", trial.number, str(value).splitlines()[0] if str(value) else type(value).__name__)
        elif PRUNED_ATTR in attrs:
            self.study.tell(trial, state=TrialState.PRUNED)
            log.info("trial %d pruned at evaluation %s", trial.number, attrs[PRUNED_ATTR])
        else:
            self.study.tell(trial, float(value))
            log.info("trial %d: %s", trial.number, value)

    def _fail_interrupted(self) -> None:
        from optuna.trial import TrialState

        for trial in self.in_flight.values():
            try:
                if self.storage.get_trial(trial._trial_id).state == TrialState.RUNNING:
                    self.storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
            except Exception:  # noqa: BLE001 - the database may be what failed: the next run recovers by pid/heartbeat
                return

    def _heartbeats(self) -> None:
        while not self._stop.wait(HEARTBEAT_S / 2):
            for trial in list(self.in_flight.values()):
                try:
                    self.storage.record_heartbeat(trial._trial_id)
                except Exception as exc:  # noqa: BLE001 - a missed beat is retried; the job goes on
                    log.debug("heartbeat of trial %d failed: %s", trial.number, exc)

    def write_results(self) -> None:
        """``optimization_results.yaml`` in the sweep folder: the study's best trial so far."""
        import yaml
        from optuna.trial import TrialState

        complete = self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        states: dict[str, int] = {}
        for trial in self.study.get_trials(deepcopy=False):
            states[trial.state.name.lower()] = states.get(trial.state.name.lower(), 0) + 1
        results: dict[str, Any] = {"name": self.options.study_name, "storage": _redacted(self.storage_url), "trials": states}
        if complete:
            best = self.study.best_trial
            results.update(best_trial=best.number, best_value=best.value, best_params=best.params)
            log.info("study %s: best trial %d, value %s, %s", self.options.study_name, best.number, best.value, best.params)
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        (self.sweep_dir / "optimization_results.yaml").write_text(yaml.safe_dump(results, sort_keys=False))


def _redacted(url: str) -> str:
    from digitlab.redact import redact

    return redact(url)


# --- the job's side: report to the trial, stop when pruned ---------------------------------------


def job_trial(settings):
    """The running Optuna trial of this sweep job (``sweep.trial``), or None outside an Optuna search."""
    number = settings.sweep.trial
    if number is None:
        return None
    import optuna
    from hydra.core.hydra_config import HydraConfig

    from digitlab import tracking

    sweeper = HydraConfig.get().sweeper if HydraConfig.initialized() else {}
    if "study_name" not in sweeper:
        raise ConfigError("sweep.trial", number, "null outside a search of hydra/sweeper=digitlab_optuna (the sweeper sets it)")
    url = sweeper.get("storage") or default_storage(tracking.client_uri(tracking.resolve_uri(settings.tracking)))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(url)
    study = optuna.load_study(study_name=sweeper.study_name, storage=storage, pruner=make_pruner(sweeper.get("pruner")))
    trial_id = storage.get_trial_id_from_study_id_trial_number(study._study_id, int(number))
    return optuna.trial.Trial(study, trial_id)


def trial_callbacks(settings) -> list:
    """The Keras callbacks of a search's trial (none outside a search)."""
    trial = job_trial(settings)
    return [] if trial is None else [_report_to_trial(trial)]


def _report_to_trial(trial):
    import keras

    from digitlab import tracking

    class ReportToTrial(keras.callbacks.Callback):
        """After each evaluation: report ``val_accuracy`` to the trial; stop the training when the pruner says so."""

        def on_train_begin(self, logs=None):
            tracking.active_run().journal.set_tags({"optuna.study": trial.study.study_name, "optuna.trial": str(trial.number)})

        def on_epoch_end(self, epoch, logs=None):
            value = float((logs or {})["val_accuracy"])
            trial.report(value, step=epoch + 1)
            if trial.should_prune():
                log.info("trial %d pruned at evaluation %d (val_accuracy %.4f)", trial.number, epoch + 1, value)
                trial.set_user_attr(PRUNED_ATTR, epoch + 1)
                run = tracking.active_run()
                run.journal.set_tags({"pruned": "true", "optuna.pruned_at": str(epoch + 1)})
                run.end_status = "KILLED"
                self.model.stop_training = True

    return ReportToTrial()
