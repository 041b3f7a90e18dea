"""Shared fixtures: real components on tiny data, all in temporary directories."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import requests

ROOT = Path(__file__).resolve().parents[1]
# What a copy of the project needs to run its pipeline (no data, models or stores).
PROJECT_FILES = ("conf", "pipeline", "src", "vendor", "dvc.yaml", "params.yaml", "pyproject.toml", ".dvcignore", ".gitignore")

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
# A repo a test makes with `dvc init` has DVC's analytics on (the project's .dvc/config turns them off): each DVC
# command would start a process that tries to reach DVC's server, and leaves its report in /tmp when it cannot.
os.environ.setdefault("DVC_NO_ANALYTICS", "1")

# Tests stop themselves, and the commands they start, with Ctrl-C (SIGINT). A shell without job control
# starts `make test &` with SIGINT ignored (POSIX), an ignored signal stays ignored across exec, and digitlab
# keeps a signal its process was started to ignore: those tests would wait for a stop that never comes.
# This process (xdist's main one first, then each worker it starts) takes SIGINT as Python does by default.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def ctrl_c_at_a_random_moment(action: Callable[[], object], chance: random.Random, within_s: float) -> None:
    """``action()`` under a digitlab command's signal handling, with a real Ctrl-C (SIGINT to this process) at a
    random moment within ``within_s`` s: it must end in the KeyboardInterrupt. One that finished first waits for it."""
    from digitlab import interrupts

    stop = threading.Timer(chance.uniform(0, within_s), os.kill, (os.getpid(), signal.SIGINT))
    with interrupts.signals_as_interrupt(), pytest.raises(KeyboardInterrupt):
        stop.start()
        action()
        time.sleep(10)
    stop.join()


def user_env(env: dict | None = None) -> dict:
    """This process's environment with the venv's bin first on PATH (as in an activated venv), and ``env`` on top."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", **(env or {})}


