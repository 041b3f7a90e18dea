"""Nothing leaked: a password in a URI is never written or printed by digitlab.

The end-to-end test trains against a real ``mlflow server`` addressed as
``http://user:s3cret@127.0.0.1:PORT`` (the basic server ignores credentials,
so the run works) and looks for ``s3cret`` everywhere the run left anything.
"""

from __future__ import annotations

import io
import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from omegaconf import OmegaConf

from digitlab import tracking
from digitlab.redact import RedactingFilter, has_password, install_log_filter, redact, redact_data, split_credentials
from tests.conftest import ROOT, run, tiny_config

SECRET = "s3cret"
DIGITLAB = str(Path(sys.executable).parent / "digitlab")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("http://user:s3cret@host:5000/x", "http://***@host:5000/x"),
        ("see https://a:b@h and mysql+pymysql://u:s3cret@db/mlflow.", "see https://***@h and mysql+pymysql://***@db/mlflow."),
        ("http://u:p@ss:s3cret@host/a?b=c:d@e", "http://***@host/a?b=c:d@e"),  # a raw @ in the password
        ("'postgresql://user@host/db'", "'postgresql://user@host/db'"),  # a user name alone is no secret
        ("sqlite:////tmp/mlflow.db", "sqlite:////tmp/mlflow.db"),
        ("user:pass@host (no scheme)", "user:pass@host (no scheme)"),
    ],
)
def test_redact_hides_passwords_of_uris(text, expected):
    assert redact(text) == expected
    assert has_password(text) == (text != expected)


def test_redact_data_walks_nested_structures():
    data = {"tracking": {"uri": "http://u:s3cret@h", "tags": ["http://u:s3cret@h", 3, None]}, "n": 1.5}
    assert redact_data(data) == {"tracking": {"uri": "http://***@h", "tags": ["http://***@h", 3, None]}, "n": 1.5}


def test_split_credentials_takes_them_out_of_the_uri():
    assert split_credentials("https://us%40er:pa%2Fss@127.0.0.1:5000/base") == ("https://127.0.0.1:5000/base", "us@er", "pa/ss")
    assert split_credentials("http://127.0.0.1:5000") == ("http://127.0.0.1:5000", None, None)


def test_log_records_and_their_tracebacks_are_redacted():
    logger, stream = logging.getLogger("digitlab.tests.secrets"), io.StringIO()
    handler = logging.StreamHandler(stream)
    logger.addHandler(handler)
    logger.propagate = False
    try:
        install_log_filter(logger)
        install_log_filter(logger)  # once, however often logging is set up
        assert sum(isinstance(f, RedactingFilter) for f in handler.filters) == 1
        logger.warning("store %s is down", "http://u:s3cret@h:5000")
        try:
            raise RuntimeError("cannot reach http://u:s3cret@h:5000/api")
        except RuntimeError:
            logger.exception("failed with %r", {"uri": "https://a:s3cret@x"})
    finally:
        logger.removeHandler(handler)
    text = stream.getvalue()
    assert SECRET not in text and "store http://***@h:5000 is down" in text and "cannot reach http://***@h:5000/api" in text


def test_setup_logging_redacts_records_of_handlers_configured_later_and_of_mlflow(monkeypatch):
    from digitlab.config import setup_logging

    monkeypatch.setattr(logging, "_logRecordFactory", logging.getLogRecordFactory())  # restored after the test
    setup_logging()
    setup_logging()  # idempotent
    stream = io.StringIO()
    logger = logging.getLogger("mlflow.tests.secrets")  # as MLflow's own loggers: a handler of its own, no propagation
    handler = logging.StreamHandler(stream)
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("View run at %s", "http://u:s3cret@h:5000/#/runs/1")
    finally:
        logger.removeHandler(handler)
    assert stream.getvalue() == "View run at http://***@h:5000/#/runs/1\n"


def test_fail_prints_the_error_redacted(capsys):
    from digitlab.config import fail
    from digitlab.errors import DigitlabError

    with pytest.raises(SystemExit) as exit_:
        fail(DigitlabError("MLflow tracking server http://u:s3cret@h:5000 is unreachable"))
    assert exit_.value.code == 2
    assert capsys.readouterr().err == "digitlab: error: MLflow tracking server http://***@h:5000 is unreachable\n"


def test_run_tags_are_redacted(monkeypatch):
    monkeypatch.setattr(tracking, "hydra_overrides", lambda: "model=mlp tracking.uri=http://u:s3cret@h:5000")
    assert tracking.run_tags("mlp", "digits")["hydra_overrides"] == "model=mlp tracking.uri=http://***@h:5000"


