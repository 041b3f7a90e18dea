"""Faults, injected into real training processes: SIGTERM, SIGKILL at several moments, a full disk,
a read-only output folder, an unreadable params file, a second training into the same folder.

After each: no output file is half-written, the same command completes the run (resuming its
evaluations into the same MLflow run when a checkpoint was there), and no run stays RUNNING.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import keras
import mlflow
import pandas as pd
import pytest
from omegaconf import OmegaConf

from digitlab import runs
from digitlab.training.checkpoints import CheckpointDir
from tests.conftest import ctrl_c_at_a_random_moment, tiny_config

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 8


@pytest.fixture
def env(tmp_path: Path, tiny_prepared: Path, mlflow_uri: str) -> dict:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "prepared").symlink_to(tiny_prepared)
    return {"base": tmp_path, "uri": mlflow_uri, "out": tmp_path / "out", "checkpoints": tmp_path / "checkpoints"}


def write_params(env: dict, *overrides: str, name: str = "params.yaml") -> Path:
    """A params file like DVC's: the tiny mlp, small batches (evaluations that take a moment), this test's store."""
    cfg = tiny_config(
        "model=mlp", f"models.mlp.training.epochs={EPOCHS}", "models.mlp.training.batch_size=16",
        "models.mlp.training.early_stopping.enabled=false", "tracking.log_models=false", "tracking.experiment=faults",
        f"paths.data={env['base'] / 'data'}", f"tracking.uri={env['uri']}", f"output_dir={env['out']}",
        f"paths.checkpoints={env['checkpoints']}", *overrides,
    )  # fmt: skip
    path = env["base"] / name
    path.write_text(OmegaConf.to_yaml(cfg))
    return path


def start(params: Path, log: Path, **popen) -> subprocess.Popen:
    """``python -m pipeline.train --params PARAMS`` as DVC runs it; its stderr in ``log``."""
    with log.open("w") as stderr:
        return subprocess.Popen(
            [sys.executable, "-m", "pipeline.train", "--params", str(params)],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=stderr, text=True, **popen,
        )  # fmt: skip


def finish(params: Path, log: Path, **popen) -> tuple[int, str]:
    process = start(params, log, **popen)
    process.wait(timeout=300)
    return process.returncode, log.read_text()


def wait_for(process: subprocess.Popen, log: Path, condition, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"exited {process.returncode} before {what}:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"no {what} within {timeout:.0f} s"
        time.sleep(0.002)


def unit(env: dict) -> Path | None:
    """The run's checkpoint unit folder, once there is one."""
    found = [p for p in env["checkpoints"].glob("mlp-*") if p.is_dir()] if env["checkpoints"].is_dir() else []
    return found[0] if found else None


def hidden_temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob(".*.tmp*")) if folder.is_dir() else []


def assert_no_half_written_output(folder: Path) -> None:
    """Every output file there is whole: it parses or loads."""
    for path in folder.iterdir():
        if path.name.startswith("."):
            continue  # a killed writer's temporary: never an output, removed at the next start
        if path.suffix == ".keras":
            with zipfile.ZipFile(path) as archive:
                assert archive.testzip() is None, path
        elif path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".csv":
            pd.read_csv(path)
        elif path.suffix == ".png":
            data = path.read_bytes()
            assert data.startswith(b"\x89PNG") and data.rstrip().endswith(b"IEND\xaeB`\x82"), path


def store_runs(env: dict) -> list:
    client = mlflow.MlflowClient(tracking_uri=env["uri"])
    experiment = client.get_experiment_by_name("faults")
    return client.search_runs([experiment.experiment_id]) if experiment else []


def same_command(params: Path, monkeypatch: pytest.MonkeyPatch):
    """``python -m pipeline.train --params PARAMS`` again, in this process (TensorFlow is loaded already)."""
    from pipeline.train import main

    monkeypatch.setattr(sys, "argv", ["pipeline.train", "--params", str(params)])
    return main()


