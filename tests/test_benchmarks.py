"""The benchmark harness (``python -m benchmarks.run``) runs end to end on tiny data.

Quick mode: scikit-learn's 8x8 digits, 1 epoch, 1 repetition, real DVC, MLflow
and TensorFlow in temporary project copies. No timing is asserted: only that
every part measures something and writes results.json and RESULTS.md.

The caching part is checked by tests/test_pipeline_e2e.py, whose first and
no-op repros it runs (``benchmarks.run.time_repros``): a project of its own
here would repeat that pipeline run.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, run

pytestmark = pytest.mark.slow


KEPT = "<!-- other: benchmarks/other.py -->\n## Another benchmark's section\n\n| a | b |\n<!-- /other -->"


def bench(tmp_path: Path, *options: str) -> tuple[dict, str]:
    out = tmp_path / "out"
    out.mkdir()
    (out / "RESULTS.md").write_text(f"# digitlab benchmarks\n\nan older run\n\n{KEPT}\n")  # another script's section
    run([sys.executable, "-m", "benchmarks.run", "--quick", "--work-dir", str(tmp_path / "work"), "--out-dir", str(out), *options],
        ROOT, timeout=900)  # fmt: skip
    return json.loads((out / "results.json").read_text(encoding="utf-8")), (out / "RESULTS.md").read_text(encoding="utf-8")


def test_overhead_memory_accuracy_and_cost_parts_measure_and_report(tmp_path: Path) -> None:
    results, markdown = bench(
        tmp_path, "--parts", "overhead,memory,accuracy,cost", "--models", "linear", "--presets", "tutorial_linear,tutorial_cifar100_mlp",
        "--preset-seeds", "2",
    )

    assert {"date", "machine", "versions", "settings", "targets", "wall_s"} <= set(results)
    assert results["machine"]["cores"] >= 1 and results["versions"]["keras"].startswith("3.")

    overhead = results["overhead"]
    assert overhead["dataset"] == "digits" and overhead["epochs"] == 1
    linear = overhead["models"]["linear"]
    digitlab, plain = linear["median"]["digitlab"], linear["median"]["plain"]
    assert digitlab["fit_s"] > 0 and plain["fit_s"] > 0 and digitlab["images_per_s"] > 0 and plain["images_per_s"] > 0
    assert linear["fit_ratio"] == pytest.approx(digitlab["fit_s"] / plain["fit_s"])
    # The process also imports TensorFlow and loads data: it takes longer than its fit.
    assert digitlab["wall_s"] > digitlab["fit_s"] and plain["wall_s"] > plain["fit_s"]

    memory = results["memory"]
    assert memory["train_arrays_float32_mb"] == pytest.approx(memory["train_images"] * 8 * 8 * 4 / 2**20)
    # The train stage imports TensorFlow and MLflow too, so it needs at least what the imports alone need.
    assert memory["models"]["linear"]["peak_rss_mb"] >= 0.9 * memory["import_floor_rss_mb"] > 0
    assert memory["models"]["linear"]["plain_keras_peak_rss_mb"] == linear["median"]["plain"]["peak_rss_mb"]
    # memray's breakdown accounts for the whole heap peak, and charges TensorFlow's import to the train loop.
    profile = memory["profiles"]["linear"]
    assert profile["imports_mb"] + profile["work_mb"] == pytest.approx(profile["peak_heap_mb"], rel=0.01)
    assert any(row["kind"] == "imports" and row["where"].startswith("loop.py:") for row in profile["top"])
    assert Path(profile["flamegraph"]).stat().st_size > 10_000

    runs = {(run_["recipe"], run_["model"]): run_ for run_ in results["accuracy"]["runs"]}
    assert set(runs) == {("default", "linear"), ("tutorial_linear", "linear"), ("tutorial_cifar100_mlp", "mlp")}
    for key in (("default", "linear"), ("tutorial_linear", "linear")):
        assert 0.0 <= runs[key]["test_accuracy"] <= 1.0 and runs[key]["dataset"] == "digits"
    assert "92.1%" in runs[("tutorial_linear", "linear")]["published"]
    preset = runs[("tutorial_linear", "linear")]  # two seeds: the mean and each seed's, both trained
    assert preset["seeds"] == [42, 43] and len(preset["test_accuracies"]) == 2
    assert preset["test_accuracy"] == pytest.approx(sum(preset["test_accuracies"]) / 2)
    assert runs[("default", "linear")]["seeds"] == [42]
    low, high = sorted(preset["test_accuracies"])
    assert f"[{low:.2%}, {high:.2%}] (2 seeds)" in markdown
    assert "not reachable" in runs[("tutorial_cifar100_mlp", "mlp")]["skipped"]

    # The time bound: both recipes trained side by side, the current one counted with the evaluations the
    # accuracy part's default training ran; on the 8x8 digits the bound is shown, not judged.
    cost = results["cost"]["models"]["linear"]
    assert cost["all"]["before"][0] > 0 and cost["all"]["after"][0] > 0
    assert cost["evaluations_measured"] and cost["evaluations"]["after"] == runs[("default", "linear")]["epochs"]
    assert cost["training_s"]["after"] == pytest.approx(cost["seconds_per_evaluation"]["after"] * cost["evaluations"]["after"])
    bound = next(row for row in results["targets"] if "before issue 13's retune" in row["target"])
    assert bound["met"] is None and f"{results['cost']['pipeline']['ratio']:.2f}x" in bound["measured"]

    targets = {row["target"]: row for row in results["targets"]}
    assert any("linear training time" in target for target in targets)
    assert all(isinstance(row["met"], bool) for row in results["targets"] if row is not bound)
    assert "an older run" not in markdown and KEPT in markdown, "the run's part replaced, the other section kept"
    headings = ("| target | measured | met |", "## Overhead", "## Memory", "heap is at its peak", "## Accuracy", "tutorial_linear",
                "## What the retuned defaults cost (digits")  # fmt: skip
    for heading in headings:
        assert heading in markdown


def test_unknown_part_is_refused_before_any_work(tmp_path: Path) -> None:
    result = run([sys.executable, "-m", "benchmarks.run", "--parts", "overhead,speed", "--out-dir", str(tmp_path)], ROOT, check=False, timeout=60)
    assert result.returncode == 2
    assert "--parts: unknown speed" in result.stderr
    assert not (tmp_path / "results.json").exists()


def test_recipe_cost_trains_both_recipes_side_by_side_and_prints_the_ratio(tmp_path: Path) -> None:
    """`python -m benchmarks.recipe_cost` for real on the 8x8 digits: the previous and the current linear recipe each
    train one evaluation through the train stage; the ratio printed is the one its JSON holds."""
    work = tmp_path / "work"
    done = run([sys.executable, "-m", "benchmarks.recipe_cost", "--dataset", "digits", "--models", "linear", "--repeats", "1",
                "--work-dir", str(work), "--no-write"], ROOT, timeout=600)  # fmt: skip
    measured = json.loads((work / "recipe_cost.json").read_text(encoding="utf-8"))
    linear = measured["models"]["linear"]
    assert linear["all"]["before"][0] > 0 and linear["all"]["after"][0] > 0
    assert linear["training_s"]["after"] == pytest.approx(linear["seconds_per_evaluation"]["after"] * linear["evaluations"]["after"])
    assert f"pipeline: {measured['pipeline']['ratio']:.2f}x" in done.stdout
    # Each side trained with its own recipe: one pass in batches of 128 (before) takes more steps than in 256 (now).
    before, after = (json.loads((work / f"linear-{side}-0" / "train.json").read_text()) for side in ("before", "after"))
    assert before["epochs"] == after["epochs"] == 1 and before["steps"] > after["steps"]


def test_recipe_cost_refuses_an_unknown_model_before_any_work(tmp_path: Path) -> None:
    result = run([sys.executable, "-m", "benchmarks.recipe_cost", "--models", "linear,resnet", "--work-dir", str(tmp_path / "w")],
                 ROOT, check=False, timeout=60)  # fmt: skip
    assert result.returncode == 2 and "--models: unknown resnet" in result.stderr
    assert not (tmp_path / "w").exists()


def test_server_start_refuses_a_bad_repeat_count_before_starting_any_server(tmp_path: Path) -> None:
    result = run([sys.executable, "-m", "benchmarks.server_start", "--repeats", "0", "--work-dir", str(tmp_path / "w")],
                 ROOT, check=False, timeout=60)  # fmt: skip
    assert result.returncode == 2 and "--repeats must be at least 1" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "w").exists()


def test_cnn_step_cost_times_the_layouts_side_by_side_and_writes_its_section(tmp_path: Path) -> None:
    """`python -m benchmarks.cnn_step_cost` for real, two steps per layout: each layout is digitlab's own CNN, the
    ratio is against the first, and its section of RESULTS.md replaces the previous one and keeps the others'."""
    out = tmp_path / "RESULTS.md"
    out.write_text(f"# digitlab benchmarks\n\n<!-- cnn-step-cost: benchmarks/cnn_step_cost.py -->\nan older run\n<!-- /cnn-step-cost -->\n\n{KEPT}\n")
    done = run([sys.executable, "-m", "benchmarks.cnn_step_cost", "--steps", "2", "--repeats", "1", "--variants",
                "default,previous_default", "--out", str(out)], ROOT, timeout=600)  # fmt: skip
    printed = dict(re.findall(r"^(\S+)\s+[\d.]+ ms CPU per step\s+([\d.]+)x of default$", done.stdout, re.MULTILINE))
    assert printed["default"] == "1.00" and float(printed["previous_default"]) > 0
    markdown = out.read_text()
    assert "an older run" not in markdown and markdown.rstrip().endswith(KEPT)
    rows = {row.split(" | ")[0].lstrip("| "): row.split(" | ") for row in markdown.splitlines() if row.startswith(("| default", "| previous_default"))}
    # Pooling has no weights: the layouts differ by the second convolutions of the 14x14 and 7x7 blocks.
    default_params, variant_params = (int(rows[name][2].replace(",", "")) for name in ("default", "previous_default"))
    assert default_params - variant_params == 2 * (64 * 64 * 9 + 64 + 4 * 64)  # each a kernel, its bias, its batch norm's 4 vectors
    assert rows["previous_default"][-1].strip(" |") == f"{printed['previous_default']}x"
    bad = run([sys.executable, "-m", "benchmarks.cnn_step_cost", "--variants", "default,wide", "--out", str(out)], ROOT, check=False, timeout=60)
    assert bad.returncode == 2 and "--variants='default,wide' is not valid" in bad.stderr and "Traceback" not in bad.stderr