@pytest.fixture
def params_project(tmp_path: Path) -> Path:
    """A project with conf/ and a params.yaml, for ``digitlab params``."""
    shutil.copytree(ROOT / "conf", tmp_path / "conf")
    shutil.copy2(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    shutil.copy2(ROOT / "params.yaml", tmp_path / "params.yaml")
    return tmp_path


@pytest.mark.parametrize(
    ("override", "setting"),
    [
        ("tracking.uri=http://u:s3cret@h:5000", "tracking.uri"),
        ("tracking=server", None),  # a name of the group, no password: accepted
        ("tracking.ui_url=https://u:s3cret@ui.example", "tracking.ui_url"),
        ("dataset=mnist", None),
        ("dataset.url=https://u:s3cret@mirror.example/mnist.npz", "dataset.url"),
    ],
)
def test_params_refuses_a_password_in_a_uri(params_project, override, setting):
    before = (params_project / "params.yaml").read_bytes()
    overrides = ["dataset=mnist", override] if override.startswith("dataset.url") else [override]
    result = run([DIGITLAB, "params", *overrides], cwd=params_project, check=False)
    if setting is None:
        assert result.returncode == 0, result.stderr
        return
    assert result.returncode == 2, result
    assert result.stderr.startswith(f"digitlab: error: {setting}=") and "holds a password" in result.stderr
    assert "MLFLOW_TRACKING_USERNAME" in result.stderr and SECRET not in result.stderr + result.stdout
    assert len(result.stderr.strip().splitlines()) == 1
    assert (params_project / "params.yaml").read_bytes() == before




def _texts(directory: Path) -> dict[str, bytes]:
    return {str(path): path.read_bytes() for path in directory.rglob("*") if path.is_file()}


def test_a_password_in_params_yaml_is_used_but_never_written(mlflow_server, tiny_prepared, tmp_path):
    """As after ``dvc exp run -S tracking.uri=http://user:s3cret@...``: the stage runs; nothing it leaves holds the password."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "prepared").symlink_to(tiny_prepared)
    secret_uri = mlflow_server.replace("http://", f"http://user:{SECRET}@")
    out = tmp_path / "out"
    cfg = tiny_config(
        "model=mlp", "models.mlp.training.epochs=1", "tracking.log_models=true", f"paths.data={tmp_path / 'data'}",
        f"tracking.uri={secret_uri}", f"tracking.ui_url={secret_uri}", f"output_dir={out}",
        f"paths.checkpoints={tmp_path / 'resume'}", "tracking.experiment=secrets",
    )  # fmt: skip
    OmegaConf.save(cfg, tmp_path / "params.yaml")
    assert SECRET in (tmp_path / "params.yaml").read_text()  # what dvc exp run -S would have written
    stage = subprocess.run(
        [sys.executable, "-m", "pipeline.train", "--params", str(tmp_path / "params.yaml")],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**_clean_env(), "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"},
    )  # fmt: skip
    assert stage.returncode == 0, stage.stderr[-3000:]
    assert SECRET not in stage.stdout + stage.stderr
    assert "holds credentials" in stage.stderr  # the warning, redacted

    files = _texts(out)
    assert any(name.endswith("run.json") for name in files) and any(name.endswith("train.json") for name in files)
    assert not [name for name, data in files.items() if SECRET.encode() in data]
    (run_json,) = [json.loads(data) for name, data in files.items() if name.endswith("run.json")]
    assert run_json["tracking_uri"] == mlflow_server  # the credentials went to the environment, not the URI

    client = mlflow.MlflowClient(tracking_uri=mlflow_server)
    (run_,) = client.search_runs([client.get_experiment_by_name("secrets").experiment_id])
    assert run_.info.status == "FINISHED"
    assert run_.data.params["tracking.uri"] == secret_uri.replace(f"user:{SECRET}", "***")
    assert SECRET not in repr(run_.data.params) + repr(run_.data.tags)
    downloaded = Path(mlflow.artifacts.download_artifacts(run_id=run_.info.run_id, dst_path=str(tmp_path / "dl"), tracking_uri=mlflow_server))
    assert "config.yaml" in {p.name for p in downloaded.rglob("*")}
    # Everything the server stored: its database and its artifacts.
    stored = {**_texts(tmp_path / "artifacts"), **_texts(downloaded), "server.db": (tmp_path / "server.db").read_bytes()}
    assert not [name for name, data in stored.items() if SECRET.encode() in data]


def _clean_env() -> dict[str, str]:
    import os

    keep = ("HOME", "TMPDIR", "LANG", "TF_CPP_MIN_LOG_LEVEL", "MLFLOW_ENABLE_ASYNC_LOGGING", "GIT_PYTHON_REFRESH")
    return {name: os.environ[name] for name in keep if name in os.environ}


def test_a_password_in_a_server_uri_moves_to_mlflows_environment(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    assert tracking.client_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert "MLFLOW_TRACKING_PASSWORD" not in __import__("os").environ
    assert tracking.client_uri("https://me:s3%3Acret@mlflow.example/base") == "https://mlflow.example/base"
    import os

    assert os.environ["MLFLOW_TRACKING_USERNAME"] == "me" and os.environ["MLFLOW_TRACKING_PASSWORD"] == "s3:cret"
    # A database store's driver reads the password from the URI: it stays there (and is only ever written redacted).
    assert tracking.client_uri("postgresql://me:s3cret@db/mlflow") == "postgresql://me:s3cret@db/mlflow"
