"""Team mode used for real, end to end, on 127.0.0.1: `digitlab stack` itself, then a project's pipeline, its data
and its models on the stack.

`digitlab stack` (real PostgreSQL, moto_server and mlflow server) is started, checked and stopped by the command;
the stack is the session's (tests/stack_fixtures.py), and every test leaves it up (one that stops a service starts
it again). The stack tests and the team story share this module so that the worker that runs them starts the
stack once (pytest-xdist's --dist loadfile hands out whole modules).

One project (a git clone of this repository plus its uncommitted work, tiny settings on
the 8x8 digits, one recipe) runs its pipeline once against the stack: the runs, artifacts
and registered model land in the stack's PostgreSQL and bucket, a second clone pulls the
data and models from the bucket (DVC remote ``team``) and has nothing to recompute, two
queued experiments and a two-job sweep log to the server at once, and four first-time
writers create a fresh PostgreSQL store together.
"""

from __future__ import annotations

import os
import re
import secrets
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from digitlab.cli import main as digitlab_main

from .conftest import ROOT, command_lines, job_runner_lines, run, start_queue, user_env
from .stack_fixtures import CLIENT_ENV, DIGITLAB, Stack, ended, needs_stack, stack, stack_pids  # noqa: F401 (stack: the fixture)
from .test_pipeline_e2e import GIT, make_project, stages_run, wait_for_queue

EXPERIMENT = "digitlab-digits"  # tracking.experiment null: digitlab-<dataset>
REGISTERED = "digitlab-digits"  # report.registered_model_name: digitlab-${dataset.name}
# The recipes the team project trains, with TINY's epochs. One: the story (runs, artifacts, a champion, a pull that
# recomputes nothing, a queue and a sweep at once) is the same with one recipe as with three (the e2e module runs
# all three), and each more recipe is two more stage processes at every step of it.
EPOCHS = {"linear": 2}


def team_env(stack: Stack) -> dict[str, str]:
    """A user's environment on the stack's machine: no login of their own, the stack found through $DIGITLAB_STACK_DIR."""
    return {**{name: "" for name in CLIENT_ENV}, "DIGITLAB_STACK_DIR": str(stack.dir)}


def pipeline_run(stack: Stack, project: Path) -> dict:
    """The project, the stack's bucket its DVC remote, after one `dvc exp run` of the whole pipeline on the stack."""
    stack.ensure_up()
    make_project(project, tuple(EPOCHS))
    env = team_env(stack)
    up = stack.command("up", cwd=project)  # reuses the running services; writes the project's DVC remote
    assert up.stdout.count("already running") == 3, up.stdout
    assert "s3://digitlab/dvc" in (project / ".dvc" / "config.local").read_text()
    experiment = run(["dvc", "exp", "run", "-S", "tracking=team", "-S", f"tracking.uri={stack.url}", "-S", "report.register_alias=champion"],
                     project, env=env, check=False, timeout=900)  # fmt: skip
    return {"project": project, "env": env, "experiment": experiment}


@pytest.fixture
def client(stack: Stack, monkeypatch: pytest.MonkeyPatch):
    """An MLflow client of the stack's server, logged in with the stack's login."""
    import mlflow

    stack.ensure_up()
    user, password = stack.login()
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
    return mlflow.MlflowClient(tracking_uri=stack.url, registry_uri=stack.url)


