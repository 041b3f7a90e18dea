"""digitlab's Optuna search (hydra/sweeper=digitlab_optuna): a persistent study that resumes after Ctrl-C,
is shared by concurrent processes, prunes hopeless trials, and opens in optuna-dashboard.

Real Hydra multiruns of ``python -m pipeline.train`` on a tiny dataset, a real SQLite study and MLflow store.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from wsgiref.simple_server import WSGIRequestHandler, make_server

import mlflow
import optuna
import pytest
import requests
from optuna.trial import TrialState

from digitlab.errors import ConfigError
from digitlab.search import PID_ATTR, PRUNED_ATTR, Search, SearchOptions, parse_space, quiet_heartbeats
from tests.conftest import ctrl_c_at_a_random_moment, run

TINY = [
    "dataset=digits", "models.mlp.model.hidden_units=[16]", "models.mlp.training.epochs=1",
    "tracking.log_models=false", "tracking.experiment=search-tests", "hydra/job_logging=disabled",
]  # fmt: skip
# A search of the user's own, in their conf/: the mlp's learning rate only.
SEARCH_FILE = """# @package _global_
defaults:
  - override /hydra/sweeper: digitlab_optuna
model: mlp
hydra:
  sweeper:
    params:
      models.mlp.optimizer.learning_rate: tag(log, interval(0.000001, 0.1))
