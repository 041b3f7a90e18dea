"""A training survives its tracking server: a real ``mlflow server`` SIGKILLed in the middle of a
real training (``python -m pipeline.train`` as DVC runs it), then restarted, or never restarted.

What is logged meanwhile waits in the run's journal (:mod:`digitlab.journal`) and reaches the
server in order, each metric step once; the run ends FINISHED; the stage never fails for it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import requests
from omegaconf import OmegaConf

from digitlab.stack.server import server_env
from digitlab.training.callbacks import LOGGED_COLUMNS
from digitlab.training.outputs import TrainOutputs
from tests.conftest import free_port, tiny_config

ROOT = Path(__file__).resolve().parents[1]
# The restarted-server test pauses the training (SIGSTOP) until the server answers again, so the training need not
# outlast the restart: it needs room for about ten evaluations before the pause (3, the outage noticed, 3 more), and
# then a few more to log to the restarted server. 30 leaves twice that.
EPOCHS = 30
NEVER_RESTARTED_EPOCHS = 15  # the server killed after 2 evaluations: 13 more logged into the journal

pytestmark = pytest.mark.slow


class RestartableServer:
    """A real ``mlflow server`` on a fixed port, its SQLite store and artifacts in ``base``: kill it, start it again."""

    def __init__(self, base: Path, template: Path) -> None:
        self.base, self.port = base, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        shutil.copy2(template, base / "server.db")
        self.process: subprocess.Popen | None = None

    def start(self, wait: bool = True) -> None:
        command = [
            str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(self.port),
            "--workers", "1", "--backend-store-uri", f"sqlite:///{self.base / 'server.db'}",
            "--artifacts-destination", str(self.base / "artifacts"),
        ]  # fmt: skip
        with (self.base / "server.log").open("a") as log:
            self.process = subprocess.Popen(command, cwd=self.base, env=server_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        if wait:
            self.wait_healthy()

    def wait_healthy(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not self._healthy():
            assert self.process.poll() is None, (self.base / "server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "mlflow server did not start"
            time.sleep(0.3)

    def _healthy(self) -> bool:
        try:
            return requests.get(f"{self.url}/health", timeout=2).ok
        except requests.RequestException:
            return False

    def kill(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)


@pytest.fixture(scope="module")
def _module_server(tmp_path_factory: pytest.TempPathFactory, _mlflow_template: Path):
    """One server for the module (a start costs seconds): each test kills it, and restarts it or leaves it down."""
    server = RestartableServer(tmp_path_factory.mktemp("outage-server"), _mlflow_template)
    server.start()
    yield server
    if server.process.poll() is None:
        server.kill()


@pytest.fixture
def server(_module_server: RestartableServer):
    """The module's server, running and answering (started again if a test before left it down). Each test logs
    to an experiment of its own in its store."""
    if _module_server.process.poll() is not None:
        _module_server.start()
    _module_server.wait_healthy()
    return _module_server


def params_file(base: Path, prepared: Path, uri: str, experiment: str, *overrides: str) -> Path:
    (base / "data").mkdir(exist_ok=True)
    if not (base / "data" / "prepared").exists():
        (base / "data" / "prepared").symlink_to(prepared)
    cfg = tiny_config(
        "model=mlp", f"models.mlp.training.epochs={EPOCHS}", "models.mlp.training.batch_size=8",
        "models.mlp.training.early_stopping.enabled=false", f"tracking.experiment={experiment}",
        f"paths.data={base / 'data'}", f"tracking.uri={uri}", f"output_dir={base / 'out'}",
        f"paths.checkpoints={base / 'checkpoints'}", "tracking.connect_timeout=5", *overrides,
    )  # fmt: skip
    path = base / "params.yaml"
    path.write_text(OmegaConf.to_yaml(cfg))
    return path


def train(params: Path, base: Path, **env_vars: str) -> tuple[subprocess.Popen, Path]:
    """The train stage as DVC runs it; the project's home (where journals live) is ``base``."""
    log = base / "train.log"
    env = {**os.environ, "DVC_ROOT": str(base), **env_vars}
    with log.open("w") as stderr:
        process = subprocess.Popen([sys.executable, "-m", "pipeline.train", "--params", str(params)], cwd=ROOT, env=env,
                                   stdout=subprocess.DEVNULL, stderr=stderr, text=True)  # fmt: skip
    return process, log


def evaluations(base: Path) -> int:
    try:
        return len(pd.read_csv(base / "out" / "history.csv"))
    except (FileNotFoundError, pd.errors.EmptyDataError):
        return 0


