"""The in-epoch progress bar: drawn on a terminal, absent in pipes and logs."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def _fit(stream, steps: int = 6, steps_per_call: int = 1) -> str:
    import keras

    from digitlab.training.callbacks import EpochProgress

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
    model.compile("sgd", "sparse_categorical_crossentropy", metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
                  steps_per_execution=steps_per_call)  # fmt: skip
    x, y = np.random.default_rng(0).normal(size=(48, 4)).astype("float32"), np.arange(48) % 3
    callback = EpochProgress(steps_per_eval=steps, total_epochs=2, stream=stream, min_interval_s=0.0)
    model.fit(x, y, batch_size=8, epochs=2, steps_per_epoch=steps, verbose=0, callbacks=[callback])
    return stream.getvalue()


def test_bar_on_a_terminal():
    out = _fit(FakeTTY())
    assert "epoch 1/2" in out and "epoch 2/2" in out
    assert "6/6" in out and "loss=" in out and "accuracy=" in out


def test_bar_counts_every_step_when_several_run_per_call():
    """training.steps_per_call: Keras reports the batch at the end of each call, the bar still reaches every step."""
    out = _fit(FakeTTY(), steps=6, steps_per_call=3)
    assert "6/6" in out and "3/6" in out and "1/6" not in out and "loss=" in out


def test_no_bar_in_a_pipe():
    assert _fit(io.StringIO()) == ""


def test_wanted_follows_stderr(monkeypatch):
    import sys

    from digitlab.training.callbacks import EpochProgress

    read, write = os.pipe()
    with os.fdopen(write, "w") as pipe:
        assert not EpochProgress.wanted(pipe)
    os.close(read)
    pty = pytest.importorskip("pty")
    leader, follower = pty.openpty()
    with os.fdopen(follower, "w") as terminal:
        assert EpochProgress.wanted(terminal)
        monkeypatch.setattr(sys, "stderr", terminal)
        assert EpochProgress.wanted()
    os.close(leader)


SCRIPT = """
import sys
from digitlab.config import setup_logging
from tests.conftest import tiny_settings
setup_logging()
from digitlab.training.loop import train
base = sys.argv[1]
train(tiny_settings(
    "model=linear", f"paths.data={base}/data", f"tracking.uri=sqlite:///{base}/mlflow.db", f"output_dir={base}/out-" + sys.argv[2],
    "tracking.experiment=tests-progress", f"paths.checkpoints={base}/checkpoints-" + sys.argv[2], "tracking.log_models=false",
    "models.linear.training.epochs=1",
))
"""


def _train_with_stderr(base, name: str, terminal: bool) -> str:
    import subprocess
    import sys

    from tests.conftest import ROOT

    cmd = [sys.executable, "-c", SCRIPT, str(base), name]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "COLUMNS": "120"}
    if not terminal:
        done = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=300)
        assert done.returncode == 0, done.stderr.decode()[-3000:]
        return done.stderr.decode()
    pty = pytest.importorskip("pty")
    leader, follower = pty.openpty()
    process = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=follower)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the follower side closed: the process is gone
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert process.wait(timeout=300) == 0, b"".join(chunks).decode(errors="replace")[-3000:]
    return b"".join(chunks).decode(errors="replace")


def test_real_training_bar_only_on_a_terminal(tiny_prepared, _mlflow_template, tmp_path):
    import shutil

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "prepared").symlink_to(tiny_prepared)
    shutil.copy2(_mlflow_template, tmp_path / "mlflow.db")
    on_terminal = _train_with_stderr(tmp_path, "tty", terminal=True)
    assert "epoch 1/1:" in on_terminal and "/19 [" in on_terminal and "loss=" in on_terminal, on_terminal[-2000:]
    in_pipe = _train_with_stderr(tmp_path, "pipe", terminal=False)
    assert "epoch 1/1 step" in in_pipe, in_pipe[-2000:]  # RecordEvaluation's line, as before
    assert "epoch 1/1:" not in in_pipe and "\r" not in in_pipe
