"""The team stack (`digitlab stack`) as a test fixture: one real stack per test session (per xdist worker).

Starting PostgreSQL, moto_server and an mlflow server costs most of a stack test's
time, so every stack test is in tests/test_team.py, one module, which ``--dist loadfile``
runs on one worker: the stack starts once. Tests leave the stack up;
one that stops a service starts it again, and :meth:`Stack.ensure_up` brings back
whatever a test before left down, whatever the order the tests run in.

As root, PostgreSQL runs as the user ``postgres``, so the stack's folder is a
world-traversable temporary folder, not pytest's private tmp_path.
"""

from __future__ import annotations

import configparser
import dataclasses
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import psutil
import pytest
import requests

from .conftest import ROOT, free_port, run

DIGITLAB = str(Path(sys.executable).parent / "digitlab")
CLIENT_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "DIGITLAB_STACK_DIR")


def stack_unavailable() -> str | None:
    """Why the stack can't run on this machine, or None."""
    from digitlab.errors import DigitlabError
    from digitlab.stack import postgres

    try:
        bindir = postgres.bindir()
    except DigitlabError as error:
        return str(error)
    if not (bindir / "initdb").exists():
        return f"no initdb in {bindir} (apt-get install postgresql)"
    if os.geteuid() == 0 and (not shutil.which("runuser") or run(["id", postgres.RUN_AS], ROOT, check=False).returncode):
        return f"running as root without runuser or a user {postgres.RUN_AS!r} to run PostgreSQL"
    for module, package in (("psycopg", "psycopg[binary]"), ("boto3", "boto3"), ("flask_wtf", "mlflow[auth]")):
        try:
            __import__(module)
        except ImportError:
            return f"{package} is not installed (pip install -e '.[team]')"
    if not (Path(sys.executable).parent / "moto_server").exists():
        return "moto_server is not installed (pip install -e '.[team]')"
    return None


def require_stack() -> None:
    """Skip (printing why) when the stack's tools are missing; under CI (env CI set) that is a failure."""
    require("team stack", stack_unavailable())


def require(what: str, reason: str | None) -> None:
    """Skip (printing why) when ``reason`` says ``what`` can't run here; under CI (env CI set) that is a failure."""
    if reason is None:
        return
    print(f"{what} unavailable: {reason}")
    if os.environ.get("CI"):
        pytest.fail(f"{what} unavailable under CI: {reason}")
    pytest.skip(f"{what} unavailable: {reason}")


@dataclasses.dataclass
class Stack:
    dir: Path
    project: Path  # a bare DVC repo (no git) the fixture runs `digitlab stack` in
    url: str

    def state(self) -> dict:
        return json.loads((self.dir / "state.json").read_text())

    def login(self) -> tuple[str, str]:
        section = configparser.ConfigParser(interpolation=None)
        section.read(self.dir / "secrets" / "mlflow-credentials")
        return section["mlflow"]["mlflow_tracking_username"], section["mlflow"]["mlflow_tracking_password"]

    def command(self, *args: str, check: bool = True, env: dict | None = None, cwd: Path | None = None):
        """``digitlab stack ARGS --dir DIR`` in ``cwd`` (default: the fixture's project), no client login in its environment."""
        clean = {name: "" for name in CLIENT_ENV}
        result = run([DIGITLAB, "stack", *args, "--dir", str(self.dir)], cwd or self.project, env={**clean, **(env or {})},
                     check=False, timeout=400)  # fmt: skip
        if check and result.returncode != 0:
            raise AssertionError(f"digitlab stack {' '.join(args)} exited {result.returncode}\n{result.stdout}\n{result.stderr}")
        return result

    def ensure_up(self) -> None:
        """Start again what a test before this one stopped (every service's process alive and the server healthy), else nothing."""
        services = self.state().get("services", {})
        alive = all(_alive(services.get(name, {}).get("pid")) for name in ("postgres", "s3", "mlflow"))
        if not (alive and _healthy(self.url)):
            self.command("up")

    def s3(self):
        from digitlab.stack import s3
        from digitlab.stack.layout import Layout

        return s3.client(self.state()["services"]["s3"]["endpoint"], Layout(self.dir), False)

    def pg_port(self) -> int:
        return int(self.state()["services"]["postgres"]["port"])


def _alive(pid) -> bool:
    try:
        return psutil.Process(int(pid)).status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, TypeError, ValueError):
        return False


def _healthy(url: str) -> bool:
    try:
        return requests.get(f"{url}/health", timeout=5).ok
    except requests.RequestException:
        return False


def stack_pids(stack: Stack) -> list[psutil.Process]:
    """Every process of the stack: the recorded pids and all their children."""
    found = []
    for entry in stack.state()["services"].values():
        try:
            process = psutil.Process(entry["pid"])
            found += [process, *process.children(recursive=True)]
        except (psutil.NoSuchProcess, KeyError, TypeError):
            continue
    return found


def ended(process: psutil.Process) -> bool:
    try:
        return process.status() == psutil.STATUS_ZOMBIE  # gone, waiting for a parent (PID 1 here) to reap it
    except psutil.NoSuchProcess:
        return True


# The session's stack. pytest makes a fixture imported into two modules two fixtures (each
# with its own session cache): the second one finds the stack the first started here.
_SESSION_STACK: list[Stack] = []


@pytest.fixture(scope="session")
def stack() -> Stack:
    """One running stack for the whole session (of this xdist worker), stopped and removed at its end."""
    require_stack()
    if _SESSION_STACK:
        _SESSION_STACK[0].ensure_up()
        yield _SESSION_STACK[0]
        return
    base = Path(tempfile.mkdtemp(prefix="digitlab-stack-"))
    base.chmod(0o755)  # the user postgres must reach DIR/postgres when the tests run as root
    project = base / "project"
    project.mkdir()
    (project / "dvc.yaml").write_text("stages: {}\n")
    run([str(Path(sys.executable).parent / "dvc"), "init", "--no-scm", "-q"], project)
    port = free_port()
    stack = Stack(base / "stack", project, f"http://127.0.0.1:{port}")
    try:
        result = stack.command("up", "--port", str(port), "--workers", "1")  # one worker: half the start-up on 2 cores
        assert "MLflow UI and tracking server" in result.stdout and stack.url in result.stdout, result.stdout
        _SESSION_STACK.append(stack)
        yield stack
    finally:
        _SESSION_STACK.clear()
        stack.command("down", check=False)
        for process in stack_pids(stack) if (stack.dir / "state.json").exists() else []:
            process.kill()  # only if down failed: the next test run must not find them
        shutil.rmtree(base, ignore_errors=True)


def needs_stack(test):
    """A test of the session's running stack: slow, marked ``stack`` (-m "not stack" leaves them out) and in the
    xdist group ``stack`` (under --dist loadgroup every such test runs on one worker, with one stack)."""
    return pytest.mark.slow(pytest.mark.stack(pytest.mark.xdist_group("stack")(test)))
