"""``digitlab compare``: DVC's experiments, the numbers people compare, in one narrow table.

``dvc exp show`` prints every tracked metric, param and dependency: about 200 columns here, so
even a wide terminal shows most of them as ``…``. This reads the same data (``dvc exp show
--json``) and prints one row per commit and experiment: per recipe its test accuracy, best
evaluation and training time, then the params that differ from the row's baseline commit.
``--md`` prints a Markdown table for a pull request; ``dvc exp show`` stays there for the rest.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any

from digitlab.errors import DigitlabError


@dataclass
class Row:
    name: str
    created: str
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # recipe -> accuracy, best_epoch, train_time_s
    params: dict[str, Any] = field(default_factory=dict)  # params.yaml, flattened
    changed: list[str] = field(default_factory=list)  # key=value against the baseline commit
    depth: int = 0  # 0: a commit or the workspace, 1: an experiment of the commit above


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        flat: dict[str, Any] = {}
        for key, value in data.items():
            flat.update(flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix.rstrip("."): data}


def _row(entry: dict[str, Any], name: str, depth: int) -> Row:
    data = entry.get("data") or {}
    stamp = data.get("timestamp") or ""
    row = Row(name=name, created=stamp[11:16] if len(stamp) >= 16 else "-", depth=depth)
    for path, content in (data.get("metrics") or {}).items():
        values = (content or {}).get("data") or {}
        parts = path.split("/")
        if path.endswith("metrics.json") and len(parts) >= 3:  # reports/evaluation/<recipe>/metrics.json
            row.metrics.setdefault(parts[-2], {})["accuracy"] = values.get("accuracy")
        elif path.endswith("train.json") and len(parts) >= 2:  # models/<recipe>/train.json
            recipe = row.metrics.setdefault(parts[-2], {})
            recipe["best_epoch"], recipe["train_time_s"] = values.get("best_epoch"), values.get("train_time_s")
    for content in (data.get("params") or {}).values():
        row.params.update(flatten((content or {}).get("data") or {}))
    return row


def changes(row: Row, baseline: Row) -> list[str]:
    """``key=value`` of the params where ``row`` differs from ``baseline``."""
    return [f"{key}={value}" for key, value in sorted(row.params.items()) if value != baseline.params.get(key)]


def rows(shown: list[dict[str, Any]]) -> list[Row]:
    """``dvc exp show --json`` as rows: the workspace, each commit, and under each commit its experiments."""
    found: list[Row] = []
    for entry in shown:
        rev = str(entry.get("rev", ""))
        baseline = _row(entry, entry.get("name") or (rev if rev == "workspace" else rev[:7]), 0)
        found.append(baseline)
        for experiment in entry.get("experiments") or []:
            for rev in experiment.get("revs") or []:
                row = _row(rev, experiment.get("name") or str(rev.get("rev", ""))[:7], 1)
                row.changed = changes(row, baseline)
                found.append(row)
    if found and found[0].name == "workspace" and len(found) > 1:
        found[0].changed = changes(found[0], found[1])
    return found


def _short(key_value: str) -> str:
    """``models.cnn.training.epochs=5`` -> ``cnn.epochs=5``: the recipe and the last key are what people read."""
    key, _, value = key_value.partition("=")
    parts = key.split(".")
    if parts[0] == "models" and len(parts) >= 3:
        key = f"{parts[1]}.{parts[-1]}"
    return f"{key}={value}"


def _number(value: Any, spec: str) -> str:
    return format(value, spec) if isinstance(value, int | float) and not isinstance(value, bool) else "-"


def table(found: list[Row], markdown: bool = False, width: int = 120) -> str:
    recipes = sorted({recipe for row in found for recipe in row.metrics}, key=lambda r: (["linear", "mlp", "cnn"] + [r]).index(r))
    header = ["experiment", "created", *(f"{recipe} acc" for recipe in recipes), *(f"{recipe} ep/s" for recipe in recipes), "changed"]
    body = []
    for row in found:
        name = ("└ " if row.depth and not markdown else "") + row.name
        accuracy = [_number(100 * row.metrics[r]["accuracy"], ".2f") if isinstance(row.metrics.get(r, {}).get("accuracy"), int | float) else "-" for r in recipes]
        epochs = [f"{_number(row.metrics.get(r, {}).get('best_epoch'), 'd')}/{_number(row.metrics.get(r, {}).get('train_time_s'), '.0f')}" for r in recipes]
        body.append([name, row.created, *accuracy, *epochs, ", ".join(_short(change) for change in row.changed)])
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" if i in (0, 1, len(header) - 1) else "---:" for i in range(len(header))) + "|"]
        return "\n".join([*lines, *("| " + " | ".join(cells) + " |" for cells in body)])
    widths = [max(len(str(cells[i])) for cells in [header, *body]) for i in range(len(header) - 1)]
    room = max(12, width - sum(widths) - 2 * (len(widths)))
    out = []
    for cells in [header, *body]:
        fixed = [str(cell).ljust(w) if i < 2 else str(cell).rjust(w) for i, (cell, w) in enumerate(zip(cells, widths, strict=False))]
        changed = str(cells[-1])
        out.append("  ".join([*fixed, changed if len(changed) <= room else changed[: room - 1] + "…"]).rstrip())
    return "\n".join(out)


def show(all_commits: bool = False) -> list[dict[str, Any]]:
    """``dvc exp show --json`` of the project in the working directory."""
    dvc = shutil.which("dvc")
    cmd = [dvc] if dvc else [sys.executable, "-m", "dvc"]
    done = subprocess.run([*cmd, "exp", "show", "--json", *(["--all-commits"] if all_commits else [])], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise DigitlabError(f"dvc exp show failed: {reason}")
    return json.loads(done.stdout or "[]")


def add_compare_command(commands) -> None:
    compare = commands.add_parser(
        "compare",
        help="DVC's experiments in one narrow table: test accuracy, best evaluation and training time per recipe",
        description="One row per commit and experiment (from `dvc exp show --json`): per recipe the test accuracy (%%), "
        "best evaluation / training seconds, then the params that differ from the baseline commit. "
        "--md prints Markdown for a pull request.",
    )
    compare.add_argument("--md", action="store_true", help="a Markdown table")
    compare.add_argument("--all-commits", action="store_true", help="every commit's experiments, not only HEAD's")
    compare.add_argument("--width", type=int, default=shutil.get_terminal_size((120, 24)).columns, help="line width (default: the terminal's)")
    compare.set_defaults(handler=lambda args: print(table(rows(show(args.all_commits)), markdown=args.md, width=args.width)))
