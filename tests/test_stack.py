"""`digitlab stack`: real PostgreSQL, moto_server and mlflow server, started, checked and stopped by the command.

The stack is the session's (tests/stack_fixtures.py), shared with tests/test_team.py: every
test leaves it up (one that stops a service starts it again).
"""

from __future__ import annotations

import os
import stat
import sys
import time
from pathlib import Path

import pytest
import yaml

from digitlab.cli import main as digitlab_main

from .conftest import ROOT, run
from .stack_fixtures import CLIENT_ENV, DIGITLAB, Stack, ended, needs_stack, stack, stack_pids  # noqa: F401 (stack: the fixture)

CONNECT_TIMEOUT = 3


@needs_stack
def test_status_secrets_and_a_run_in_postgresql_and_the_bucket(stack: Stack, monkeypatch: pytest.MonkeyPatch):
    import mlflow
    import psycopg

    status = stack.command("status")
    assert [line.split()[:2] for line in status.stdout.splitlines()[:3]] == [["postgres", "up"], ["s3", "up"], ["mlflow", "up"]]
    assert "password in" in status.stdout and stack.url in status.stdout
    user, password = stack.login()
    assert stat.S_IMODE((stack.dir / "secrets").stat().st_mode) == 0o700
    for secret in (stack.dir / "secrets").iterdir():
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600, secret
    assert password not in (stack.dir / "state.json").read_text()
    for process in stack_pids(stack):  # no password on any command line
        assert not any(password in part for part in process.cmdline()), process.cmdline()
    # Without MLflow's job runner (its Huey consumers: 2.4 GB instead of 0.5 GB, benchmarks/server_start.py).
    assert not [p.cmdline() for p in stack_pids(stack) if any("huey" in part or "_job_runner" in part for part in p.cmdline())]

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
    client = mlflow.MlflowClient(stack.url)
    run_id = client.create_run(client.create_experiment("stack-test")).info.run_id
    client.log_text(run_id, "hello team", "notes/hello.txt")
    client.set_terminated(run_id)

    database = stack.state()["services"]["postgres"]
    with psycopg.connect(host="127.0.0.1", port=database["port"], user="mlflow", dbname="mlflow",
                         passfile=str(stack.dir / "secrets" / "pgpass")) as conn:  # fmt: skip
        assert conn.execute("SELECT status FROM runs WHERE run_uuid = %s", (run_id,)).fetchone() == ("FINISHED",)
    keys = [item["Key"] for item in stack.s3().list_objects_v2(Bucket="digitlab", Prefix="mlflow/").get("Contents", [])]
    assert any(key.endswith(f"{run_id}/artifacts/notes/hello.txt") for key in keys), keys


@needs_stack
def test_up_again_reuses_the_services_and_the_bucket_is_the_dvc_remote(stack: Stack):
    before = {name: entry.get("pid") for name, entry in stack.state()["services"].items()}
    result = stack.command("up")  # as it ran: same port, same workers
    assert result.stdout.count("already running") == 3, result.stdout
    assert {name: entry.get("pid") for name, entry in stack.state()["services"].items()} == before

    local = (stack.project / ".dvc" / "config.local").read_text()
    assert "team" in local and "s3://digitlab/dvc" in local and "endpointurl" in local and "credentialpath" in local
    (stack.project / "data.txt").write_text("tracked by DVC\n")
    dvc = str(Path(sys.executable).parent / "dvc")
    run([dvc, "add", "-q", "data.txt"], stack.project)

    def keys() -> set[str]:  # the session's stack: tests/test_team.py may have pushed before
        return {item["Key"] for item in stack.s3().list_objects_v2(Bucket="digitlab", Prefix="dvc/").get("Contents", [])}

    before = keys()
    run([dvc, "push", "-q"], stack.project)
    assert len(keys() - before) == 1, keys() - before