def run(cmd: list[str], cwd: Path, env: dict | None = None, check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run a command as a user would, capturing its output; fail with the output shown."""
    result = subprocess.run(cmd, cwd=cwd, env=user_env(env), capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}")
    return result


def start_queue(project: Path, env: dict, jobs: int = 2) -> None:
    """`dvc queue start -j <jobs>`, output to a file: its workers inherit the command's stdout and stderr, so a
    captured run of it lasts until the last worker exits (forever when one misses its shutdown, as DVC's workers
    sometimes do when two finish together; `dvc queue stop` ends it)."""
    log = project.parent / f"queue-start-{project.name}.log"
    with log.open("w") as output:
        started = subprocess.run(["dvc", "queue", "start", "-j", str(jobs)], cwd=project, env=user_env(env), stdout=output,
                                 stderr=subprocess.STDOUT, timeout=120)  # fmt: skip
    assert started.returncode == 0 and "Started" in log.read_text(), log.read_text()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def command_lines(processes) -> list[list[str]]:
    """The command lines of ``processes`` still running (one that ended or is a zombie meanwhile has none)."""
    import psutil

    lines = []
    for process in processes:
        try:
            lines.append(process.cmdline())
        except (psutil.NoSuchProcess, psutil.AccessDenied):  # ZombieProcess is a NoSuchProcess
            continue
    return lines


def job_runner_lines(processes) -> list[list[str]]:
    """The command lines of MLflow's job runner (its Huey consumers) among ``processes``."""
    return [line for line in command_lines(processes) if any("huey" in part or "_job_runner" in part for part in line)]


@contextlib.contextmanager
def serving(command: Callable[[int], list[str]], ready: str, cwd: Path, timeout: float = 120, base_env: dict | None = None) -> Iterator[str]:
    """A real server, ``command(port)``, on a free port of 127.0.0.1: its URL once GET ``ready`` answers; stopped after."""
    port = free_port()
    url, cmd = f"http://127.0.0.1:{port}", command(port)
    base_env = os.environ if base_env is None else base_env
    env = {**base_env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}  # as in an activated venv
    log = cwd / f"server-{port}.log"
    with log.open("w") as output:
        server = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if requests.get(f"{url}{ready}", timeout=2).ok:
                    break
            except requests.RequestException:  # not listening yet, or still starting up
                pass
            assert server.poll() is None, f"{cmd[:3]} exited {server.returncode}:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"{cmd[:3]} did not answer {ready} in {timeout:.0f} s"
            time.sleep(0.5)
        yield url
    finally:
        if server.poll() is None:
            from digitlab.stack.procs import terminate_started

            terminate_started(server)


@pytest.fixture(autouse=True, scope="module")
def _isolate_mlflow_state():
    """Each test module starts with the process's MLflow state as it found it.

    mlflow.set_tracking_uri also sets $MLFLOW_TRACKING_URI, and
    mlflow.set_experiment sets a process-wide active experiment: neither may
    leak from one module's stores into the next module's tests.
    """
    import mlflow

    with pytest.MonkeyPatch.context() as patch:
        for name in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
            if name in os.environ:
                patch.setenv(name, os.environ[name])
            else:
                patch.delenv(name, raising=False)
        yield
    while mlflow.active_run():
        mlflow.end_run()


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A fresh copy of this project in its own git + DVC repo, ready for `dvc repro`."""
    return copy_project(tmp_path / "project")


def copy_project(dest: Path) -> Path:
    """Copy this project (code and config: no data, models or stores) to ``dest``, a git + DVC repo of its own."""
    dest.mkdir()
    for name in PROJECT_FILES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        elif source.exists():
            shutil.copy2(source, dest / name)
    (dest / ".dvc").mkdir()
    shutil.copy2(ROOT / ".dvc" / "config", dest / ".dvc" / "config")
    shutil.copy2(ROOT / ".dvc" / ".gitignore", dest / ".dvc" / ".gitignore")
    git = ["git", "-c", "user.name=digitlab-tests", "-c", "user.email=tests@digitlab.invalid"]
    run(["git", "init", "-q", "-b", "main"], dest)
    run([*git, "add", "-A"], dest)
    run([*git, "commit", "-qm", "project copy"], dest)
    return dest


@pytest.fixture(scope="session")
def _mlflow_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One migrated SQLite store per session: migrations take seconds, copies take none."""
    import mlflow

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    mlflow.MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def mlflow_uri(tmp_path: Path, _mlflow_template: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A real, empty MLflow SQLite store in a temp dir, set as $MLFLOW_TRACKING_URI."""
    path = tmp_path / "mlflow.db"
    shutil.copy2(_mlflow_template, path)
    uri = f"sqlite:///{path}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    import mlflow

    mlflow.set_tracking_uri(uri)
    return uri


# The real conf/, shrunk: 8x8 digits and small recipes train in a couple of seconds each on one core.
TINY_OVERRIDES = (
    "dataset=digits",
    "models.linear.optimizer.learning_rate=0.05",
    "models.mlp.model.hidden_units=[32]",
    "models.mlp.optimizer.learning_rate=0.01",
    "models.cnn.model.conv_filters=[8,16]",
    "models.cnn.model.convs_per_block=1",
    "models.cnn.model.batch_norm=false",
    "models.cnn.model.dense_units=[32]",
    "models.cnn.optimizer.learning_rate=0.01",
    *(f"models.{name}.training.{key}" for name in ("linear", "mlp", "cnn") for key in ("batch_size=64", "epochs=3")),
)


def tiny_config(*overrides: str, root: Path = ROOT):
    """The real Hydra composition of ``conf/`` with :data:`TINY_OVERRIDES`, then ``overrides`` (a DictConfig)."""
    from digitlab.config import compose

    return compose([*TINY_OVERRIDES, *overrides], root=root)


def tiny_settings(*overrides: str, root: Path = ROOT):
    """:func:`tiny_config`, validated: the :class:`~digitlab.settings.Settings` a stage receives."""
    from digitlab.settings import load_settings

    return load_settings(tiny_config(*overrides, root=root))


@pytest.fixture
def mlflow_server(tmp_path: Path, _mlflow_template: Path):
    """A real ``mlflow server`` on a free local port, its store and artifacts in tmp."""
    shutil.copy2(_mlflow_template, tmp_path / "server.db")
    command = lambda port: [  # noqa: E731
        str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}", "--artifacts-destination", str(tmp_path / "artifacts"),
    ]  # fmt: skip
    from digitlab.stack.server import server_env

    with serving(command, "/health", tmp_path, timeout=90, base_env=server_env()) as uri:  # as digitlab starts its servers
        yield uri


@pytest.fixture(scope="session")
def tiny_prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A prepared dataset (the preprocess output format) from scikit-learn's 8x8 digits."""
    return write_tiny_prepared(tmp_path_factory.mktemp("prepared"))


def write_tiny_prepared(directory: Path) -> Path:
    """Write scikit-learn's 8x8 digits into ``directory`` as preprocess would: 1200 train, 250 val, 347 test."""
    from sklearn.datasets import load_digits

    from digitlab.data.prepared import SPLITS, Meta, save_meta, save_split

    digits = load_digits()
    x = (digits.images * (255.0 / 16.0)).round().astype(np.uint8)[..., None]
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(y))
    x, y = x[order], y[order]
    bounds = {"train": (0, 1200), "val": (1200, 1450), "test": (1450, len(y))}
    names = [str(i) for i in range(10)]
    counts = {}
    for split in SPLITS:
        lo, hi = bounds[split]
        save_split(directory, split, x[lo:hi], y[lo:hi])
        counts[split] = {names[c]: int((y[lo:hi] == c).sum()) for c in range(10)}
    save_meta(directory, Meta("digits", names, (8, 8, 1), counts, {}))
    return directory
