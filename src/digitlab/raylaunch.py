"""A sweep's jobs as Ray tasks on a Ray cluster (``hydra/launcher=ray``, conf/hydra/launcher/ray.yaml).

The sweep's process (the Ray *driver*) connects to a cluster started with ``ray start``
(``hydra.launcher.address``, default ``$RAY_ADDRESS``), or starts a private one on this
machine when no address is given, and submits each job as one task that reserves
``num_cpus``/``num_gpus`` of a node. A job runs on its node exactly as under the basic
launcher: in the project's folder (the same path on every node: a shared filesystem),
with the sweep's MLflow parent run, under the job's own nested run, which is tagged with
the Ray node that ran it (``ray.node_id``).

Why not ``hydra-ray-launcher`` (1.2.2): it pins ``cloudpickle<3``, which the joblib
launcher's ``joblib>=1.6`` refuses, and it neither moves a job into the project folder
nor hands it the sweep's environment; what is left of it is the few lines below.

What can go wrong, and what a user sees:

- no cluster at the address: one line within ``connect_timeout_s``, exit status 2,
  before any job or MLflow run starts;
- a job's node dies: that job ends FAILED (one log line), the others go on;
- the head node dies (or the network to it): after ``lost_after_s`` seconds without
  it, one line saying how many jobs finished, exit status 1; the sweep's parent run
  ends FAILED. Start the cluster again and run the same command: the jobs that
  FINISHED are skipped (``sweep.skip_finished``), the others resume from their
  checkpoints.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import socket
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from digitlab.errors import ConfigError, DigitlabError

log = logging.getLogger(__name__)

# What a job takes from the sweep's environment, by name prefix: the tracking server's
# login, S3 credentials, PostgreSQL's password file, digitlab's and TensorFlow's settings.
# They travel in memory with the task (Ray writes task arguments nowhere).
ENV_PREFIXES = ("MLFLOW_", "AWS_", "DIGITLAB_", "PGPASSFILE", "PGPASSWORD", "TF_CPP_MIN_LOG_LEVEL")
NODE_TAG = "ray.node_id"
NODE_ENV = "DIGITLAB_RAY_NODE_ID"  # set while a job runs on a Ray node; digitlab.runs.process_tags tags the run with it


class ClusterUnreachable(DigitlabError):
    """No Ray cluster answers at the address given."""


class ClusterLost(DigitlabError):
    """The Ray cluster's head stopped answering during a sweep."""


@dataclass
class RayOptions:
    """``hydra.launcher`` for ``hydra/launcher=ray`` (every key is documented in conf/hydra/launcher/ray.yaml)."""

    address: str | None = None
    num_cpus: float = 1
    num_gpus: float = 0
    memory_gb: float | None = None
    connect_timeout_s: float = 10
    lost_after_s: float = 30
    env_prefixes: list[str] = field(default_factory=lambda: list(ENV_PREFIXES))

    def check(self) -> None:
        for name in ("num_cpus", "num_gpus", "memory_gb", "connect_timeout_s", "lost_after_s"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or value < 0):
                raise ConfigError(f"hydra.launcher.{name}", value, "a number >= 0")
        if self.num_cpus == 0 and not self.num_gpus:
            raise ConfigError("hydra.launcher.num_cpus", 0, "more than 0 CPUs per job (or num_gpus > 0)")
        if self.address is not None and self.address not in ("auto", "local") and ":" not in str(self.address):
            raise ConfigError("hydra.launcher.address", self.address, "host:port of a Ray head (ray start --head --port ...), auto, local or null")


def head_address(address: str) -> tuple[str, int] | None:
    """``(host, port)`` of the head's GCS for ``host:port`` or ``ray://host:port`` addresses, else None."""
    target = address.removeprefix("ray://").removeprefix("http://")
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def answers(host: str, port: int, timeout: float) -> bool:
    """Whether something accepts TCP connections at ``host:port`` within ``timeout`` seconds."""
    try:
        with socket.create_connection((host, port), timeout=max(timeout, 0.1)):
            return True
    except OSError:
        return False


def cluster_address(options: RayOptions) -> str | None:
    """The address to connect to: the setting, else ``$RAY_ADDRESS``; None: a private cluster."""
    address = options.address or os.environ.get("RAY_ADDRESS") or None
    return None if address == "local" else address