def test_steps_per_call_trains_both_ways_side_by_side_and_finds_the_same_weights(tmp_path: Path) -> None:
    """`python -m benchmarks.steps_per_call` for real on the default MLP (dropout and batch normalisation: state
    beyond the weights): one step per call and the planned steps per call leave the same weights bit for bit."""
    out = tmp_path / "RESULTS.md"
    out.write_text(f"# digitlab benchmarks\n\n{KEPT}\n")
    done = run([sys.executable, "-m", "benchmarks.steps_per_call", "--models", "mlp", "--repeats", "1", "--check-steps", "20",
                "--out", str(out)], ROOT, timeout=600)  # fmt: skip
    # Fashion-MNIST's 55,000 images in batches of 128: 430 steps per evaluation, 10 per call.
    assert re.search(r"^mlp\s+10 steps per call: [\d.]+ ms CPU per step against [\d.]+ ms, [\d.]+x; same weights: True$", done.stdout, re.MULTILINE)
    markdown = out.read_text()
    assert KEPT in markdown and "| mlp | 128 | 430 | 10 |" in markdown and "| yes (20 steps) |" in markdown


def test_steps_per_call_refuses_an_unknown_model_in_one_line() -> None:
    result = run([sys.executable, "-m", "benchmarks.steps_per_call", "--models", "mlp,resnet"], ROOT, check=False, timeout=60)
    assert result.returncode == 2 and result.stderr.strip() == (
        "steps_per_call: error: --models='mlp,resnet' is not valid: expected names among linear, mlp, cnn"
    )