"""
SEARCH = ["hparams_search=learning_rate"]


@pytest.fixture
def search_env(project: Path, tiny_prepared: Path, _mlflow_template: Path) -> dict:
    (project / "data").mkdir()
    (project / "data" / "prepared").symlink_to(tiny_prepared)
    shutil.copy2(_mlflow_template, project / "mlflow.db")
    (project / "conf" / "hparams_search" / "learning_rate.yaml").write_text(SEARCH_FILE)
    uri = f"sqlite:///{project / 'mlflow.db'}"
    return {"project": project, "uri": uri, "study_db": f"sqlite:///{project / 'optuna.db'}", "env": {"MLFLOW_TRACKING_URI": uri}}


def command(*overrides: str) -> list[str]:
    return [sys.executable, "-m", "pipeline.train", "-m", *SEARCH, *TINY, *overrides]


def mlflow_runs(uri: str):
    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("search-tests").experiment_id])
    parents = [r for r in runs if r.data.tags.get("sweep") == "true"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return parents, children


def test_search_space_forms_and_one_line_errors() -> None:
    space = parse_space(
        {"a": "tag(log, interval(0.0001, 0.1))", "b": "choice(16, 32)", "c": "tag(int, interval(1, 4))",
         "d": "choice([16],[32,16])", "e": "range(1, 7, 2)", "f": "7"},
        ["model=linear,mlp", "seed=3"],
    )  # fmt: skip
    dist = space.distributions
    assert dist["a"].log and (dist["a"].low, dist["a"].high) == (0.0001, 0.1)
    assert isinstance(dist["c"], optuna.distributions.IntDistribution) and (dist["c"].low, dist["c"].high) == (1, 4)
    assert dist["d"].choices == ("[16]", "[32,16]") and dist["e"].choices == (1, 3, 5) and dist["model"].choices == ("linear", "mlp")
    assert space.fixed == ["f=7", "seed=3"]
    assert space.overrides({"a": 0.001, "d": "[32,16]", "model": "mlp"}) == ["f=7", "seed=3", "a=0.001", "d=[32,16]", "model=mlp"]
    for bad, expected in [({"a": "interval(1, 0)"}, "hydra.sweeper.params.a='interval(1, 0)'"),
                          ({"a": "tag(log, interval(0, 1))"}, "0 < low"), ({"a": "choice(1,"}, "choice(a, b, ...)"), ({}, "at least one")]:  # fmt: skip
        with pytest.raises(ConfigError, match=expected.replace("(", r"\(").replace(")", r"\)")):
            parse_space(bad, [])


def test_ctrl_c_at_any_moment_of_asking_leaves_no_trial_without_its_owner(tmp_path: Path) -> None:
    """A Ctrl-C between Optuna creating a trial and the search marking it as its own left the trial RUNNING
    with no owner: never failed, never retried, counted towards n_trials for good (the same command then ran
    one trial too few). Ctrl-C at random moments of asking, on a real SQLite study: every RUNNING trial is
    marked and in flight; a trial left RUNNING by Optuna's own API (as by a process killed there) is failed,
    not counted and not retried."""
    options = SearchOptions(study_name="asking", n_trials=10_000, n_jobs=2, sampler="random", seed=0)
    search = Search(options, f"sqlite:///{tmp_path / 'optuna.db'}", parse_space({"x": "interval(0, 1)"}, []), None, tmp_path)

    def ask_again_and_again() -> None:
        deadline = time.monotonic() + 10  # the stop comes within 0.1 s
        while time.monotonic() < deadline:
            search.ask()

    chance = random.Random(0)
    for attempt in range(30):
        ctrl_c_at_a_random_moment(ask_again_and_again, chance, 0.1)
        running = search.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        assert all(t.user_attrs.get(PID_ATTR) == os.getpid() for t in running), f"stop {attempt}: a trial without its owner"
        assert {t.number for t in running} == set(search.in_flight), f"stop {attempt}"
    counted = search.counted()
    with quiet_heartbeats():  # Optuna's own API on a storage with heartbeats, as the search uses it
        orphan = search.study.ask()  # RUNNING, no owner
        assert search.counted() == counted + 1
        assert search.recover() == []
    assert search.storage.get_trial(orphan._trial_id).state == TrialState.FAIL and search.counted() == counted
    assert not search.study.get_trials(deepcopy=False, states=(TrialState.WAITING,)), "nothing to retry: it never ran"


@pytest.mark.slow
def test_ctrl_c_then_the_same_command_continues_the_study_under_the_same_parent(search_env: dict) -> None:
    project, env = search_env["project"], {**os.environ, **search_env["env"]}
    argv = command("hydra.sweeper.study_name=resume", "hydra.sweeper.n_trials=4", "hydra.sweeper.pruner.name=none")
    with (project / "first.log").open("w") as log:
        first = subprocess.Popen(argv, cwd=project, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while completed(search_env, "resume") < 2:
        assert first.poll() is None, (project / "first.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "no 2 trials within 300 s"
        time.sleep(0.2)
    first.send_signal(signal.SIGINT)  # Ctrl-C
    first.wait(timeout=120)
    text = (project / "first.log").read_text()
    assert first.returncode == 130 and "Traceback" not in text, text[-3000:]
    assert text.rstrip().endswith("digitlab: interrupted; run the same command again to continue"), text[-3000:]
    before = completed(search_env, "resume")
    assert 2 <= before < 4

    second = run(argv, project, env=search_env["env"])
    assert f"{before} of 4 trials already counted" in second.stderr + second.stdout
    study = optuna.load_study(study_name="resume", storage=search_env["study_db"])
    states = [t.state for t in study.trials]
    assert states.count(TrialState.COMPLETE) == 4, states
    parents, children = mlflow_runs(search_env["uri"])
    assert len(parents) == 1 and parents[0].info.status == "FINISHED", [p.info.status for p in parents]
    finished = [c for c in children if c.info.status == "FINISHED"]
    assert len(finished) == 4 and all(c.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for c in children)
    assert sorted(int(c.data.tags["optuna.trial"]) for c in finished) == sorted(t.number for t in study.trials if t.state == TrialState.COMPLETE)


@pytest.mark.slow
def test_two_processes_share_one_study(search_env: dict) -> None:
    project, env = search_env["project"], {**os.environ, **search_env["env"]}
    argv = command("hydra.sweeper.study_name=shared", "hydra.sweeper.n_trials=4", "hydra.sweeper.pruner.name=none")
    processes = [subprocess.Popen(argv, cwd=project, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for process in processes:
        _, err = process.communicate(timeout=600)
        assert process.returncode == 0, err[-3000:]
    study = optuna.load_study(study_name="shared", storage=search_env["study_db"])
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 4, "together: the study's n_trials, no more"
    assert len({t.user_attrs["digitlab.pid"] for t in study.trials}) == 2, "both processes ran trials"
    assert len({t.params["models.mlp.optimizer.learning_rate"] for t in study.trials}) == 4, "no trial drawn twice"
    parents, children = mlflow_runs(search_env["uri"])
    assert len(parents) == 1 and len(children) == 4


@pytest.mark.slow
def test_a_hopeless_trial_is_pruned_and_the_dashboard_opens_the_study(search_env: dict) -> None:
    # The study is made beforehand with Optuna's own API, as a user may: two trials enqueued,
    # a good learning rate, then a hopeless one that the median pruner stops.
    study = optuna.create_study(study_name="prune", storage=search_env["study_db"], direction="maximize")
    for rate in (0.05, 1e-6):
        study.enqueue_trial({"models.mlp.optimizer.learning_rate": rate})
    run(command("hydra.sweeper.study_name=prune", "hydra.sweeper.n_trials=2", "models.mlp.training.epochs=6",
                "hydra.sweeper.pruner.n_startup_trials=1", "hydra.sweeper.pruner.n_warmup_steps=1"),
        search_env["project"], env=search_env["env"])  # fmt: skip
    study = optuna.load_study(study_name="prune", storage=search_env["study_db"])
    good, hopeless = study.trials
    assert good.state == TrialState.COMPLETE and hopeless.state == TrialState.PRUNED
    assert hopeless.user_attrs[PRUNED_ATTR] < 6 and len(hopeless.intermediate_values) == hopeless.user_attrs[PRUNED_ATTR]
    _, children = mlflow_runs(search_env["uri"])
    (pruned,) = [c for c in children if c.data.tags.get("pruned") == "true"]
    assert pruned.info.status == "KILLED" and pruned.data.tags["optuna.trial"] == str(hopeless.number)
    assert "checkpoints" in {a.path for a in mlflow.MlflowClient(search_env["uri"]).list_artifacts(pruned.info.run_id)}
    assert len(list(search_env["project"].glob("multirun/*/*/model.keras"))) == 2, "the pruned trial's best model is kept too"

    # optuna-dashboard, the real app over the same database, lists the study and its trials.
    from optuna_dashboard import wsgi

    class Quiet(WSGIRequestHandler):
        def log_message(self, *args) -> None:
            pass

    server = make_server("127.0.0.1", 0, wsgi(search_env["study_db"]), handler_class=Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_port}"
        studies = requests.get(f"{base}/api/studies", timeout=30).json()["study_summaries"]
        (summary,) = [s for s in studies if s["study_name"] == "prune"]
        detail = requests.get(f"{base}/api/studies/{summary['study_id']}", timeout=30).json()
        assert [t["state"] for t in detail["trials"]] == ["Complete", "Pruned"]
    finally:
        server.shutdown()


def completed(search_env: dict, name: str) -> int:
    try:
        study = optuna.load_study(study_name=name, storage=search_env["study_db"])
    except KeyError:
        return 0
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