def wait_for_head(options: RayOptions) -> tuple[str, int] | None:
    """The head's ``(host, port)`` once it answers; :class:`ClusterUnreachable` when it doesn't within ``connect_timeout_s``.

    Checked before the sweep's MLflow parent run is created (:meth:`digitlab.sweep.MlflowSweepCallback.on_multirun_start`)
    and again when the jobs are launched.
    """
    address = cluster_address(options)
    head = head_address(address) if address else None
    if head is None:
        return None
    deadline = time.monotonic() + options.connect_timeout_s
    while not answers(*head, timeout=min(2.0, options.connect_timeout_s)):
        if time.monotonic() >= deadline:
            raise ClusterUnreachable(
                f"hydra.launcher.address={address}: no Ray cluster answers there within {options.connect_timeout_s:g} s "
                f"(start one: ray start --head --port {head[1]}; or leave address null for a private one on this machine)"
            )
        time.sleep(0.5)
    return head


def connect(options: RayOptions) -> tuple[str, tuple[str, int] | None]:
    """Connect this process to the cluster (or start a private one); what to say and the head to watch."""
    address = cluster_address(options)
    head = wait_for_head(options)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage report to a server outside
    if address is None and not os.environ.get("RAY_AUTH_MODE"):
        # A private cluster, with Ray's token authentication (what ray.init does by default) and a token
        # that lives in this process's environment and its cluster's only: ray.init would write one to
        # ~/.ray/auth_token. Set before Ray is imported, which reads its settings once.
        os.environ["RAY_AUTH_MODE"] = "token"
        os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))
    import ray

    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": True}
        if address is None:
            kwargs["include_dashboard"] = False
        try:
            ray.init(address=address, **kwargs)
        except (ConnectionError, RuntimeError) as error:  # "Could not find any running Ray instance" (auto)
            raise ClusterUnreachable(f"hydra.launcher.address={address}: {str(error).splitlines()[0]}") from None
    nodes = [node for node in ray.nodes() if node.get("Alive")]
    cpus = sum(node.get("Resources", {}).get("CPU", 0) for node in nodes)
    if head is None:
        head = head_address(ray.get_runtime_context().gcs_address)
        where = f"a private Ray cluster (head {head[0]}:{head[1]})" if address is None and head else f"the Ray cluster at {address}"
    else:
        where = f"Ray cluster at {head[0]}:{head[1]}"
    return f"{where}: {len(nodes)} node(s), {cpus:g} CPUs", head


def abandon(message: str, status: int = 1) -> NoReturn:
    """Print ``message`` and leave a cluster whose head is gone: exit handlers run (the sweep's parent
    run ends FAILED), then the process ends at once.

    Not a normal interpreter exit: Ray's own exit handler (``ray.shutdown``) would wait for the dead
    head, and its core worker's teardown crashes the process (SIGSEGV) without one.
    """
    import atexit

    import ray

    print(message, file=sys.stderr, flush=True)
    atexit.unregister(ray.shutdown)
    atexit._run_exitfuncs()  # noqa: SLF001 - the sweep's parent run, the journals: what a normal exit would do
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def job_environment(prefixes: Sequence[str]) -> dict[str, str]:
    """The sweep's environment variables a job needs (see :data:`ENV_PREFIXES`)."""
    return {key: value for key, value in os.environ.items() if key.startswith(tuple(prefixes))}