def runs_command(stack: Stack, env: dict[str, str]):
    """`digitlab runs --stale` against the stack's server, with tracking.connect_timeout=CONNECT_TIMEOUT."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["tracking"]["connect_timeout"] = CONNECT_TIMEOUT
    path = stack.dir.parent / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    clean = {name: "" for name in CLIENT_ENV}
    started = time.monotonic()
    result = run([DIGITLAB, "runs", "--stale", "--params", str(path)], stack.project,
                 env={**clean, "MLFLOW_TRACKING_URI": stack.url, **env}, check=False, timeout=120)  # fmt: skip
    return result, time.monotonic() - started


@needs_stack
def test_a_wrong_password_is_one_line_and_exit_2_and_the_stacks_login_is_found(stack: Stack):
    result, _ = runs_command(stack, {"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": "wrong-Pa55word"})
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr, result.stderr
    assert f"MLflow tracking server {stack.url} refused the credentials of user 'admin' (HTTP 401)" in result.stderr
    assert "MLFLOW_TRACKING_PASSWORD" in result.stderr and "wrong-Pa55word" not in result.stdout + result.stderr

    result, _ = runs_command(stack, {"DIGITLAB_STACK_DIR": str(stack.dir)})  # no login set: the stack's own is used
    assert result.returncode == 0 and "no stale runs" in result.stdout, result.stdout + result.stderr

    # An existing PostgreSQL (--database-url) is logged in to before anything starts; its password stays out of the output.
    port = stack.state()["services"]["postgres"]["port"]
    other = Stack(stack.dir.parent / "external", stack.project, stack.url)
    result = other.command("up", "--database-url", f"postgresql://mlflow:wrong-Pa55word@127.0.0.1:{port}/mlflow", check=False)
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0, result.stdout + result.stderr
    assert f"PostgreSQL postgresql+psycopg://mlflow@127.0.0.1:{port}/mlflow refused the login" in result.stderr
    assert "wrong-Pa55word" not in result.stdout + result.stderr and not (other.dir / "secrets" / "pgpass-external").exists()


@needs_stack
def test_configure_takes_the_login_of_this_machines_stack(stack: Stack, monkeypatch: pytest.MonkeyPatch):
    from digitlab import tracking
    from digitlab.tracking import TrackingSettings

    for name in CLIENT_ENV:  # recorded, so that what configure sets is undone after the test
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    monkeypatch.setenv("DIGITLAB_STACK_DIR", str(stack.dir))
    assert tracking.configure(TrackingSettings(uri=stack.url.replace("127.0.0.1", "localhost"))).startswith("http://localhost")
    assert (os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]) == stack.login()


@needs_stack
def test_a_search_on_the_stack_keeps_its_study_in_postgresql(stack: Stack, monkeypatch: pytest.MonkeyPatch):
    """tracking=team: the Optuna study goes to the stack's PostgreSQL (database optuna), the password never in a URL."""
    import optuna

    from digitlab.search import default_storage, open_storage

    monkeypatch.setenv("DIGITLAB_STACK_DIR", str(stack.dir))
    monkeypatch.delenv("PGPASSFILE", raising=False)
    url = default_storage(stack.url)
    port = stack.state()["services"]["postgres"]["port"]
    assert url == f"postgresql+psycopg://mlflow@127.0.0.1:{port}/optuna" and os.environ["PGPASSFILE"] == str(stack.dir / "secrets" / "pgpass")
    name = f"stack-study-{os.getpid()}"
    study = optuna.create_study(study_name=name, storage=open_storage(url), direction="maximize")
    study.tell(study.ask({"x": optuna.distributions.FloatDistribution(0, 1)}), 0.5)
    assert optuna.load_study(study_name=name, storage=url).best_value == 0.5


