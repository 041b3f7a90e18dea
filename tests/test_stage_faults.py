"""The data stages killed while they write: no half-written output, and the next `dvc repro` completes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from digitlab.data.prepared import SPLITS, load_meta, load_split

from .conftest import run, user_env


def kill_when(command: list[str], cwd: Path, pattern: str, timeout: float = 180, signum: int = signal.SIGKILL) -> subprocess.Popen:
    """Run ``command`` and send ``signum`` to its whole process group the moment a path matching ``pattern`` appears."""
    env = user_env({"MLFLOW_TRACKING_URI": ""})
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + timeout
    while not list(cwd.glob(pattern)):
        assert process.poll() is None, f"{command} ended before {pattern} appeared: {process.stderr.read().decode()[-2000:]}"
        assert time.monotonic() < deadline, f"{pattern} did not appear in {timeout:.0f} s"
        time.sleep(0.005)
    os.killpg(process.pid, signum)
    process.wait(timeout=30)
    return process


def assert_prepared_whole_or_absent(prepared: Path) -> None:
    if not prepared.exists():
        return
    meta = load_meta(prepared)
    for split in SPLITS:
        x, y = load_split(prepared, split)
        assert len(x) == len(y) == sum(meta.counts[split].values())


@pytest.mark.slow
@pytest.mark.parametrize(
    ("stage", "pattern"),
    [("download", "data/raw/.digits.*.tmp*"), ("preprocess", "data/.prepared.*.tmp*/*.npz")],
    ids=["download", "preprocess-writing-npz"],
)
def test_a_data_stage_killed_while_writing_leaves_no_half_output(project: Path, stage: str, pattern: str) -> None:
    run(["digitlab", "params", "dataset=digits"], project)
    if stage == "preprocess":
        run(["dvc", "repro", "download"], project, env={"MLFLOW_TRACKING_URI": ""})
    kill_when(["dvc", "repro", stage], project, pattern)
    assert_prepared_whole_or_absent(project / "data" / "prepared")
    raw = project / "data" / "raw" / "digits"
    assert not raw.exists() or (raw / "source.json").is_file(), "a raw output without its manifest is half-written"

    run(["dvc", "repro", "preprocess"], project, env={"MLFLOW_TRACKING_URI": ""})
    assert_prepared_whole_or_absent(project / "data" / "prepared")
    x, _ = load_split(project / "data" / "prepared", "train")
    assert x.dtype == np.uint8 and len(x) > 0
    assert not list(project.glob("data/.*.tmp*")) and not list(project.glob("data/raw/.*.tmp*")), "leftovers cleared"
    assert "up to date" in run(["dvc", "status", "download", "preprocess"], project).stdout


def test_a_data_stage_stopped_with_sigterm_ends_in_one_line_and_runs_again(project: Path) -> None:
    """SIGTERM (a stopped container, `timeout`) to a stage that is not a training: the same one line as Ctrl-C,
    exit 130, no traceback, no half output; the same command then completes."""
    run(["digitlab", "params", "dataset=digits"], project)
    run(["dvc", "repro", "download"], project, env={"MLFLOW_TRACKING_URI": ""})
    command = [sys.executable, "-m", "pipeline.preprocess", "--params", "params.yaml"]
    stopped = kill_when(command, project, "data/.prepared.*.tmp*", signum=signal.SIGTERM)
    stderr = stopped.stderr.read().decode()
    assert stopped.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr and stderr.strip().splitlines()[-1] == (
        "digitlab: stopped by signal SIGTERM; run the same command again to continue"
    ), stderr[-2000:]
    assert_prepared_whole_or_absent(project / "data" / "prepared")
    run(command, project, env={"MLFLOW_TRACKING_URI": ""})
    x, _ = load_split(project / "data" / "prepared", "train")
    assert len(x) > 0
