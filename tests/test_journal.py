"""The run journal on a real MLflow SQLite store: order, batching, a torn last line, entries the
store refuses for good, and removal once delivered (the outage cases: tests/test_outage.py)."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pandas as pd

from digitlab.journal import BATCH_LIMITS, Delivery, Journal, _groups, pending_journals, read_entries, sync_all


def new_run(uri: str) -> str:
    client = mlflow.MlflowClient(uri)
    return client.create_run(client.create_experiment(f"journal-{len(client.search_experiments())}")).info.run_id


def test_entries_arrive_in_order_and_the_journal_goes_once_delivered(mlflow_uri: str, tmp_path: Path) -> None:
    run_id = new_run(mlflow_uri)
    journal = Journal.for_run(run_id, mlflow_uri, root=tmp_path)
    journal.start_sender()
    for step in range(5):
        journal.log_metrics({"accuracy": step / 10}, step=step)
        journal.set_tags({"digitlab.heartbeat": str(step)})
    (tmp_path / "notes.txt").write_text("first")
    journal.log_artifact(tmp_path / "notes.txt", "notes")
    (tmp_path / "notes.txt").write_text("changed after logging")  # the journal keeps what was logged
    journal.log_table(pd.DataFrame({"true": [0, 1], "count": [3, 4]}), "evaluation/table.json")
    journal.end("FINISHED")
    assert journal.close(timeout=60)
    assert not journal.directory.exists()
    client = mlflow.MlflowClient(mlflow_uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["digitlab.heartbeat"] == "4"
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "accuracy")] == [(s, s / 10) for s in range(5)]
    assert Path(client.download_artifacts(run_id, "notes/notes.txt", str(tmp_path / "dl"))).read_text() == "first"
    table = json.loads(Path(client.download_artifacts(run_id, "evaluation/table.json", str(tmp_path / "dl"))).read_text())
    assert sorted(row[table["columns"].index("count")] for row in table["data"]) == [3, 4]
    assert "evaluation/table.json" in run.data.tags["mlflow.loggedArtifacts"]  # what mlflow.load_table looks for


def test_consecutive_logging_is_batched_within_mlflows_limits() -> None:
    entries = [{"kind": "metrics", "metrics": {f"m{i}": 1.0 for i in range(400)}, "step": s, "ts": 0} for s in range(3)]
    entries.append({"kind": "end", "status": "FINISHED", "ts": 0})
    groups = list(_groups(entries, 0))
    assert [len(g) for g in groups] == [2, 1, 1]  # 800 metrics, then 400 (1,200 > 1,000), then the end alone
    assert all(sum(len(e["metrics"]) for e in g if e["kind"] == "metrics") <= BATCH_LIMITS["metrics"] for g in groups)


def test_a_torn_last_line_is_cut_and_the_journal_goes_on(mlflow_uri: str, tmp_path: Path) -> None:
    run_id = new_run(mlflow_uri)
    journal = Journal.for_run(run_id, mlflow_uri, root=tmp_path)
    journal.log_metrics({"loss": 1.0}, step=1)
    with open(journal.directory / "entries.jsonl", "a") as handle:
        handle.write('{"kind": "metrics", "metr')  # a kill mid-append
    assert len(read_entries(journal.directory)) == 1
    journal._writer.release()
    again = Journal.for_run(run_id, mlflow_uri, root=tmp_path)
    again.log_metrics({"loss": 0.5}, step=2)
    assert [e["step"] for e in read_entries(again.directory)] == [1, 2]
    (line,) = sync_all(root=tmp_path)
    assert "delivered 2 entries" in line  # the writer still holds it: delivered, not removed
    assert [m.step for m in mlflow.MlflowClient(mlflow_uri).get_metric_history(run_id, "loss")] == [1, 2]
    assert again.directory.exists() and not pending_journals(tmp_path)


def test_an_entry_the_store_refuses_is_set_aside_and_the_rest_delivered(mlflow_uri: str, tmp_path: Path) -> None:
    run_id = new_run(mlflow_uri)
    journal = Journal.for_run(run_id, mlflow_uri, root=tmp_path)
    journal.log_params({"lr": "0.1"})
    journal.log_text("x", "a.txt")
    journal.log_params({"lr": "0.2"})  # MLflow params are immutable: refused (HTTP 400) for good
    journal.end("FINISHED")
    Delivery(journal.directory, mlflow.MlflowClient(mlflow_uri)).deliver()
    run = mlflow.MlflowClient(mlflow_uri).get_run(run_id)
    assert run.data.params["lr"] == "0.1" and run.info.status == "FINISHED"
    (rejected,) = [json.loads(line) for line in (journal.directory / "rejected.jsonl").read_text().splitlines()]
    assert rejected["params"] == {"lr": "0.2"} and "lr" in rejected["error"]
    assert journal.pending == 0