def kill_at(env: dict, params: Path, moment, what: str, signum: int = signal.SIGKILL) -> None:
    """Train in a process of its own and send it ``signum`` when ``moment()`` holds; check what it left."""
    log = env["base"] / f"killed-{len(list(env['base'].glob('killed-*')))}.log"
    temp = log.with_suffix(".tmp")  # the process's temp folder
    temp.mkdir()
    process = start(params, log, env={**os.environ, "TMPDIR": str(temp)})
    wait_for(process, log, moment, what)
    process.send_signal(signum)
    process.wait(timeout=60)
    assert process.returncode != 0
    for folder in (env["out"], unit(env)):
        if folder is not None and folder.is_dir():
            assert_no_half_written_output(folder)
    assert not list(temp.glob("__autograph_generated_file*")), "TensorFlow's generated code, which only a normal exit removes"


def assert_resumed(env: dict, run_id: str) -> None:
    """The rerun continued the killed run: same MLflow run, all evaluations counted once, nothing left over."""
    result = {**json.loads((env["out"] / "train.json").read_text()), **json.loads((env["out"] / "run.json").read_text())}
    assert result["run_id"] == run_id and result["epochs"] == EPOCHS
    assert pd.read_csv(env["out"] / "history.csv")["epoch"].tolist() == list(range(EPOCHS + 1))
    assert_no_half_written_output(env["out"])
    assert not hidden_temporaries(env["out"]), "a killed run's temporaries are removed at the next start"
    assert not env["checkpoints"].exists() or not any(env["checkpoints"].iterdir()), "a completed run leaves nothing to resume"
    statuses = {run.info.run_id: run.info.status for run in store_runs(env)}
    assert statuses[run_id] == "FINISHED" and "RUNNING" not in statuses.values(), statuses
    client = mlflow.MlflowClient(tracking_uri=env["uri"])
    assert sorted({m.step for m in client.get_metric_history(run_id, "val_accuracy")}) == list(range(EPOCHS + 1))


def test_sigterm_ends_the_run_failed_and_the_same_command_resumes_it(env, monkeypatch):
    params = write_params(env)
    kill_at(env, params, lambda: unit(env) is not None, "first checkpoint", signal.SIGTERM)
    (interrupted,) = store_runs(env)
    assert interrupted.info.status == "FAILED" and "SIGTERM" in interrupted.data.tags["error"]
    assert interrupted.data.tags[runs.HOST_TAG] == socket.gethostname() and interrupted.data.tags[runs.PID_TAG].isdigit()
    same_command(params, monkeypatch)
    assert_resumed(env, interrupted.info.run_id)
    # 75 steps per evaluation (1,200 images in batches of 16): stopped and resumed at 15 steps per call.
    assert keras.models.load_model(env["out"] / "model.keras").steps_per_execution == 15
    assert store_runs(env)[0].data.tags[runs.PID_TAG] == str(os.getpid()), "the process that resumed a run owns it now"
    history = mlflow.MlflowClient(tracking_uri=env["uri"]).get_metric_history(interrupted.info.run_id, "val_accuracy")
    assert len(history) <= EPOCHS + 2, "each evaluation logged once, at most the interrupted one twice"


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the drop this test makes
def test_a_sigterm_that_python_drops_inside_a_finaliser_still_stops_the_training_at_the_next_batch():
    """Python drops an exception raised in a ``__del__`` (TensorFlow runs many between batches): the stop is kept."""
    from digitlab import interrupts
    from digitlab.training.callbacks import RaiseWhenInterrupted

    class SignalledWhileCollected:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGTERM)
            sum(range(1000))  # the handler runs here, inside the finaliser, and its KeyboardInterrupt is dropped

    before = signal.getsignal(signal.SIGTERM)
    with interrupts.signals_as_interrupt():
        SignalledWhileCollected()  # collected at once
        assert interrupts.stop_reason() == "stopped by signal SIGTERM"
        with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
            RaiseWhenInterrupted().on_train_batch_end(0)
        with pytest.raises(KeyboardInterrupt, match="SIGTERM"), interrupts.surfaced():
            raise OSError("what a library raised after the stop")
    assert signal.getsignal(signal.SIGTERM) is before, "the handler is put back"
    with interrupts.signals_as_interrupt():
        assert interrupts.stop_reason() is None, "the next command starts without a stop"


