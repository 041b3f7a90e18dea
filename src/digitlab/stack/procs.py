"""The stack's processes: started detached (own session, output to a log), recognised again, stopped with their children."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import psutil

from digitlab.errors import DigitlabError


def spawn(command: Sequence[str], log: Path, env: dict[str, str], cwd: Path) -> psutil.Process:
    """Start ``command`` in a session of its own (stopped as one group), stdout and stderr appended to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as output:
        child = subprocess.Popen(
            list(command), cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    return psutil.Process(child.pid)


def identity(process: psutil.Process) -> dict[str, float | int]:
    """What state.json keeps of a process: its pid and start time (a reused pid is another process)."""
    return {"pid": process.pid, "started": process.create_time()}


def alive(entry: dict | None) -> psutil.Process | None:
    """The running process state.json recorded in ``entry`` (pid + start time), else None."""
    if not entry or not entry.get("pid"):
        return None
    try:
        process = psutil.Process(int(entry["pid"]))
        if "started" in entry and abs(process.create_time() - float(entry["started"])) > 1:
            return None
        return None if process.status() == psutil.STATUS_ZOMBIE else process
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return None


def terminate(process: psutil.Process, timeout: float = 20) -> None:
    """Stop ``process`` and every process it started: SIGTERM to its group and tree, SIGKILL to what outlives ``timeout``."""
    try:
        tree = [process, *process.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGTERM)  # spawn() made it a group leader
    for member in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.terminate()
    survivors = wait_gone(tree, timeout)
    for member in survivors:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.kill()
    wait_gone(survivors, 5)


def terminate_started(popen: subprocess.Popen, timeout: float = 20) -> None:
    """:func:`terminate` for a process this one started (a group leader), then reap it."""
    with contextlib.suppress(psutil.NoSuchProcess):
        terminate(psutil.Process(popen.pid), timeout)
    popen.wait(timeout=5)


def gone(process: psutil.Process) -> bool:
    """Whether ``process`` has ended (a zombie nobody reaped yet has)."""
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_gone(processes: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait up to ``timeout`` s for ``processes`` to end (reaping our own children); the ones still running."""
    deadline = time.monotonic() + timeout
    left = list(processes)
    while left and time.monotonic() < deadline:
        for member in left:
            with contextlib.suppress(psutil.Error, ChildProcessError):
                member.wait(timeout=0)  # reaps it when it is our child
        left = [member for member in left if not gone(member)]
        if left:
            time.sleep(0.1)
    return left


def bind_error(host: str, port: int) -> OSError | None:
    """Why a server could not listen on ``host:port`` now, or None (with SO_REUSEADDR, as servers do: TIME_WAIT is no obstacle)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            return error
    return None


def port_free(host: str, port: int) -> bool:
    return bind_error(host, port) is None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def wait_until(ready: Callable[[], bool], process: psutil.Process, what: str, log: Path, timeout: float = 120) -> None:
    """Poll ``ready()`` until true; fail in one line (naming the log) if ``process`` exits or ``timeout`` passes.

    A process that does not become ready (or an interrupt) is stopped: no half-started service is left behind.
    """
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            if alive({"pid": process.pid}) is None:
                raise DigitlabError(f"{what} exited while starting: {last_line(log)} (log: {log})")
            if time.monotonic() > deadline:
                raise DigitlabError(f"{what} did not become ready within {timeout:.0f} s (log: {log})")
            time.sleep(0.3)
    except BaseException:
        terminate(process)
        raise


def last_line(log: Path) -> str:
    """The last non-empty line of a log (what a failed start said last)."""
    try:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no log"
    return lines[-1][:300] if lines else "no output"
