"""The configuration design: conf/ composes, params.yaml is its faithful copy, overrides are never dropped."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from digitlab.config import ROOT_MARKER, apply_overrides, compose, home_root, load_params, project_root, to_flat_dict, write_params
from digitlab.errors import ConfigError, DigitlabError, require_choice, require_positive

from .conftest import ROOT, run

CONF = ROOT / "conf"


def options(group: str) -> list[str]:
    return sorted(path.stem for path in (CONF / group).glob("*.yaml"))


def test_committed_params_yaml_is_the_default_composition() -> None:
    """`dvc repro` on a fresh clone runs exactly what conf/ says."""
    committed = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert committed == OmegaConf.to_container(compose(root=ROOT)), (
        "params.yaml is stale: run `digitlab params` (make params) and commit it"
    )


@pytest.mark.parametrize("dataset", options("dataset"))
def test_every_dataset_option_composes(dataset: str) -> None:
    cfg = compose([f"dataset={dataset}"], root=ROOT)
    assert cfg.dataset.name == dataset
    assert len(cfg.dataset.image_shape) == 3


@pytest.mark.parametrize("preset", options("experiment"))
def test_every_experiment_preset_composes_and_wins_over_defaults(preset: str) -> None:
    cfg = compose([f"experiment={preset}"], root=ROOT)
    default = compose(root=ROOT)
    recipe = cfg.models[cfg.model]
    assert recipe != default.models[cfg.model], f"{preset} changed nothing in models.{cfg.model}"


def test_tutorial_linear_preset_values_reach_the_recipe() -> None:
    recipe = compose(["experiment=tutorial_linear"], root=ROOT).models.linear
    assert (recipe.optimizer.name, recipe.optimizer.learning_rate) == ("sgd", 0.5)
    assert (recipe.training.batch_size, recipe.training.max_steps) == (100, 1000)
    assert recipe.model.kernel_initializer == "zeros"


def test_group_swap_for_one_recipe_leaves_the_others() -> None:
    cfg = compose(["optimizer@models.cnn.optimizer=sgd"], root=ROOT)
    assert cfg.models.cnn.optimizer.name == "sgd"
    assert cfg.models.mlp.optimizer.name == "adam"


def test_unknown_group_option_is_an_error_naming_it() -> None:
    with pytest.raises(DigitlabError, match="mnist_6k"):
        compose(["dataset=mnist_6k"], root=ROOT)


def test_value_overrides_apply_and_unknown_keys_are_refused() -> None:
    cfg = load_params(ROOT / "params.yaml", ["models.cnn.training.epochs=3", "+note=hello", "model=mlp"])
    assert (cfg.models.cnn.training.epochs, cfg.note, cfg.model) == (3, "hello", "mlp")
    with pytest.raises(DigitlabError, match="modles"):
        apply_overrides(OmegaConf.create({"models": {}}), ["modles.cnn=1"])


def test_write_params_writes_the_composition_atomically(tmp_path: Path) -> None:
    target = tmp_path / "params.yaml"
    cfg = write_params(["dataset=digits", "models.mlp.training.epochs=2"], path=target, root=ROOT)
    written = yaml.safe_load(target.read_text())
    assert written["dataset"]["name"] == "digits" == cfg.dataset.name
    assert written["models"]["mlp"]["training"]["epochs"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["params.yaml"], "temporary file left behind"
    assert target.stat().st_mode & 0o044, "params.yaml must be readable by others, like any file a user writes"


def test_project_root_and_the_dvc_temp_copy_map_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DVC_ROOT", raising=False)
    project = tmp_path / "proj"
    copy = project / ".dvc" / "tmp" / "exps" / "tmpa1b2c3"
    (copy / "pipeline").mkdir(parents=True)
    (project / ROOT_MARKER).write_text("stages: {}\n")
    (copy / ROOT_MARKER).write_text("stages: {}\n")
    assert project_root(copy / "pipeline") == copy
    assert home_root(copy / "pipeline") == project
    assert home_root(project) == project
    monkeypatch.setenv("DVC_ROOT", str(copy))
    assert home_root() == project


def test_flat_params_for_mlflow() -> None:
    flat = to_flat_dict(OmegaConf.create({"a": {"b": 1, "c": [1, 2]}, "d": None, "e": {}}))
    assert flat == {"a.b": 1, "a.c": [1, 2], "d": None, "e": {}}


def test_require_helpers_name_setting_value_and_allowed() -> None:
    with pytest.raises(ConfigError, match=r"training.batch_size=0 is not valid: expected a whole number greater than 0"):
        require_positive("training.batch_size", 0, integer=True)
    with pytest.raises(ConfigError, match=r"model='resnet' is not valid: expected one of cnn, linear, mlp"):
        require_choice("model", "resnet", ["linear", "mlp", "cnn"])


def test_cli_params_command_and_bad_override_exit_code(project: Path) -> None:
    digitlab = str(Path(sys.executable).parent / "digitlab")
    run([digitlab, "params", "dataset=digits"], project)
    assert yaml.safe_load((project / "params.yaml").read_text())["dataset"]["name"] == "digits"
    bad = run([digitlab, "params", "dataset=nope"], project, check=False)
    assert bad.returncode == 2
    assert "dataset=nope" in bad.stderr or "nope" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_dvc_sees_the_whole_pipeline(project: Path) -> None:
    stages = run(["dvc", "stage", "list"], project).stdout
    for stage in ("download", "preprocess", "train@linear", "train@mlp", "train@cnn",
                  "evaluate@linear", "evaluate@mlp", "evaluate@cnn", "report"):
        assert stage in stages


def test_stage_entry_point_rejects_a_missing_params_file(project: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "pipeline.preprocess", "--params", "nope.yaml"],
                            cwd=project, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "nope.yaml does not exist" in result.stderr