def wait_until(condition, process: subprocess.Popen, log: Path, what: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"training exited {process.returncode} before {what}:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"no {what} within {timeout:.0f} s"
        time.sleep(0.05)


def the_run(uri: str, name: str):
    client = mlflow.MlflowClient(uri)
    (experiment,) = [e for e in client.search_experiments() if e.name == name]
    (run,) = client.search_runs([experiment.experiment_id])
    return client, run


def assert_complete(uri: str, experiment: str, epochs: int) -> None:
    """The run FINISHED with every evaluation's metrics once, in order, and its artifacts and model."""
    client, run = the_run(uri, experiment)
    assert run.info.status == "FINISHED"
    for key in LOGGED_COLUMNS:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
        assert steps == list(range(epochs + 1)), f"{key}: steps {steps}"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "curves.png", "history.csv", "checkpoints"} <= artifacts
    assert client.search_logged_models([run.info.experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'")


def test_server_killed_mid_training_and_restarted(server: RestartableServer, tmp_path: Path, tiny_prepared: Path) -> None:
    params = params_file(tmp_path, tiny_prepared, server.url, "outage-restarted", "tracking.delivery_timeout_s=120")
    # No HTTP-level retries: the first failed delivery reaches the journal's sender at once (MLflow's own
    # retries would otherwise hide an outage shorter than their backoff, and the test would depend on timing).
    process, log = train(params, tmp_path, MLFLOW_HTTP_REQUEST_MAX_RETRIES="0")
    wait_until(lambda: evaluations(tmp_path) >= 3, process, log, "3 evaluations")
    server.kill()
    down_at = evaluations(tmp_path)
    wait_until(lambda: "unreachable" in log.read_text(), process, log, "the outage noticed")
    server.start(wait=False)  # it takes seconds to answer again: the training goes on meanwhile
    wait_until(lambda: evaluations(tmp_path) >= down_at + 3, process, log, "training going on while the server is down")
    # The server must come back while the training still runs, however slow its start is on a loaded
    # machine: the training is paused (SIGSTOP) until the server answers, then goes on.
    process.send_signal(signal.SIGSTOP)
    try:
        server.wait_healthy()
        back_at = evaluations(tmp_path)
    finally:
        process.send_signal(signal.SIGCONT)
    assert back_at < EPOCHS + 1, "the training ended before the server was killed and restarted"
    assert process.wait(timeout=300) == 0, log.read_text()[-3000:]
    text = log.read_text()
    assert "Traceback" not in text and text.count("unreachable") == 1, text[-3000:]
    assert_complete(server.url, "outage-restarted", EPOCHS)
    assert not any((tmp_path / ".digitlab" / "journal").iterdir()), "delivered journals are removed"


def test_server_never_restarted_then_sync(server: RestartableServer, tmp_path: Path, tiny_prepared: Path) -> None:
    params = params_file(tmp_path, tiny_prepared, server.url, "outage-never-restarted", "tracking.delivery_timeout_s=2",
                         f"models.mlp.training.epochs={NEVER_RESTARTED_EPOCHS}")
    process, log = train(params, tmp_path)
    wait_until(lambda: evaluations(tmp_path) >= 2, process, log, "2 evaluations")
    server.kill()
    assert process.wait(timeout=300) == 0, log.read_text()[-3000:]
    text = log.read_text()
    assert "Traceback" not in text and "digitlab sync" in text, text[-3000:]
    outputs = TrainOutputs(tmp_path / "out", "mlp").require()  # the stage's own outputs are complete
    assert outputs.read_result().run.model_uri is None, "the model is not on the server yet"
    (journal,) = list((tmp_path / ".digitlab" / "journal").iterdir())

    server.start()
    env = {**os.environ, "DVC_ROOT": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "digitlab.cli", "sync"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert journal.name in done.stdout and not journal.exists()
    assert_complete(server.url, "outage-never-restarted", NEVER_RESTARTED_EPOCHS)
    again = subprocess.run([sys.executable, "-m", "digitlab.cli", "sync"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "nothing to deliver" in again.stdout


def test_sync_while_the_server_is_down_is_one_line(server: RestartableServer, tmp_path: Path) -> None:
    from digitlab.journal import Journal

    journal = Journal.for_run("0" * 32, server.url, root=tmp_path / ".digitlab" / "journal")
    journal.log_metrics({"accuracy": 0.5}, step=1)
    server.kill()
    env = {**os.environ, "DVC_ROOT": str(tmp_path)}
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "digitlab.cli", "sync"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and server.url in done.stderr, done.stderr
    assert time.monotonic() - started < 60
    assert journal.pending == 1, "nothing is lost: the journal still holds the entry"