def test_a_stop_within_a_held_step_comes_when_the_step_ends():
    """interrupts.held(): a step that must finish once begun (a search's trial created, then marked) is not cut."""
    from digitlab import interrupts

    done = []
    with interrupts.signals_as_interrupt(), pytest.raises(KeyboardInterrupt):
        with interrupts.held():
            with interrupts.held():  # nested: the outermost end raises
                os.kill(os.getpid(), signal.SIGINT)
                sum(range(1000))  # the handler runs here
                done.append("inner")
            done.append("outer")
        done.append("after")  # not reached
    assert done == ["inner", "outer"]
    assert interrupts.stop_reason() is None, "the stop was the block's"
    with interrupts.signals_as_interrupt(), pytest.raises(KeyboardInterrupt), interrupts.held():  # a step that hangs
        os.kill(os.getpid(), signal.SIGINT)
        sum(range(1000))
        done.append("first stop held")
        os.kill(os.getpid(), signal.SIGINT)  # a user who insists: the second stop comes at once
        sum(range(1000))
        done.append("not reached")
    assert done[-1] == "first stop held"

    inside, release = threading.Event(), threading.Event()

    def hold_in_another_thread() -> None:
        with interrupts.held():
            inside.set()
            release.wait(10)

    other = threading.Thread(target=hold_in_another_thread)
    other.start()
    try:
        assert inside.wait(10)
        with interrupts.signals_as_interrupt(), pytest.raises(KeyboardInterrupt):  # another thread's step holds nothing here
            os.kill(os.getpid(), signal.SIGINT)
            sum(range(1000))
            done.append("not reached either")
    finally:
        release.set()
        other.join()
    assert done[-1] == "first stop held"
    with interrupts.held():  # outside a signals_as_interrupt() block: nothing to raise
        done.append("later")
    assert done[-1] == "later"


def test_a_ctrl_c_inside_omegaconf_waits_until_the_update_is_whole():
    """A KeyboardInterrupt raised while OmegaConf sets a list leaves a None in it, and OmegaConf then fails
    with AttributeError (how Hydra printed a traceback for a Ctrl-C between two sweep jobs): the stop waits
    until OmegaConf returns, and comes as if the assignment had raised it."""
    from omegaconf import OmegaConf

    from digitlab import interrupts

    class CtrlCWhileWrapped:
        armed = True

        def __getattribute__(self, name):
            if name == "__attrs_attrs__" and CtrlCWhileWrapped.armed:  # asked inside OmegaConf's half-done update
                CtrlCWhileWrapped.armed = False
                os.kill(os.getpid(), signal.SIGINT)
                sum(range(1000))  # the handler runs here, inside OmegaConf
            return object.__getattribute__(self, name)

    cfg = OmegaConf.create({"sources": [1]}, flags={"allow_objects": True})
    started = time.monotonic()
    with interrupts.signals_as_interrupt(), pytest.raises(KeyboardInterrupt):
        cfg.sources = [CtrlCWhileWrapped(), CtrlCWhileWrapped()]
        time.sleep(5)
    assert time.monotonic() - started < 2, "the stop came as OmegaConf returned, not later"
    assert [type(item).__name__ for item in cfg.sources] == ["CtrlCWhileWrapped", "CtrlCWhileWrapped"]