@needs_stack
def test_postgresql_down_behind_the_server_is_one_line_within_the_timeout(stack: Stack, monkeypatch: pytest.MonkeyPatch):
    from digitlab import tracking
    from digitlab.errors import TrackingUnavailable
    from digitlab.stack import postgres
    from digitlab.stack.layout import Layout

    user, password = stack.login()
    postgres.stop(Layout(stack.dir))  # pg_ctl stop -m fast, as the cluster's user
    try:
        result, elapsed = runs_command(stack, {"MLFLOW_TRACKING_USERNAME": user, "MLFLOW_TRACKING_PASSWORD": password})
        assert result.returncode == 2, result.stdout + result.stderr
        assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr, result.stderr
        assert f"MLflow tracking server {stack.url} failed (HTTP 5" in result.stderr and "Connection refused" in result.stderr
        assert elapsed < CONNECT_TIMEOUT + 20, elapsed  # the command's own start-up (imports) included
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user)
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
        started = time.monotonic()
        with pytest.raises(TrackingUnavailable, match="failed \\(HTTP 5"):
            tracking.check_server(stack.url, CONNECT_TIMEOUT)
        assert time.monotonic() - started < CONNECT_TIMEOUT + 1
    finally:
        result = stack.command("up")  # PostgreSQL again; the rest is reused
    assert "postgres started" in result.stdout and result.stdout.count("already running") == 2, result.stdout
    result, _ = runs_command(stack, {"MLFLOW_TRACKING_USERNAME": user, "MLFLOW_TRACKING_PASSWORD": password})
    assert result.returncode == 0, result.stdout + result.stderr


@needs_stack
def test_down_leaves_no_process_and_up_restores_the_bucket(stack: Stack):
    stack.s3().put_object(Bucket="digitlab", Key="restore-check/object.txt", Body=b"kept across down/up")
    processes = stack_pids(stack)
    assert len(processes) >= 3
    result = stack.command("down")
    assert "objects saved" in result.stdout, result.stdout
    left = [process for process in processes if not ended(process)]
    assert not left, [process.cmdline() for process in left]
    assert (stack.dir / "s3-snapshot" / "restore-check" / "object.txt").read_bytes() == b"kept across down/up"
    assert stack.command("status", check=False).returncode == 1
    assert (stack.dir / "postgres" / "PG_VERSION").is_file()

    stack.command("up")
    assert stack.s3().get_object(Bucket="digitlab", Key="restore-check/object.txt")["Body"].read() == b"kept across down/up"
    assert stack.command("status").returncode == 0


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["stack", "up", "--port", "70000"], "--port='70000' is not valid: expected a port number from 1 to 65535"),
        (["stack", "up", "--pg-port", "x"], "--pg-port='x' is not valid: expected a port number"),
        (["stack", "up", "--bucket", "Bad_Bucket"], "--bucket='Bad_Bucket' is not valid: expected an S3 bucket name"),
        (["stack", "up", "--s3-endpoint", "ftp://h"], "--s3-endpoint='ftp://h' is not valid: expected an http(s)"),
        (["stack", "up", "--database-url", "mysql://u:secret@h/db"], "--database-url='mysql://***@h/db' is not valid"),
        (["stack", "up", "--auth", "ldap"], "--auth='ldap' is not valid: expected one of basic, none"),
        (["stack", "up", "--workers", "0"], "--workers='0' is not valid: expected a whole number from 1 to 64"),
        (["stack", "sideways"], "action='sideways' is not valid: expected one of up, down, status"),
    ],
)
def test_a_bad_option_is_one_line_and_exit_2(args, expected, capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit) as exit_info:
        digitlab_main(args)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and expected in err, err
    assert "secret" not in err


def test_pgpass_lines_round_trip(tmp_path: Path):
    from digitlab.stack.postgres import pgpass_line, pgpass_password

    (tmp_path / "pgpass").write_text(pgpass_line("127.0.0.1", "*", "mlflow", "mlflow", r"a:b\c"))
    assert pgpass_password(tmp_path / "pgpass") == r"a:b\c"
