"""A run's source, datasets and system metrics (digitlab.lineage) go through the journal: an
unreachable server delays them and loses nothing. What the UI shows of them: tests/test_browser.py."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import mlflow
import pytest

from digitlab import lineage
from digitlab.data.prepared import load_meta
from digitlab.errors import ConfigError
from digitlab.journal import Delivery, Journal, delivered, read_entries

from .conftest import ROOT, free_port, run, tiny_settings


def new_run(uri: str) -> str:
    client = mlflow.MlflowClient(uri)
    return client.create_run(client.create_experiment("lineage")).info.run_id


def test_lineage_waits_in_the_journal_while_the_server_is_away(mlflow_uri: str, tiny_prepared: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    run_id = new_run(mlflow_uri)
    journal = Journal.for_run(run_id, mlflow_uri, root=tmp_path / "journal")
    settings = tiny_settings("tracking.system_metrics_interval_s=1")
    with lineage.recorded(settings.tracking, journal, load_meta(tiny_prepared), tiny_prepared):
        time.sleep(2.5)  # two samples, and a third one when the block ends
    kinds = [entry["kind"] for entry in read_entries(journal.directory)]
    assert kinds[:2] == ["tags", "inputs"] and kinds.count("metrics") >= 2

    away = mlflow.MlflowClient(f"http://127.0.0.1:{free_port()}")  # nothing listens there: the server is down
    with pytest.raises(Exception):  # noqa: B017,PT011 - whatever the client raises for a refused connection
        Delivery(journal.directory, away).deliver()
    assert delivered(journal.directory) == 0

    Delivery(journal.directory, mlflow.MlflowClient(mlflow_uri)).deliver()  # the server is back
    client = mlflow.MlflowClient(mlflow_uri)
    logged = client.get_run(run_id)
    assert {(i.dataset.name, i.tags[0].value) for i in logged.inputs.dataset_inputs} == {
        ("digits-train", "training"), ("digits-val", "validation"), ("digits-test", "testing"),
    }  # fmt: skip
    train = next(i.dataset for i in logged.inputs.dataset_inputs if i.dataset.name == "digits-train")
    assert train.source_type == "local" and str(tiny_prepared / "train.npz") in train.source
    assert len(train.digest) <= 36 and '"features_shape": [1200, 8, 8, 1]' in train.profile
    assert "mlflow_tensorspec" in train.schema
    assert logged.data.tags["mlflow.source.type"] == "LOCAL" and logged.data.tags["mlflow.source.name"]
    history = client.get_metric_history(run_id, "system/cpu_utilization_percentage")
    assert [m.step for m in history] == list(range(len(history))) and len(history) >= 2


def test_the_dataset_digest_is_the_split_files_checksum_from_meta_json(tiny_prepared: Path) -> None:
    import dataclasses

    meta = dataclasses.replace(load_meta(tiny_prepared), checksums={"train.npz": "ab" * 32})
    assert lineage.split_dataset(meta, tiny_prepared, "train").digest == ("ab" * 32)[:36]
    computed = lineage.split_dataset(load_meta(tiny_prepared), tiny_prepared, "val").digest  # no checksums: hashed now
    assert len(computed) == 36 and computed == lineage.split_dataset(load_meta(tiny_prepared), tiny_prepared, "val").digest


def test_no_system_metrics_when_turned_off(mlflow_uri: str, tiny_prepared: Path, tmp_path: Path) -> None:
    journal = Journal.for_run(new_run(mlflow_uri), mlflow_uri, root=tmp_path / "journal")
    settings = tiny_settings("tracking.system_metrics=false")
    with lineage.recorded(settings.tracking, journal, load_meta(tiny_prepared), tiny_prepared):
        pass
    assert [entry["kind"] for entry in read_entries(journal.directory)] == ["tags", "inputs"]


def test_the_source_is_the_entry_point_relative_to_the_project(monkeypatch) -> None:
    assert lineage.source_name(str(ROOT / "pipeline" / "train.py")) == "pipeline/train.py"
    assert lineage.source_name("/somewhere/else/script.py") == "script.py"
    monkeypatch.setattr(sys, "argv", [str(ROOT / "pipeline" / "train.py")])
    assert lineage.source_tags()["mlflow.source.name"] == "pipeline/train.py"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("tracking.system_metrics_interval_s=0.5", "tracking.system_metrics_interval_s=0.5 is not valid: expected a number greater than or equal to 1"),
        ("tracking.system_metrics=yes", "tracking.system_metrics='yes' is not valid: expected a valid boolean"),
    ],
)
def test_a_bad_system_metrics_setting_is_one_line_naming_it(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        tiny_settings(override)
    assert str(error.value) == message


def test_digitlab_params_refuses_a_bad_interval_with_exit_2(project: Path) -> None:
    result = run([str(Path(sys.executable).parent / "digitlab"), "params", "tracking.system_metrics_interval_s=7200"], project, check=False)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "tracking.system_metrics_interval_s=7200" in result.stderr