def write_digit_png(path: Path) -> Path:
    """An 8x8 grey PNG of the first of scikit-learn's digits (a 0), as a user's own image."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    pixels = (load_digits().images[0] * (255.0 / 16.0)).round().astype(np.uint8)
    Image.fromarray(pixels, mode="L").save(path)
    return path


@needs_stack
@pytest.mark.timeout(2400)  # one story: a pipeline run, then a second clone beside a 2-job queue and a 2-job sweep
def test_a_project_on_the_team_stack(stack: Stack, client, tmp_path: Path):
    """One test, run in order: the pipeline's runs, artifacts and champion on the stack; its data and models pushed
    and committed; then, at once, two queued experiments, a two-job sweep and a second clone that pulls everything
    and recomputes nothing. (One test, not a module fixture shared by several: ``--dist loadgroup`` does not group
    with pytest 9.2 and xdist 3.8, pytest-xdist#1386, and tests spread over workers would each run the pipeline.)"""
    team = pipeline_run(stack, tmp_path / "project")
    logs_runs_artifacts_and_champion(team, stack, client, tmp_path)
    push_and_commit(team, stack)
    started = start_queued_experiments_and_a_sweep(team, stack)
    try:
        # The clone is a repository of its own: it pulls while the queue's copies and the sweep train.
        second_clone_pulls_everything_and_recomputes_nothing(team, stack, tmp_path)
        queued_experiments_and_a_sweep_at_once(team, client, started)
    finally:
        if started["sweep"].poll() is None:
            started["sweep"].kill()


def logs_runs_artifacts_and_champion(team: dict, stack: Stack, client, tmp_path: Path) -> None:
    result = team["experiment"]
    assert result.returncode == 0, f"dvc exp run exited {result.returncode}\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    expected = {"download", "preprocess", *(f"{s}@{m}" for s in ("train", "evaluate") for m in EPOCHS), "report"}
    assert stages_run(result.stdout) == expected

    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert experiment is not None, [e.name for e in client.search_experiments()]
    found = client.search_runs([experiment.experiment_id])
    training = {run_.data.tags.get("model"): run_ for run_ in found if run_.data.tags.get("model") in EPOCHS}
    assert sorted(training) == sorted(EPOCHS), [(r.info.run_name, r.data.tags.get("model")) for r in found]
    for model, run_ in training.items():
        assert run_.info.status == "FINISHED", (model, run_.info.status)
        history = client.get_metric_history(run_.info.run_id, "val_accuracy")
        steps = sorted(point.step for point in history)  # before training (0), then one per epoch
        assert steps == list(range(EPOCHS[model] + 1)), (model, steps)
        assert 0.0 <= run_.data.metrics["test_accuracy"] <= 1.0, (model, run_.data.metrics)
    (report,) = [run_ for run_ in found if run_.info.run_name == "report"]
    assert report.info.status == "FINISHED"

    # Artifacts went through the server into the bucket, under mlflow/.
    keys = []
    for page in stack.s3().get_paginator("list_objects_v2").paginate(Bucket="digitlab", Prefix="mlflow/"):
        keys += [item["Key"] for item in page.get("Contents", [])]
    for run_ in (*training.values(), report):
        assert any(f"/{run_.info.run_id}/" in key for key in keys), (run_.info.run_name, len(keys))
    assert any(key.endswith("model.keras") for key in keys), "no logged Keras model in the bucket"

    champion = client.get_model_version_by_alias(REGISTERED, "champion")
    assert champion.run_id in {run_.info.run_id for run_ in training.values()}

    # A user predicts with the champion from the registry: the server hands the model over from the bucket.
    image = write_digit_png(tmp_path / "digit.png")
    predicted = run(["digitlab", "predict", str(image), "--model", f"models:/{REGISTERED}@champion"], team["project"], env=team["env"],
                    check=False, timeout=300)  # fmt: skip
    assert predicted.returncode == 0, predicted.stdout + predicted.stderr
    assert re.search(rf"^{re.escape(str(image))}: [0-9]\b", predicted.stdout, re.MULTILINE), predicted.stdout


def push_and_commit(team: dict, stack: Stack) -> None:
    project, env = team["project"], team["env"]
    stack.ensure_up()
    run(["dvc", "push"], project, env=env, timeout=300)
    run([*GIT, "add", "-A"], project)
    run([*GIT, "commit", "-qm", "pipeline run on the team stack"], project)
    dvc_keys = stack.s3().list_objects_v2(Bucket="digitlab", Prefix="dvc/").get("KeyCount", 0)
    assert dvc_keys > 0


def second_clone_pulls_everything_and_recomputes_nothing(team: dict, stack: Stack, tmp_path: Path) -> None:
    project, env = team["project"], team["env"]
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(project), str(clone)], tmp_path)
    up = stack.command("up", cwd=clone)
    assert up.stdout.count("already running") == 3, up.stdout
    run(["dvc", "pull"], clone, env=env, timeout=300)
    assert (clone / "data" / "prepared" / "meta.json").is_file()
    for model in EPOCHS:
        assert (clone / "models" / model / "model.keras").stat().st_size > 0
    status = run(["dvc", "status"], clone, env=env)
    assert "Data and pipelines are up to date" in status.stdout, status.stdout
    repro = run(["dvc", "repro"], clone, env=env, timeout=300)
    assert stages_run(repro.stdout) == set(), repro.stdout
    assert "Data and pipelines are up to date" in repro.stdout, repro.stdout


