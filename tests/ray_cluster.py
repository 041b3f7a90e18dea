"""A real Ray cluster on 127.0.0.1 for tests and benchmarks: a head and extra nodes, each started with
``ray start --block`` in a session of its own and stopped by killing exactly its processes (never a
bare ``ray stop``, which would stop every Ray cluster of the machine)."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from .conftest import free_port

RAY = str(Path(sys.executable).parent / "ray")


def ray_unavailable() -> str | None:
    """Why a Ray cluster can't be started here, or None."""
    if not Path(RAY).is_file():
        return f"no {RAY} (pip install -e '.[ray]')"
    return None


class RayCluster:
    """``with RayCluster(nodes=2) as cluster:`` a head with ``cpus`` CPUs and ``nodes - 1`` more nodes alike."""

    def __init__(self, nodes: int = 1, cpus: int = 1, port: int | None = None) -> None:
        self.nodes, self.cpus = nodes, cpus
        self.port = port or free_port()
        # Short: Ray's unix sockets live under it (108 characters at most).
        self.temp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))
        self.processes: list[subprocess.Popen] = []
        # Token authentication, as docs/ray.md recommends; the token only in the environment (never ~/.ray/auth_token).
        self.env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32), "RAY_USAGE_STATS_ENABLED": "0"}

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _start(self, *args: str) -> subprocess.Popen:
        env = {**os.environ, **self.env}
        env.pop("RAY_ADDRESS", None)
        log = (self.temp / f"node{len(self.processes)}.log").open("w")
        cmd = [RAY, "start", "--block", "--node-ip-address", "127.0.0.1", "--num-cpus", str(self.cpus), "--disable-usage-stats",
               "--object-store-memory", str(80 * 2**20), "--dashboard-agent-listen-port", str(free_port()), *args]  # fmt: skip
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.processes.append(process)
        return process

    def start(self) -> RayCluster:
        self._start("--head", "--port", str(self.port), "--include-dashboard=false", "--temp-dir", str(self.temp / "t"),
                    "--ray-client-server-port", str(free_port()))  # fmt: skip
        self.wait_for_nodes(1)
        for number in range(1, self.nodes):  # a folder of its own: one log monitor per node, each line shown once
            self._start("--address", self.address, "--temp-dir", str(self.temp / f"n{number}"))
        self.wait_for_nodes(self.nodes)
        return self

    def wait_for_nodes(self, count: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while True:
            status = subprocess.run([RAY, "status", "--address", self.address], capture_output=True, text=True, check=False,
                                    env={**os.environ, **self.env})  # fmt: skip
            if status.returncode == 0 and status.stdout.count(" node_") >= count:
                return
            for process in self.processes:
                assert process.poll() is None, f"ray start exited {process.returncode}: {self.logs()}"
            assert time.monotonic() < deadline, f"{count} Ray node(s) not up within {timeout} s: {status.stdout}{status.stderr}{self.logs()}"
            time.sleep(1)

    def logs(self) -> str:
        return "".join(path.read_text(errors="replace")[-1500:] for path in sorted(self.temp.glob("node*.log")))

    def kill_head(self) -> None:
        """The head machine dies: its processes are SIGKILLed at once."""
        self._kill(self.processes[0])

    def _kill(self, process: subprocess.Popen) -> None:
        with_children = [process.pid]
        try:
            with_children += [child.pid for child in psutil.Process(process.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            pass
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for pid in with_children:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        process.wait(timeout=30)

    def stop(self) -> None:
        """Every process of this cluster, and nothing else: by process group, then anything still naming its folder."""
        for process in self.processes:
            self._kill(process)
        for proc in psutil.process_iter(["cmdline"]):
            try:
                if any(str(self.temp) in part for part in proc.info["cmdline"] or []):
                    proc.kill()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        self.processes.clear()

    def __enter__(self) -> RayCluster:
        try:
            return self.start()
        except BaseException:
            self.__exit__()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()
        shutil.rmtree(self.temp, ignore_errors=True)
