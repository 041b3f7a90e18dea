"""Load on the tracking store: N writer processes at once, each like one training run.

``python -m benchmarks.tracking_load`` (``make bench-tracking``). Each writer
creates a run, logs ``--steps`` steps of 5 metrics (one ``log_batch`` per step,
what digitlab's journal sends per evaluation), one 1 MB artifact, and ends the
run. Writers start together (a barrier after their imports). Stores, side by
side in one run:

- ``sqlite``: the SQLite file ``mlflow.db`` written directly by every writer
  (digitlab's default, single user);
- ``server-sqlite``: ``mlflow server`` on a SQLite file, artifacts on disk;
- ``server-postgresql``: the team stack (``digitlab stack up``): ``mlflow
  server`` (basic auth) on PostgreSQL, artifacts proxied to S3 (moto);
- ``server-postgresql-noauth``: the same with ``--auth none``, which shows what
  MLflow's basic-auth app costs per call (it checks a password's hash once per
  login and worker, then keeps the login: ``digitlab.stack.server.AUTH_CACHE_TTL_S``).

Reported per store and writer count: metrics/s over the logging phase, p50 and
p99 latency per call, errors (calls that raised), metrics lost (logged without
error but missing from the store afterwards, plus those of failed calls), and
the peak RSS of the server's process tree (PostgreSQL's own processes apart).
Results: ``benchmarks/results-tracking.json`` and a section of
``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

from digitlab.stack.procs import terminate_started
from digitlab.stack.server import server_env

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
METRICS = ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate")
STORES = ("sqlite", "server-sqlite", "server-postgresql", "server-postgresql-noauth")
SECTION_START, SECTION_END = "<!-- tracking-load: benchmarks/tracking_load.py -->", "<!-- /tracking-load -->"


@dataclass
class Target:
    """A store to load: its URI, the processes that serve it, how to stop them."""

    name: str
    uri: str
    server_pids: list[int] = field(default_factory=list)  # the MLflow server's process trees
    database_pids: list[int] = field(default_factory=list)  # PostgreSQL's
    stop: object = None


@dataclass
class Result:
    store: str
    writers: int
    calls: int
    errors: int
    metrics_expected: int
    metrics_lost: int
    seconds: float
    metrics_per_s: float
    p50_ms: float
    p99_ms: float
    server_peak_rss_mb: float | None
    database_peak_rss_mb: float | None
    first_error: str | None


# -- one writer -------------------------------------------------------------------------------------------
def writer(uri: str, experiment_id: str, steps: int, barrier, queue) -> None:
    """One run's worth of logging; puts (run_id, latencies in s, errors, first error text) on ``queue``."""
    import mlflow
    from mlflow.entities import Metric

    client = mlflow.MlflowClient(uri)
    payload = os.urandom(1 << 20)
    latencies, errors, first_error, run_id = [], 0, None, None
    barrier.wait()
    try:
        run_id = client.create_run(experiment_id).info.run_id
        for step in range(steps):
            now = int(time.time() * 1000)
            batch = [Metric(key, 1.0 / (step + 1) + i, now, step) for i, key in enumerate(METRICS)]
            started = time.perf_counter()
            try:
                client.log_batch(run_id, metrics=batch)
            except Exception as error:  # noqa: BLE001 - counted, not fatal: that is the measurement
                errors += 1
                first_error = first_error or f"{type(error).__name__}: {str(error)[:200]}"
            latencies.append(time.perf_counter() - started)
        with tempfile.TemporaryDirectory() as tmp:
            artifact = Path(tmp) / "blob.bin"
            artifact.write_bytes(payload)
            client.log_artifact(run_id, str(artifact))
        client.set_terminated(run_id, "FINISHED")
    except Exception as error:  # noqa: BLE001
        errors += 1
        first_error = first_error or f"{type(error).__name__}: {str(error)[:200]}"
    queue.put((run_id, latencies, errors, first_error))


# -- the stores ---------------------------------------------------------------------------------------------
def tree_rss(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            root = psutil.Process(pid)
            for process in [root, *root.children(recursive=True)]:
                total += process.memory_info().rss
        except psutil.Error:
            continue
    return total / 2**20


def wait_http(url: str, timeout: float = 120) -> None:
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{url}/health", timeout=2).ok:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer /health in {timeout:.0f} s")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def create_store(uri: str) -> None:
    import mlflow

    mlflow.MlflowClient(uri).search_experiments(max_results=1)  # migrate once, before the writers