QUEUED = {"team-q1": 1, "team-q3": 3}  # queued experiment: the linear recipe's epochs


def start_queued_experiments_and_a_sweep(team: dict, stack: Stack) -> dict:
    """Two experiments queued and started two at a time, and a sweep started beside them; returns the sweep's process."""
    project, env = team["project"], team["env"]
    stack.ensure_up()
    epochs = QUEUED
    for name, count in epochs.items():
        run(["dvc", "exp", "run", "--queue", "-n", name, "-S", "tracking=team", "-S", f"tracking.uri={stack.url}",
             "-S", f"models.linear.training.epochs={count}"], project, env=env)  # fmt: skip
    start_queue(project, env)
    # Meanwhile a Hydra sweep, two jobs at once (joblib), on the project's prepared data: four trainings log to the
    # server at once. Seeds of its own: a recipe, dataset and seed has one checkpoint folder, and team-q1 trains the same
    # linear recipe at the same time (README "Reliability": not guaranteed).
    assert (project / "data" / "prepared" / "meta.json").is_file()
    sweep_log = project.parent / "sweep.log"
    with sweep_log.open("w") as output:
        sweeping = subprocess.Popen(
            [sys.executable, "-m", "pipeline.train", "-m", "model=linear", "seed=7,8", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
             "hydra.sweep.dir=multirun/team", "tracking=team", f"tracking.uri={stack.url}", "tracking.experiment=team-sweep",
             "tracking.log_models=false", "models.linear.training.epochs=1"],
            cwd=project, env=user_env(env),
            stdout=output, stderr=subprocess.STDOUT)  # fmt: skip
    return {"sweep": sweeping, "sweep_log": sweep_log}