@contextlib.contextmanager
def inside(folder: str, env: dict[str, str]) -> Iterator[None]:
    """Run in ``folder`` with ``env`` added (a Ray worker runs task after task: put both back after)."""
    if not Path(folder).is_dir():
        raise DigitlabError(f"this Ray node ({socket.gethostname()}) has no folder {folder}: the nodes of a Ray cluster need the project at the same path (a shared filesystem)")
    before_dir, before_env = os.getcwd(), {key: os.environ.get(key) for key in env}
    os.chdir(folder)
    os.environ.update(env)
    try:
        yield
    finally:
        os.chdir(before_dir)
        for key, value in before_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def run_job_here(hydra_context, sweep_config, task_function, singleton_state, folder: str, env: dict[str, str]):
    """The body of a job's Ray task: Hydra's ``run_job`` in the project folder, with the sweep's settings.

    A job that exits (``digitlab: error: ...``, exit status 2) ends FAILED instead of taking its
    Ray worker down with it.
    """
    import ray
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.singleton import Singleton
    from hydra.core.utils import run_job, setup_globals

    from digitlab.config import setup_logging

    with inside(folder, {**env, NODE_ENV: ray.get_runtime_context().get_node_id()}):
        setup_logging()  # passwords redacted from every log line (Ray also writes them to its log files)
        setup_globals()
        Singleton.set_state(singleton_state)
        HydraConfig.instance().set_config(sweep_config)
        try:
            return run_job(hydra_context=hydra_context, task_function=task_function, config=sweep_config,
                           job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")  # fmt: skip
        except SystemExit as exit_:  # the job printed its one-line error already
            error = DigitlabError(f"job {sweep_config.hydra.job.num} exited with status {exit_.code}")
            return failed_job(sweep_config.hydra.overrides.task, sweep_config, error)


def failed_job(overrides: Sequence[str], config, error: BaseException):
    """A job that ended without a return value, as Hydra's sweepers expect it: FAILED, the error its value."""
    from hydra.core.utils import JobReturn, JobStatus

    job = JobReturn(overrides=list(overrides), cfg=config, hydra_cfg=None)
    job.status = JobStatus.FAILED
    job._return_value = error
    return job


class Launch:
    """One batch of a sweep's jobs on the cluster: submit them all, then collect their returns."""

    def __init__(self, options: RayOptions, hydra_context, task_function, config) -> None:
        self.options, self.hydra_context, self.task_function, self.config = options, hydra_context, task_function, config

    def run(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list:
        from hydra.core.singleton import Singleton
        from hydra.core.utils import filter_overrides, setup_globals
        from omegaconf import open_dict

        setup_globals()
        what, head = connect(self.options)  # first: it sets Ray's environment before Ray is imported
        import ray

        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        log.info("Ray: %d job(s) on %s", len(job_overrides), what)
        # TensorFlow's C++ notices off from the worker's start (it may import TensorFlow before the job runs).
        quiet = {"env_vars": {"TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}}
        resources: dict[str, Any] = {"num_cpus": self.options.num_cpus, "num_gpus": self.options.num_gpus, "max_retries": 0, "runtime_env": quiet}
        if self.options.memory_gb:
            resources["memory"] = int(self.options.memory_gb * 2**30)
        task = ray.remote(run_job_here).options(**resources)
        env, folder, state = job_environment(self.options.env_prefixes), os.getcwd(), Singleton.get_state()
        pending: dict[Any, tuple[int, Sequence[str], Any]] = {}
        for offset, overrides in enumerate(job_overrides):
            number = initial_job_idx + offset
            log.info("\t#%d : %s", number, " ".join(filter_overrides(overrides)))
            sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(sweep_config):
                sweep_config.hydra.job.id = f"ray_{number}"
                sweep_config.hydra.job.num = number
            ref = task.remote(self.hydra_context, sweep_config, self.task_function, state, folder, env)
            pending[ref] = (offset, overrides, sweep_config)
        return self.collect(pending, len(job_overrides), head)

    def collect(self, pending: dict, count: int, head: tuple[str, int] | None) -> list:
        import ray
        from ray.exceptions import RayError

        results: list = [None] * count
        lost_since: float | None = None
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
            for ref in ready:
                offset, overrides, sweep_config = pending.pop(ref)
                try:
                    results[offset] = ray.get(ref)
                except RayError as error:  # the job's node or worker died: that job failed, the sweep goes on
                    reason = str(error).strip().splitlines()[0].split(". ")[0]
                    log.error("Ray: job %s failed: %s: %s", sweep_config.hydra.job.num, type(error).__name__, reason)
                    results[offset] = failed_job(overrides, sweep_config, error)
            if ready or head is None:
                continue
            if answers(*head, timeout=1.0):
                lost_since = None
            elif lost_since is None:
                lost_since = time.monotonic()
                log.warning("Ray: the cluster's head at %s:%d does not answer; waiting up to %g s for it", *head, self.options.lost_after_s)
            elif time.monotonic() - lost_since >= self.options.lost_after_s:
                done = sum(1 for result in results if result is not None)
                raise ClusterLost(
                    f"the Ray cluster's head at {head[0]}:{head[1]} stopped answering with {len(pending)} of {count} job(s) unfinished "
                    f"({done} ended); start the cluster again and run the same command to continue (finished jobs are skipped)"
                )
        return results