def sqlite_target(work: Path) -> Target:
    uri = f"sqlite:///{work / 'mlflow.db'}"
    create_store(uri)
    return Target("sqlite", uri)


def server_sqlite_target(work: Path, workers: int) -> Target:
    create_store(f"sqlite:///{work / 'server.db'}")
    port = free_port()
    command = [
        str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
        "--workers", str(workers), "--backend-store-uri", f"sqlite:///{work / 'server.db'}",
        "--artifacts-destination", str(work / "artifacts"),
    ]  # fmt: skip
    with (work / "server.log").open("w") as log:
        server = subprocess.Popen(command, cwd=work, env=server_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    wait_http(url)

    def stop() -> None:
        terminate_started(server)  # SIGKILL after 20 s: a server whose writers were killed mid-call may not end

    return Target("server-sqlite", url, [server.pid], stop=stop)


def stack_target(work: Path, workers: int, auth: bool = True) -> Target:
    """The team stack in a folder of its own (PostgreSQL reachable by its user when we run as root)."""
    stack = Path(tempfile.mkdtemp(prefix="digitlab-load-stack-"))
    stack.chmod(0o755)
    env = {**os.environ, "DIGITLAB_STACK_DIR": str(stack), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    digitlab = [sys.executable, "-m", "digitlab.cli", "stack"]
    port = str(free_port())
    subprocess.run([*digitlab, "up", "--dir", str(stack), "--port", port, "--workers", str(workers), "--auth", "basic" if auth else "none"], cwd=work, env=env, check=True, stdout=subprocess.DEVNULL)
    state = json.loads((stack / "state.json").read_text())
    services = state["services"]
    os.environ["DIGITLAB_STACK_DIR"] = str(stack)
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):  # an earlier stack's login
        os.environ.pop(name, None)
    from digitlab.stack.client import use_stack_credentials

    use_stack_credentials(services["mlflow"]["url"])  # the writers inherit MLFLOW_TRACKING_USERNAME/PASSWORD

    def stop() -> None:
        subprocess.run([*digitlab, "down", "--dir", str(stack)], cwd=work, env=env, check=False, stdout=subprocess.DEVNULL)
        shutil.rmtree(stack, ignore_errors=True)

    postgres = services.get("postgres", {}).get("pid")
    return Target("server-postgresql" if auth else "server-postgresql-noauth", services["mlflow"]["url"], [services["mlflow"]["pid"]], [postgres] if postgres else [], stop)


# -- one measurement -----------------------------------------------------------------------------------------
class PeakRss(threading.Thread):
    def __init__(self, pids: list[int]) -> None:
        super().__init__(daemon=True)
        self.pids, self.peak, self.done = pids, 0.0, threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.peak = max(self.peak, tree_rss(self.pids))
            self.done.wait(0.2)


def measure(target: Target, writers: int, steps: int) -> Result:
    import mlflow

    experiment_id = mlflow.MlflowClient(target.uri).create_experiment(f"load-{writers}-{time.time_ns()}")
    context = mp.get_context("spawn")
    barrier, queue = context.Barrier(writers + 1), context.Queue()
    processes = [context.Process(target=writer, args=(target.uri, experiment_id, steps, barrier, queue)) for _ in range(writers)]
    monitors = [PeakRss(pids) for pids in (target.server_pids, target.database_pids)]
    try:
        for process in processes:
            process.start()
        for monitor in monitors:
            monitor.start()
        barrier.wait()  # every writer has imported MLflow: the clock starts now
        started = time.perf_counter()
        reports = [queue.get(timeout=1800) for _ in processes]
        seconds = time.perf_counter() - started
        for process in processes:
            process.join(timeout=60)
    finally:  # a stop or an error: no writer outlives the measurement
        for monitor in monitors:
            monitor.done.set()
        for process in processes:
            if process.is_alive():
                process.kill()
                process.join(timeout=5)
    return summarise(target, writers, steps, reports, seconds, [m.peak for m in monitors])


def summarise(target: Target, writers: int, steps: int, reports: list, seconds: float, peaks: list[float]) -> Result:
    import mlflow

    client = mlflow.MlflowClient(target.uri)
    latencies = sorted(latency for _, lats, _, _ in reports for latency in lats)
    expected = writers * steps * len(METRICS)
    stored = sum(len(client.get_metric_history(run_id, key)) for run_id, *_ in reports if run_id for key in METRICS)
    errors = sum(errs for _, _, errs, _ in reports)
    first_error = next((err for *_, err in reports if err), None)
    quantile = lambda q: round(1000 * latencies[min(len(latencies) - 1, int(q * len(latencies)))], 1) if latencies else float("nan")  # noqa: E731
    return Result(
        target.name, writers, len(latencies), errors, expected, expected - stored, round(seconds, 2), round(stored / seconds, 1),
        quantile(0.5), quantile(0.99), round(peaks[0], 1) if target.server_pids else None,
        round(peaks[1], 1) if target.database_pids else None, first_error,
    )  # fmt: skip


# -- the run -------------------------------------------------------------------------------------------------
def markdown(results: list[Result], args: argparse.Namespace, started: str) -> str:
    cpu = platform.processor() or platform.machine()
    lines = [
        SECTION_START,
        "## Tracking store under load",
        "",
        f"Run {started} on {cpu}, {os.cpu_count()} cores. Command: `python -m benchmarks.tracking_load "
        f"--writers {' '.join(map(str, args.writers))} --steps {args.steps} --retries {args.retries}`. Each writer process: one run, {args.steps} steps x "
        f"{len(METRICS)} metrics (one `log_batch` per step), one 1 MB artifact; all start together. "
        f"Servers: `mlflow server --workers {args.server_workers}`. Lost = metrics missing from the store afterwards.",
        "",
        "| store | writers | metrics/s | p50 ms | p99 ms | errors | metrics lost | server peak RSS MB | PostgreSQL peak RSS MB | seconds |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        server = "-" if r.server_peak_rss_mb is None else f"{r.server_peak_rss_mb:,.0f}"
        database = "-" if r.database_peak_rss_mb is None else f"{r.database_peak_rss_mb:,.0f}"
        lines.append(
            f"| {r.store} | {r.writers} | {r.metrics_per_s:,.0f} | {r.p50_ms} | {r.p99_ms} | {r.errors} | {r.metrics_lost} | "
            f"{server} | {database} | {r.seconds} |"
        )
    errors = [f"- {r.store}, {r.writers} writers: {r.first_error}" for r in results if r.first_error]
    if errors:
        lines += ["", "First error of each case that had errors:", "", *errors]
    return "\n".join([*lines, SECTION_END, ""])


def write_section(path: Path, section: str) -> None:
    """This script's section of RESULTS.md, in place of its previous one."""
    from benchmarks.sections import write_section as write

    write(path, section, SECTION_START, SECTION_END)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--writers", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--stores", nargs="+", choices=STORES, default=list(STORES))
    parser.add_argument("--server-workers", type=int, default=4, help="mlflow server --workers")
    parser.add_argument("--retries", type=int, default=2, help="MLFLOW_HTTP_REQUEST_MAX_RETRIES of the writers (digitlab's stages: 2)")
    parser.add_argument("--out-dir", type=Path, default=HERE)
    return parser.parse_args(argv)


def make_target(store: str, work: Path, workers: int) -> Target:
    if store == "sqlite":
        return sqlite_target(work)
    if store == "server-sqlite":
        return server_sqlite_target(work, workers)
    return stack_target(work, workers, auth=store == "server-postgresql")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    # The client's retries as digitlab's stages set them (tracking.configure): an error is a call that failed after them.
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(args.retries)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # as digitlab's stages: its thread races log_batch
    results = []
    for store in args.stores:
        for writers in args.writers:
            with tempfile.TemporaryDirectory(prefix="digitlab-load-") as tmp:
                target = make_target(store, Path(tmp), args.server_workers)
                try:
                    print(f"{store}: {writers} writers x {args.steps} steps ...", flush=True)
                    result = measure(target, writers, args.steps)
                finally:
                    if target.stop:
                        target.stop()
            print(f"  {result.metrics_per_s:,.0f} metrics/s, p50 {result.p50_ms} ms, p99 {result.p99_ms} ms, "
                  f"{result.errors} errors, {result.metrics_lost} lost", flush=True)  # fmt: skip
            results.append(result)
            section = write_results(results, args, started)  # after each case: a stopped run keeps what it measured
    print(section)


def write_results(results: list, args: argparse.Namespace, started: str) -> str:
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "results-tracking.json").write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")
    section = markdown(results, args, started)
    write_section(args.out_dir / "RESULTS.md", section)
    return section


if __name__ == "__main__":
    from digitlab import interrupts

    interrupts.run_command(lambda: main(sys.argv[1:]), sys.argv[0], "what it started is stopped")