def test_ctrl_c_at_random_moments_of_mlflow_writes_leaves_the_sqlite_store_writable(tmp_path: Path):
    """A KeyboardInterrupt inside SQLAlchemy left a connection mid-transaction holding the SQLite file's lock:
    every later write of the process waited 20 s and failed ('database is locked'). The stop waits for the
    store's call to return."""
    import random

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = client.create_run(client.create_experiment("stops")).info.run_id
    chance = random.Random(0)
    for attempt in range(30):
        ctrl_c_at_a_random_moment(lambda: [client.log_metric(run_id, "m", step) for step in range(1000)], chance, 0.02)
        started = time.monotonic()
        client.set_tag(run_id, "after", str(attempt))  # raised MlflowException after 20 s, before
        assert time.monotonic() - started < 5, f"a write after stop {attempt} waited for a lock"
    assert client.get_run(run_id).data.tags["after"] == "29"


@pytest.mark.slow
def test_sigkill_at_any_moment_loses_nothing_and_leaves_no_run_running(env, monkeypatch):
    """The same command, SIGKILLed again and again: before the first checkpoint, mid-epoch, while
    checkpointing, while logging the model; each run of it picks up where the last one died."""
    params = write_params(env, "tracking.log_models=true")

    def run_started() -> bool:  # history row 0 is written inside the MLflow run, before any checkpoint
        return (env["out"] / "history.csv").is_file() and unit(env) is None

    kill_at(env, params, run_started, "the run's start")
    (never_checkpointed,) = store_runs(env)

    def mid_epoch() -> bool:  # a checkpoint is there and the next evaluation period has begun
        return unit(env) is not None and (time.sleep(0.1) or True)

    kill_at(env, params, mid_epoch, "the second evaluation period")
    (resumable,) = [run for run in store_runs(env) if run.info.run_id != never_checkpointed.info.run_id]
    stale = mlflow.MlflowClient(tracking_uri=env["uri"]).get_run(never_checkpointed.info.run_id)
    assert stale.info.status == "KILLED" and "is gone" in stale.data.tags[runs.KILLED_TAG], "closed by the next start"
    epoch_before = json.loads((unit(env) / "state.json").read_text())["epoch"]

    leftovers = set(hidden_temporaries(env["checkpoints"]))  # of the last kill: the next start removes them

    def checkpointing() -> bool:  # a later checkpoint's temporaries have appeared
        return unit(env) is not None and bool(set(hidden_temporaries(env["checkpoints"])) - leftovers)

    kill_at(env, params, checkpointing, "a checkpoint being written")
    assert json.loads((unit(env) / "state.json").read_text())["epoch"] >= epoch_before

    def logging_model() -> bool:
        store = env["base"] / "mlruns"
        return any(store.glob("*/models/*")) or any(store.glob("*/*/artifacts/model"))

    kill_at(env, params, logging_model, "the model being logged")
    same_command(params, monkeypatch)
    assert_resumed(env, resumable.info.run_id)
    assert json.loads((env["out"] / "run.json").read_text())["model_uri"]


def test_a_second_training_into_a_held_folder_stops_at_once_naming_the_holder(env, monkeypatch, capsys):
    from digitlab.training.lock import hold_output_dir

    with hold_output_dir(env["out"], env["checkpoints"]), pytest.raises(SystemExit) as stopped:  # this process plays the training that runs
        same_command(write_params(env), monkeypatch)
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert stopped.value.code == 2 and line.startswith(f"digitlab: error: {env['out']} is in use by another training")
    assert f"(pid {os.getpid()} on {socket.gethostname()}, started " in line
    assert not store_runs(env) and not env["out"].exists(), "refused before any run or output"


def _limit_file_size(limit: int):
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


class StopAfter(keras.callbacks.Callback):
    """Ctrl-C once evaluation ``epoch`` is checkpointed (digitlab's callbacks run first)."""

    def __init__(self, epoch: int) -> None:
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.epoch:
            raise KeyboardInterrupt("stopped by the test")


