"""The configuration design: conf/ composes, params.yaml is its faithful copy, overrides are never dropped."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from digitlab.config import ROOT_MARKER, apply_overrides, compose, home_root, load_params, project_root, to_flat_dict, write_params
from digitlab.errors import DigitlabError
from digitlab.settings import load_settings

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


def test_outputs_stay_in_the_experiment_copy_and_the_store_in_the_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DVC_ROOT", raising=False)
    project = tmp_path / "proj"
    copy = project / ".dvc" / "tmp" / "exps" / "tmpa1b2c3"
    (copy / "pipeline").mkdir(parents=True)
    (project / ROOT_MARKER).write_text("stages: {}\n")
    (copy / ROOT_MARKER).write_text("stages: {}\n")
    assert project_root(copy / "pipeline") == copy
    assert home_root(copy / "pipeline") == project
    assert home_root(project) == project
    # DVC points $DVC_ROOT at the parent repository for --temp and --queue copies:
    # shared state goes there, the stage's outputs stay in the copy it runs in.
    monkeypatch.setenv("DVC_ROOT", str(project))
    monkeypatch.chdir(copy)
    assert home_root() == project and project_root() == copy


def test_flat_params_for_mlflow() -> None:
    flat = to_flat_dict(OmegaConf.create({"a": {"b": 1, "c": [1, 2]}, "d": None, "e": {}}))
    assert flat == {"a.b": 1, "a.c": [1, 2], "d": None, "e": {}}


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


# Each a real command, as a user types it: one line naming the setting, the value and what is allowed; exit 2.
BAD_SETTINGS = [
    (["models.linear.model.kernel_initializer=foo"], r"^digitlab: error: models\.linear\.model\.kernel_initializer='foo' is not valid: expected 'glorot_uniform'"),
    (["optimizer@models.linear.optimizer=sgd", "models.linear.optimizer.momentum=1.5"], r"^digitlab: error: models\.linear\.optimizer\.momentum=1\.5 is not valid: expected .*less than 1"),
    (["seed=4294967296"], r"^digitlab: error: seed=4294967296 is not valid: expected .*less than or equal to 4294967295"),
    (["tracking.uri=htp://localhost:5000"], r"^digitlab: error: tracking\.uri='htp://localhost:5000' is not valid: expected a URI of an MLflow store"),
    (["dataset.validation_size=1.5"], r"^digitlab: error: dataset\.validation_size=1\.5 is not valid"),
    (["models.cnn.training.deterministic=yes"], r"^digitlab: error: models\.cnn\.training\.deterministic='yes' is not valid: expected a valid boolean"),
    (["models.mlp.model.dropout=nan"], r"^digitlab: error: models\.mlp\.model\.dropout=nan is not valid: expected a finite number"),
    (["evaluate.top_k=inf"], r"^digitlab: error: evaluate\.top_k=inf is not valid"),
    (["+models.cnn.model.filterz=3"], r"^digitlab: error: models\.cnn\.model\.filterz=3 is not valid: expected no such setting"),
    (["model=resnet"], r"^digitlab: error: model='resnet' is not valid: expected one of the recipes under models: linear, mlp, cnn"),
    (["models.cnn.model.convs_per_block=[1,1]"], r"^digitlab: error: models\.cnn\.model\.convs_per_block=\[1, 1\] is not valid: expected one count for every block, or a list of 3 \(one per conv_filters entry: conv_filters=\[32, 64, 64\]\); set both when changing the number of blocks$"),
    (["models.cnn.model.conv_filters=[32,64]"], r"^digitlab: error: models\.cnn\.model\.convs_per_block=\[1, 2, 2\] is not valid: expected one count for every block, or a list of 2 \(one per conv_filters entry: conv_filters=\[32, 64\]\); set both when changing the number of blocks$"),
    (["models.cnn.model.convs_per_block=[1,0,2]"], r"^digitlab: error: models\.cnn\.model\.convs_per_block\[1\]=0 is not valid: expected a number greater than 0$"),
    (["models.linear.training.steps_per_call=0"], r"^digitlab: error: models\.linear\.training\.steps_per_call=0 is not valid: expected a number greater than 0$"),
]  # fmt: skip


@pytest.mark.parametrize(("overrides", "message"), BAD_SETTINGS, ids=[" ".join(o) for o, _ in BAD_SETTINGS])
def test_bad_setting_is_one_line_and_exit_2_and_params_yaml_is_kept(project: Path, overrides: list[str], message: str) -> None:
    before = (project / "params.yaml").read_bytes()
    result = run([str(Path(sys.executable).parent / "digitlab"), "params", *overrides], project, check=False)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and re.match(message, lines[0]), result.stderr
    assert (project / "params.yaml").read_bytes() == before, "a refused setting must not reach params.yaml"


def test_a_cnn_with_another_number_of_blocks_composes_when_both_settings_are_given(project: Path) -> None:
    """The README's pair of -S: conv_filters with two blocks and convs_per_block with two counts, as `digitlab params`
    (and the stages) compose them, build the CNN they name."""
    import keras

    from digitlab.models import build_model, parse_architecture

    run([str(Path(sys.executable).parent / "digitlab"), "params", "models.cnn.model.conv_filters=[32,64]",
         "models.cnn.model.convs_per_block=[1,2]"], project)  # fmt: skip
    cnn = yaml.safe_load((project / "params.yaml").read_text())["models"]["cnn"]["model"]
    assert cnn["conv_filters"] == [32, 64] and cnn["convs_per_block"] == [1, 2]
    model = build_model(parse_architecture(cnn), (28, 28, 1), 10)
    assert [layer.name for layer in model.layers if isinstance(layer, keras.layers.Conv2D)] == ["block1_conv1", "block2_conv1", "block2_conv2"]


@pytest.mark.parametrize("mode", ["params", "hydra"])
def test_stage_refuses_a_bad_setting_before_any_work(project: Path, mode: str) -> None:
    args = ["--params", "params.yaml"] if mode == "params" else []
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.train", *args, "model=linear", "models.linear.model.kernel_initializer=foo"],
        cwd=project, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("digitlab: error: models.linear.model.kernel_initializer='foo'")
    assert not (project / "models").exists() and not (project / "mlflow.db").exists()


def test_relative_sqlite_uri_is_accepted() -> None:
    assert load_settings(compose(["tracking.uri=sqlite:///mlflow.db"], root=ROOT)).tracking.uri == "sqlite:///mlflow.db"


@pytest.mark.parametrize("text", ["dataset: [unclosed\n", "- just\n- a list\n"])
def test_malformed_params_file_is_one_line(tmp_path: Path, text: str) -> None:
    bad = tmp_path / "params.yaml"
    bad.write_text(text)
    result = subprocess.run([sys.executable, "-m", "pipeline.preprocess", "--params", str(bad)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert str(bad) in result.stderr


def test_every_committed_option_validates() -> None:
    for group in ("dataset", "experiment"):
        for option in options(group):
            load_settings(compose([f"{group}={option}"], root=ROOT))


def test_a_fourth_recipe_is_yaml_only(project: Path) -> None:
    """A recipe added through conf/ gets its train and evaluate stages, and the report depends on them."""
    digitlab = str(Path(sys.executable).parent / "digitlab")
    run([digitlab, "params", "+architecture@models.cnn_wide.model=cnn", "+optimizer@models.cnn_wide.optimizer=adam",
         "+training@models.cnn_wide.training=default", "models.cnn_wide.model.conv_filters=[64,128]"], project)  # fmt: skip
    stages = run(["dvc", "stage", "list"], project).stdout
    assert "train@cnn_wide" in stages and "evaluate@cnn_wide" in stages
    dag = run(["dvc", "dag", "--dot", "report"], project).stdout
    assert '"train@cnn_wide"' in dag and '"evaluate@cnn_wide"' in dag
    lock_cmd = run(["dvc", "status", "train@cnn_wide"], project).stdout
    assert "cnn_wide" in lock_cmd
