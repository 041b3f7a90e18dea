"""What MLflow's job runner costs each ``mlflow server``: started with it and without it, side by side.

MLflow 3 starts, beside every ``mlflow server`` on a database store, a job runner and
a pool of Huey consumers for its GenAI jobs, which digitlab never submits. Every
server digitlab starts (the team stack, the tests' servers, ``make ui``) runs without
it (``digitlab.stack.server.server_env``). This script measures why: for each
setting, in alternation, a fresh SQLite store, the seconds until ``/health``
answers, and, ``--settle`` seconds later, the server's process tree (processes,
resident memory, CPU seconds since the start).

    python -m benchmarks.server_start [--repeats 3] [--settle 10] [--no-write]

Prints the medians and the ratios and writes the section "The tracking server" of
benchmarks/RESULTS.md (``--no-write``: only the JSON in ``--work-dir``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from benchmarks.sections import write_section
from digitlab.stack.procs import free_port, terminate_started
from digitlab.stack.server import JOB_RUNNER_ENV, healthy

HERE = Path(__file__).resolve().parent
SECTION_START, SECTION_END = "<!-- server-start: benchmarks/server_start.py -->", "<!-- /server-start -->"
SETTINGS = {"with the job runner (MLflow's default)": "true", "without it (digitlab)": "false"}


def start_once(work: Path, jobs: str, settle: float) -> dict:
    """One server on a fresh store with the job runner on (``jobs`` "true") or off; what its process tree costs."""
    store = Path(tempfile.mkdtemp(dir=work, prefix=f"jobs-{jobs}-"))
    port = free_port()
    command = [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
               "--backend-store-uri", f"sqlite:///{store / 'server.db'}", "--artifacts-destination", str(store / "artifacts")]  # fmt: skip
    started = time.perf_counter()
    with (store / "server.log").open("w") as log:
        server = subprocess.Popen(command, cwd=store, env={**os.environ, JOB_RUNNER_ENV: jobs}, stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)  # fmt: skip
    try:
        while not healthy(f"http://127.0.0.1:{port}"):
            if server.poll() is not None or time.perf_counter() - started > 180:
                raise SystemExit(f"mlflow server did not start:\n{(store / 'server.log').read_text()[-3000:]}")
            time.sleep(0.1)
        healthy_s = time.perf_counter() - started
        time.sleep(settle)
        tree = [psutil.Process(server.pid), *psutil.Process(server.pid).children(recursive=True)]
        return {
            "healthy_s": healthy_s, "processes": len(tree),
            "rss_mb": sum(p.memory_info().rss for p in tree) / 2**20,
            "cpu_s": sum(p.cpu_times().user + p.cpu_times().system for p in tree),
        }  # fmt: skip
    finally:
        terminate_started(server)


def markdown(results: dict) -> str:
    on, off = (results["medians"][name] for name in SETTINGS)
    rows = [f"| {name} | {m['healthy_s']:.1f} | {m['processes']:.0f} | {m['rss_mb']:.0f} | {m['cpu_s']:.1f} |"
            for name, m in results["medians"].items()]  # fmt: skip
    return "\n".join([
        SECTION_START, "## The tracking server: MLflow's job runner", "",
        f"`python -m benchmarks.server_start --repeats {results['repeats']} --settle {results['settle_s']:g}` ({results['date']}, "
        f"{results['cores']} cores): an `mlflow server` on a fresh SQLite store, with MLflow's job runner and without it, "
        f"in alternation; medians. Memory and CPU are the server's whole process tree, {results['settle_s']:g} s after `/health` answered.",
        "", "| server | s to /health | processes | RSS MB | CPU s since start |", "|---|---|---|---|---|", *rows, "",
        f"Without the job runner: {on['rss_mb'] / off['rss_mb']:.1f}x less memory, {on['cpu_s'] / off['cpu_s']:.1f}x less CPU per start, "
        f"{on['processes'] - off['processes']:.0f} fewer processes. digitlab submits no MLflow jobs; every server it starts runs without "
        f"them (`{JOB_RUNNER_ENV}=false` unless the environment sets it).",
        SECTION_END, "",
    ])  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--settle", type=float, default=10.0, help="seconds after /health before the process tree is measured")
    parser.add_argument("--work-dir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.settle < 0:
        parser.exit(2, f"{parser.prog}: error: --repeats must be at least 1 and --settle at least 0 (got {args.repeats}, {args.settle})\n")
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="digitlab-server-start-"))
    work.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[dict]] = {name: [] for name in SETTINGS}
    for repeat in range(args.repeats):
        for name, jobs in SETTINGS.items():
            runs[name].append(start_once(work, jobs, args.settle))
            m = runs[name][-1]
            print(f"[{repeat + 1}/{args.repeats}] {name}: /health after {m['healthy_s']:.1f} s, {m['processes']} processes, "
                  f"{m['rss_mb']:.0f} MB, {m['cpu_s']:.1f} CPU s", flush=True)  # fmt: skip
    medians = {name: {key: statistics.median(r[key] for r in found) for key in found[0]} for name, found in runs.items()}
    results = {"date": time.strftime("%Y-%m-%d"), "cores": psutil.cpu_count(), "repeats": args.repeats, "settle_s": args.settle,
               "runs": runs, "medians": medians}  # fmt: skip
    (work / "server_start.json").write_text(json.dumps(results, indent=2) + "\n")
    on, off = medians.values()
    print(f"memory {on['rss_mb'] / off['rss_mb']:.1f}x, CPU per start {on['cpu_s'] / off['cpu_s']:.1f}x, "
          f"processes {on['processes']:.0f} -> {off['processes']:.0f} (with the job runner / without)")  # fmt: skip
    if not args.no_write:
        write_section(args.out, markdown(results), SECTION_START, SECTION_END)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    from digitlab import interrupts

    raise SystemExit(interrupts.run_command(lambda: main(sys.argv[1:]), sys.argv[0], "what it started is stopped"))