@pytest.mark.slow
def test_disk_full_during_a_checkpoint_is_one_line_and_keeps_the_previous_checkpoint(env):
    from digitlab.config import load_params
    from digitlab.settings import load_settings
    from digitlab.training.loop import train

    # A model larger than the store: a file-size limit between the two fails only the checkpoint.
    params = write_params(env, "models.mlp.model.hidden_units=[2048]", "models.mlp.training.batch_size=64")
    with pytest.raises(KeyboardInterrupt):
        train(load_settings(load_params(params)), callbacks=[StopAfter(1)])
    before = json.loads((unit(env) / "state.json").read_text())
    size = (unit(env) / "last.keras").stat().st_size
    store = Path(env["uri"][len("sqlite:///") :]).stat().st_size
    assert size > store + 300_000, (size, store)
    rc, log = finish(params, env["base"] / "full.log", preexec_fn=_limit_file_size(store + 200_000))
    assert rc == 2, log[-3000:]
    assert log.strip().splitlines()[-1].startswith("digitlab: error: cannot write a checkpoint in ") and "Traceback" not in log
    assert "File too large" in log and "the previous checkpoint is kept" in log
    checkpoint = CheckpointDir(unit(env), before["fingerprint"])
    assert checkpoint.resumable() is not None and checkpoint.resumable().epoch == before["epoch"] == 1
    assert not hidden_temporaries(env["checkpoints"]) and zipfile.ZipFile(checkpoint.last).testzip() is None
    (run,) = store_runs(env)
    assert run.info.status == "FAILED" and "File too large" in run.data.tags["error"]


def test_read_only_output_folder_is_one_line(env, monkeypatch, capsys):
    if os.geteuid() == 0:  # root writes through permission bits: a folder of sysfs takes no files, even from root
        if not Path("/sys/kernel").is_dir():
            pytest.skip("running as root without /sys: no folder root cannot write to")
        env["out"] = Path("/sys/kernel/digitlab-faults-test")
    else:
        env["out"].mkdir()
        env["out"].chmod(0o555)
    with pytest.raises(SystemExit) as stopped:
        same_command(write_params(env), monkeypatch)
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert stopped.value.code == 2 and line.startswith(f"digitlab: error: cannot write to the output folder {env['out']}: ")
    assert not store_runs(env), "no MLflow run for a training that cannot write its outputs"


def test_unreadable_params_file_is_one_line(env):
    params = env["base"] / "params.yaml"
    if os.geteuid() == 0:  # chmod 000 does not stop root from reading: a folder by that name can't be read either
        print("running as root, which reads any file: a directory named params.yaml stands in for an unreadable file")
        params.mkdir()
    else:
        write_params(env)
        params.chmod(0)
    rc, log = finish(params, env["base"] / "params.log")
    assert rc == 2 and "Traceback" not in log
    assert log.strip().splitlines()[-1].startswith(f"digitlab: error: ") and str(params) in log.strip().splitlines()[-1]


def test_stale_runs_by_pid_start_time_and_heartbeat(mlflow_uri):
    """Which RUNNING runs count as abandoned: a dead or reused pid here, an old heartbeat elsewhere."""
    client = mlflow.MlflowClient(tracking_uri=mlflow_uri)
    experiment = client.create_experiment("stale")
    now, here = time.time(), socket.gethostname()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    cases = {
        "alive": {runs.HOST_TAG: here, runs.PID_TAG: str(os.getpid()), runs.CLAIMED_TAG: str(int(now))},
        "dead": {runs.HOST_TAG: here, runs.PID_TAG: dead, runs.CLAIMED_TAG: str(int(now))},
        # This test's own pid, claimed before this process started: another process had it.
        "reused": {runs.HOST_TAG: here, runs.PID_TAG: str(os.getpid()), runs.CLAIMED_TAG: "1000000000"},
        "elsewhere-fresh": {runs.HOST_TAG: "another-host", runs.PID_TAG: "1", runs.HEARTBEAT_TAG: str(int(now - 60))},
        "elsewhere-silent": {runs.HOST_TAG: "another-host", runs.PID_TAG: "1", runs.HEARTBEAT_TAG: str(int(now - 7200))},
    }
    ids = {name: client.create_run(experiment, tags=tags, run_name=name).info.run_id for name, tags in cases.items()}
    finished = client.create_run(experiment, tags=cases["dead"], run_name="finished").info.run_id
    client.set_terminated(finished, "FINISHED")
    stale = runs.stale_runs(client, [experiment], 3600)
    assert sorted(entry.run.info.run_name for entry in stale) == ["dead", "elsewhere-silent", "reused"]
    closed = runs.close_stale(client, stale, keep=ids["dead"])
    assert sorted(entry.run.info.run_name for entry in closed) == ["elsewhere-silent", "reused"]
    statuses = {name: client.get_run(run_id).info.status for name, run_id in ids.items()}
    assert statuses == {"alive": "RUNNING", "dead": "RUNNING", "reused": "KILLED", "elsewhere-fresh": "RUNNING", "elsewhere-silent": "KILLED"}
    assert "heartbeat" in client.get_run(ids["elsewhere-silent"]).data.tags[runs.KILLED_TAG]