def queued_experiments_and_a_sweep_at_once(team: dict, client, started: dict) -> None:
    project, env, epochs = team["project"], team["env"], QUEUED
    status = wait_for_queue(project, env)
    swept = started["sweep"].wait(timeout=600)
    assert swept == 0, f"the sweep exited {swept}:\n{started['sweep_log'].read_text()[-4000:]}"
    for name in epochs:
        line = next((line for line in status.splitlines() if name in line), "")
        assert "Success" in line, f"{name}:\n{status}\n{run(['dvc', 'queue', 'logs', name], project, env=env, check=False).stdout[-4000:]}"
    experiment = client.get_experiment_by_name(EXPERIMENT)
    for name, count in epochs.items():
        found = client.search_runs([experiment.experiment_id], filter_string=f"tags.dvc_experiment = '{name}'")
        (linear,) = [run_ for run_ in found if run_.data.tags.get("model") == "linear"]
        assert linear.info.status == "FINISHED"
        assert sorted(point.step for point in client.get_metric_history(linear.info.run_id, "val_accuracy")) == list(range(count + 1))

    # The sweep's runs.
    sweep = client.get_experiment_by_name("team-sweep")
    found = client.search_runs([sweep.experiment_id])
    (parent,) = [run_ for run_ in found if run_.data.tags.get("sweep") == "true"]
    children = [run_ for run_ in found if run_.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert parent.info.status == "FINISHED" and len(found) == 3, [(r.info.run_name, r.info.status) for r in found]
    assert sorted(child.data.params["seed"] for child in children) == ["7", "8"], [c.data.params for c in children]
    assert all(child.info.status == "FINISHED" for child in children), [(c.info.run_name, c.info.status) for c in children]


WRITER = """
import sys
import time
from pathlib import Path

import mlflow
import sqlalchemy

from digitlab import tracking
from digitlab.tracking import TrackingSettings

uri, ready, go = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
ready.touch()  # imported: wait for the others, then all configure the empty store at once
while not go.exists():
    time.sleep(0.005)
settings = TrackingSettings(uri=uri, experiment="first-writers")
tracking.configure(settings)
run = tracking.start_run(settings, "linear", "digits")
mlflow.MlflowClient().set_terminated(run.info.run_id)
print(run.info.run_id)
"""


@needs_stack
def test_four_first_time_writers_create_a_fresh_postgresql_store_once(stack: Stack, tmp_path: Path):
    import psycopg
    from psycopg import sql

    from digitlab.stack.layout import write_secret
    from digitlab.stack.postgres import pgpass_line, pgpass_password

    stack.ensure_up()
    port, password = stack.pg_port(), pgpass_password(stack.dir / "secrets" / "pgpass")
    name = f"fresh_{secrets.token_hex(4)}"
    login = {"host": "127.0.0.1", "port": port, "user": "mlflow", "password": password, "connect_timeout": 10}
    with psycopg.connect(dbname="mlflow", autocommit=True, **login) as conn:
        may_create = conn.execute("SELECT rolcreatedb FROM pg_roles WHERE rolname = current_user").fetchone()[0]
        if may_create:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    if not may_create:  # as the cluster's superuser, over its Unix socket (trust; only its owner and root reach it)
        with psycopg.connect(host=str(stack.dir / "postgres"), port=port, user="postgres", dbname="postgres", autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {} OWNER mlflow").format(sql.Identifier(name)))
    # The stack's pgpass names its database (mlflow): the same login for any database of the cluster.
    passfile = write_secret(tmp_path / "pgpass", pgpass_line("127.0.0.1", "*", "*", "mlflow", password))
    uri = f"postgresql+psycopg://mlflow@127.0.0.1:{port}/{name}"

    env = {**team_env(stack), "PGPASSFILE": str(passfile)}
    go = tmp_path / "go"
    writers, logs = [], []
    for index in range(4):
        logs.append((tmp_path / f"writer-{index}.log").open("w+"))
        writers.append(subprocess.Popen([sys.executable, "-c", WRITER, uri, str(tmp_path / f"ready-{index}"), str(go)], cwd=tmp_path,
                                        env={**os.environ, **env}, stdout=logs[-1], stderr=subprocess.STDOUT))  # fmt: skip
    deadline = time.monotonic() + 180
    while not all((tmp_path / f"ready-{index}").exists() for index in range(4)):
        assert all(writer.poll() is None for writer in writers) and time.monotonic() < deadline, "a writer ended or hung before the start"
        time.sleep(0.05)
    go.touch()
    codes = [writer.wait(timeout=300) for writer in writers]
    outputs = []
    for log in logs:
        log.seek(0)
        outputs.append(log.read())
        log.close()
    assert codes == [0, 0, 0, 0], "\n---\n".join(output[-3000:] for output in outputs)

    with psycopg.connect(dbname=name, **login) as conn:
        assert conn.execute("SELECT count(*) FROM experiments WHERE name = 'first-writers'").fetchone() == (1,)
        count = conn.execute("SELECT count(*), count(DISTINCT experiment_id), min(status), max(status) FROM runs").fetchone()
        assert count[0] == 4 and count[1] == 1 and count[2] == count[3] == "FINISHED", count
        assert conn.execute("SELECT count(*) FROM alembic_version").fetchone() == (1,)
    run_ids = {output.strip().splitlines()[-1] for output in outputs}
    assert len(run_ids) == 4, outputs


# `digitlab stack` itself: status, secrets, reuse, logins, a study, outages, down and up.

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
    for line in command_lines(stack_pids(stack)):  # no password on any command line
        assert not any(password in part for part in line), line
    # Without MLflow's job runner (its Huey consumers: 2.4 GB instead of 0.5 GB, benchmarks/server_start.py).
    assert not job_runner_lines(stack_pids(stack))

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
def test_the_server_keeps_a_verified_login_and_refuses_a_changed_password_at_once(stack: Stack):
    """The auth app keeps the logins it verified (it would check the password's hash on every request, which made the
    team server 12x slower); a wrong password is still refused, and so is the old one as soon as it is changed."""
    import requests

    from digitlab.stack.layout import Layout, read_ini
    from digitlab.stack.server import AUTH_CACHE_TTL_S

    assert read_ini(Layout(stack.dir).auth_config)["mlflow"]["auth_cache_ttl_seconds"] == str(AUTH_CACHE_TTL_S)
    api, admin = f"{stack.url}/api/2.0/mlflow", stack.login()
    user, first, second = f"probe-{secrets.token_hex(4)}", secrets.token_urlsafe(12), secrets.token_urlsafe(12)
    requests.post(f"{api}/users/create", json={"username": user, "password": first}, auth=admin, timeout=60).raise_for_status()

    def answer(password: str) -> int:
        return requests.get(f"{api}/experiments/search", params={"max_results": 1}, auth=(user, password), timeout=60).status_code

    assert [answer(first), answer(first), answer(second)] == [200, 200, 401]  # the second 200: the kept login
    requests.patch(f"{api}/users/update-password", json={"username": user, "password": second}, auth=admin, timeout=60).raise_for_status()
    assert [answer(first), answer(second)] == [401, 200]  # the stack's one worker served the change: nothing stale
    requests.delete(f"{api}/users/delete", json={"username": user}, auth=admin, timeout=60).raise_for_status()
    assert answer(second) == 401


def test_an_auth_config_made_before_the_login_cache_gets_it_and_keeps_the_rest(tmp_path: Path):
    from digitlab.stack.layout import Layout, ini_text, read_ini, write_secret
    from digitlab.stack.server import AUTH_CACHE_TTL_S, ensure_auth

    layout = Layout(tmp_path / "stack")
    old = {"default_permission": "READ", "admin_username": "admin", "admin_password": "kept-Pa55word",
           "authorization_function": "mlflow.server.auth:authenticate_request_basic_auth"}  # fmt: skip
    write_secret(layout.auth_config, ini_text({"mlflow": old}))
    write_secret(layout.mlflow_credentials, ini_text({"mlflow": {"mlflow_tracking_username": "admin", "mlflow_tracking_password": "kept-Pa55word"}}))
    assert ensure_auth(layout) == "admin"
    assert dict(read_ini(layout.auth_config)["mlflow"]) == {**old, "auth_cache_ttl_seconds": str(AUTH_CACHE_TTL_S)}
    assert stat.S_IMODE(layout.auth_config.stat().st_mode) == 0o600

    write_secret(layout.auth_config, ini_text({"mlflow": {**old, "auth_cache_ttl_seconds": "0"}}))  # the user turned it off
    ensure_auth(layout)
    assert read_ini(layout.auth_config)["mlflow"]["auth_cache_ttl_seconds"] == "0"


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

    from digitlab.search import default_storage, open_storage, quiet_heartbeats

    monkeypatch.setenv("DIGITLAB_STACK_DIR", str(stack.dir))
    monkeypatch.delenv("PGPASSFILE", raising=False)
    url = default_storage(stack.url)
    port = stack.state()["services"]["postgres"]["port"]
    assert url == f"postgresql+psycopg://mlflow@127.0.0.1:{port}/optuna" and os.environ["PGPASSFILE"] == str(stack.dir / "secrets" / "pgpass")
    name = f"stack-study-{os.getpid()}"
    study = optuna.create_study(study_name=name, storage=open_storage(url), direction="maximize")
    with quiet_heartbeats():  # Optuna's ask-and-tell on a storage with heartbeats, as the search uses it
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
    import requests

    from digitlab.stack.layout import Layout, ini_text, read_ini, write_secret
    from digitlab.stack.server import AUTH_CACHE_TTL_S

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
    # The auth config of a stack made before the login cache: `up` adds the setting as it starts the server again.
    auth_config = Layout(stack.dir).auth_config
    older = read_ini(auth_config)
    older.remove_option("mlflow", "auth_cache_ttl_seconds")
    write_secret(auth_config, ini_text({"mlflow": dict(older["mlflow"])}))

    stack.command("up")
    assert stack.s3().get_object(Bucket="digitlab", Key="restore-check/object.txt")["Body"].read() == b"kept across down/up"
    assert stack.command("status").returncode == 0
    assert read_ini(auth_config)["mlflow"]["auth_cache_ttl_seconds"] == str(AUTH_CACHE_TTL_S)
    answered = requests.get(f"{stack.url}/api/2.0/mlflow/experiments/search", params={"max_results": 1}, auth=stack.login(), timeout=60)
    assert answered.status_code == 200, answered.text[:300]


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
