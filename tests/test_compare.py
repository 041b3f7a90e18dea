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


def test_on_a_real_dvc_project_after_dvc_exp_run(tmp_path: Path):
    """A real git + DVC repo whose stage writes the two metrics files digitlab's stages write; one `dvc exp run -S`."""
    import os

    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}

    def sh(*cmd: str) -> str:
        done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True)
        assert done.returncode == 0, f"{cmd}: {done.stdout}{done.stderr}"
        return done.stdout

    (tmp_path / "params.yaml").write_text("models:\n  cnn:\n    training:\n      epochs: 20\n")
    (tmp_path / "stage.py").write_text(
        "import json, os, yaml\n"
        "epochs = yaml.safe_load(open('params.yaml'))['models']['cnn']['training']['epochs']\n"
        "os.makedirs('models/cnn', exist_ok=True); os.makedirs('reports/evaluation/cnn', exist_ok=True)\n"
        "json.dump({'best_epoch': epochs // 2, 'train_time_s': 3.0 * epochs}, open('models/cnn/train.json', 'w'))\n"
        "json.dump({'accuracy': 0.9 + epochs / 1000}, open('reports/evaluation/cnn/metrics.json', 'w'))\n"
    )
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  train:\n    cmd: python stage.py\n    deps: [stage.py]\n    params: [models.cnn.training.epochs]\n"
        "    metrics:\n      - models/cnn/train.json: {cache: false}\n      - reports/evaluation/cnn/metrics.json: {cache: false}\n"
    )
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t.invalid"]
    sh("git", "init", "-q", "-b", "main")
    sh("dvc", "init", "-q")
    sh("dvc", "repro")
    sh(*git, "add", "-A")
    sh(*git, "commit", "-qm", "baseline")
    sh("dvc", "exp", "run", "-n", "short", "-S", "models.cnn.training.epochs=5")
    lines = sh(str(bin_dir / "digitlab"), "compare", "--width", "120").splitlines()
    main = next(line for line in lines if line.startswith("main"))
    short = next(line for line in lines if "└ short" in line)
    assert "92.00" in main and "10/60" in main
    assert "90.50" in short and "2/15" in short and short.endswith("cnn.epochs=5")
    assert "| short |" in sh(str(bin_dir / "digitlab"), "compare", "--md")