def test_runs_command_lists_and_closes_stale_runs(env, capsys):
    client = mlflow.MlflowClient(tracking_uri=env["uri"])
    experiment = client.create_experiment("faults")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    tags = {runs.HOST_TAG: socket.gethostname(), runs.PID_TAG: dead, runs.CLAIMED_TAG: str(int(time.time()))}
    run_id = client.create_run(experiment, tags=tags, run_name="killed").info.run_id
    from digitlab.cli import main

    command = ["runs", "--stale", "--params", str(write_params(env))]
    main(command)
    assert capsys.readouterr().out.splitlines() == [f"stale: {run_id}  faults  killed  its process {dead} on {socket.gethostname()} is gone"]
    main([*command, "--close"])
    assert capsys.readouterr().out.startswith(f"closed as KILLED: {run_id}")
    assert client.get_run(run_id).info.status == "KILLED"
    main(command)
    assert capsys.readouterr().out.startswith("no stale runs")


def test_a_unit_taken_out_mid_swap_is_put_back(tmp_path):
    """A kill between replace_directory's two renames leaves the previous unit aside: resume finds it."""
    directory = tmp_path / "mlp-0123"
    (tmp_path / ".mlp-0123.old-x.tmp" / "mlp-0123").mkdir(parents=True)
    (tmp_path / ".mlp-0123.abc.tmp").mkdir()  # the new unit, maybe half-written
    aside = tmp_path / ".mlp-0123.old-x.tmp" / "mlp-0123"
    (aside / "state.json").write_text(json.dumps({"fingerprint": "f", "epoch": 2, "best_epoch": 0}))
    with zipfile.ZipFile(aside / "last.keras", "w") as archive:
        archive.writestr("config.json", "{}")
    state = CheckpointDir(directory, "f").resumable()
    assert state is not None and state.epoch == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlp-0123"]


def test_a_killed_report_stages_run_is_closed_by_the_next_report_and_nothing_else(mlflow_uri):
    """The report stage's own MLflow run, left RUNNING by a kill, is closed KILLED; a training run is not its business."""
    from digitlab.tracking import TrackingSettings

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    client = mlflow.MlflowClient()
    experiment = client.create_experiment("report-stale")
    tags = {runs.HOST_TAG: socket.gethostname(), runs.PID_TAG: str(dead.pid), runs.CLAIMED_TAG: str(int(time.time())),
            runs.HEARTBEAT_TAG: str(int(time.time()))}  # fmt: skip
    report = client.create_run(experiment, run_name="report", tags=tags).info.run_id
    training = client.create_run(experiment, run_name="cnn-digits", tags=tags).info.run_id
    closed = runs.close_stale_runs(TrackingSettings(), experiment, "attributes.run_name = 'report'")
    assert [entry.run_id for entry in closed] == [report]
    assert client.get_run(report).info.status == "KILLED" and client.get_run(training).info.status == "RUNNING"
