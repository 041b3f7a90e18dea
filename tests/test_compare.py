"""`digitlab compare`: DVC's experiments in a narrow table, read from `dvc exp show --json`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from digitlab.compare import rows, table


def _entry(rev: str, name: str | None, epochs: int, accuracy: float, experiments=None) -> dict:
    """One element of `dvc exp show --json` as DVC 3.67 writes it (the keys digitlab reads)."""
    data = {
        "rev": rev, "timestamp": "2026-12-05T16:43:57",
        "params": {"params.yaml": {"data": {"models": {"cnn": {"training": {"epochs": epochs}}}, "seed": 42}}},
        "metrics": {
            "reports/evaluation/cnn/metrics.json": {"data": {"accuracy": accuracy, "log_loss": 0.1}},
            "models/cnn/train.json": {"data": {"best_epoch": 12, "train_time_s": 27.4}},
        },
    }  # fmt: skip
    return {"rev": rev, "name": name, "data": data, "error": None, "experiments": experiments}


def test_one_row_per_commit_and_experiment_with_what_changed():
    experiment = {"name": "vivid-agio", "revs": [_entry("44b9b83a", None, 5, 0.951)]}
    shown = [_entry("workspace", None, 5, 0.951), _entry("408e6ec1", "main", 20, 0.977, [experiment])]
    found = rows(shown)
    assert [(r.name, r.depth) for r in found] == [("workspace", 0), ("main", 0), ("vivid-agio", 1)]
    assert found[2].changed == ["models.cnn.training.epochs=5"] and found[0].changed == ["models.cnn.training.epochs=5"]
    text = table(found, width=120)
    lines = text.splitlines()
    assert lines[0].split() == ["experiment", "created", "cnn", "acc", "cnn", "ep/s", "changed"]
    assert "└ vivid-agio" in lines[3] and "95.10" in lines[3] and "12/27" in lines[3] and lines[3].endswith("cnn.epochs=5")
    assert max(len(line) for line in lines) <= 120
    markdown = table(found, markdown=True).splitlines()
    assert markdown[1] == "|---|---|---:|---:|---|" and markdown[4] == "| vivid-agio | 16:43 | 95.10 | 12/27 | cnn.epochs=5 |"


def test_a_long_list_of_changes_is_cut_to_the_width():
    params = {f"p{i}": i for i in range(40)}
    entry = _entry("408e6ec1", "main", 20, 0.977)
    changed = _entry("44b9b83a", None, 20, 0.9)
    changed["data"]["params"]["params.yaml"]["data"].update(params)
    entry["experiments"] = [{"name": "wide", "revs": [changed]}]
    lines = table(rows([entry]), width=80).splitlines()
    assert max(len(line) for line in lines) <= 80 and lines[-1].endswith("…")


def test_outside_a_dvc_project_it_is_one_line_and_exit_2(tmp_path: Path):
    result = subprocess.run([str(Path(sys.executable).parent / "digitlab"), "compare"], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.startswith("digitlab: error: dvc exp show failed:"), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
