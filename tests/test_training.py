"""The train stage on 8x8 digits: real TensorFlow, a real MLflow SQLite store, the real conf/."""

from __future__ import annotations

import json
import re
import shutil
import socket
import sys
import time
from pathlib import Path

import keras
import mlflow
import numpy as np
import pandas as pd
import pytest
import requests

from digitlab.config import compose
from digitlab.settings import load_settings
from digitlab.data.prepared import load_split
from digitlab.errors import ConfigError, DigitlabError
from digitlab.data.prepared import load_meta
from digitlab.settings import Layout
from digitlab.training.loop import checkpoint_dir, train
from digitlab.training.checkpoints import STATE
from tests.conftest import serving, tiny_settings

ROOT = Path(__file__).resolve().parents[1]
TRAIN_JSON_KEYS = {
    "model", "dataset", "run_id", "experiment_id", "tracking_uri", "best_epoch", "epochs", "steps", "stopped_early",
    "train_time_s", "initial_val_accuracy", "val_accuracy", "val_loss", "trainable_params", "images_per_s",
}  # fmt: skip


@pytest.fixture(scope="module")
def workspace(tiny_prepared: Path, _mlflow_template: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A data dir holding the tiny prepared set and an MLflow store shared by this module's runs."""
    base = tmp_path_factory.mktemp("training")
    (base / "data").mkdir()
    (base / "data" / "prepared").symlink_to(tiny_prepared)
    shutil.copy2(_mlflow_template, base / "mlflow.db")
    return {"base": base, "data": base / "data", "uri": f"sqlite:///{base / 'mlflow.db'}"}


def config(workspace: dict, model: str, out: str, *overrides: str):
    """The shared tiny composition for ``model``, writing to ``<base>/<out>`` (validated settings)."""
    return tiny_settings(
        f"model={model}", f"paths.data={workspace['data']}", f"tracking.uri={workspace['uri']}",
        f"output_dir={workspace['base'] / out}", f"tracking.experiment=tests-{out}",
        f"paths.checkpoints={workspace['base'] / 'checkpoints'}", *overrides,
    )  # fmt: skip


@pytest.fixture(scope="module")
def trained(workspace: dict) -> dict:
    """Each recipe trained once for 3 epochs; the mlp run also logs its model to MLflow."""
    return {
        name: train(config(workspace, name, name, f"tracking.log_models={name == 'mlp'}")) for name in ("linear", "mlp", "cnn")
    }


def client(workspace: dict) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(tracking_uri=workspace["uri"])


@pytest.mark.parametrize("name", ["linear", "mlp", "cnn"])
def test_each_model_learns_and_writes_the_stage_outputs(trained, workspace, tiny_prepared, name):
    result, out = trained[name], workspace["base"] / name
    assert result.metrics.initial_val_accuracy < 0.3, "before training a model should be near chance (10%)"
    assert result.metrics.val_accuracy > 0.6, f"{name} did not learn: {result}"

    numbers = json.loads((out / "train.json").read_text())
    ids = json.loads((out / "run.json").read_text())
    assert all(isinstance(value, (int, float)) for value in numbers.values()), "train.json holds DVC metrics: numbers only"
    summary = {**numbers, **ids}
    assert TRAIN_JSON_KEYS <= set(summary) and summary["run_id"] == result.run.run_id
    assert summary["epochs"] == 3 and summary["steps"] == 3 * 19 and summary["trainable_params"] > 0 and summary["images_per_s"] > 0

    history = pd.read_csv(out / "history.csv")
    assert list(history.columns) == ["epoch", "step", "loss", "accuracy", "val_loss", "val_accuracy", "learning_rate"]
    assert history["epoch"].tolist() == [0, 1, 2, 3] and history["step"].tolist() == [0, 19, 38, 57]
    assert history["val_accuracy"].iloc[0] == pytest.approx(result.metrics.initial_val_accuracy)
    best_row = history.loc[history["epoch"] == summary["best_epoch"]].iloc[0]
    assert best_row["val_accuracy"] == pytest.approx(history["val_accuracy"].iloc[1:].max())

    # The saved model takes raw 0-255 pixels and returns probabilities; it is the best one.
    x_val, y_val = load_split(tiny_prepared, "val")
    probabilities = keras.models.load_model(out / "model.keras").predict(x_val.astype(np.float32), verbose=0)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-4)
    assert (probabilities.argmax(axis=1) == y_val).mean() == pytest.approx(best_row["val_accuracy"], abs=1e-6)
    assert {p.name for p in out.iterdir()} == {"model.keras", "history.csv", "train.json", "run.json", "curves.png"}
    assert not list((workspace["base"] / "checkpoints").glob(f"{name}-*")), "a completed run leaves nothing to resume"
    assert (out / "curves.png").stat().st_size > 5000


def test_mlflow_run_holds_params_metric_histories_tags_and_artifacts(trained, workspace):
    result = trained["mlp"]
    run = client(workspace).get_run(result.run.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["model"] == "mlp" and run.data.params["models.mlp.model.hidden_units"] == "[32]"
    assert run.data.params["seed"] == "42" and run.data.params["models.mlp.training.batch_size"] == "64"
    assert run.data.tags["model"] == "mlp" and run.data.tags["dataset"] == "digits" and len(run.data.tags["git_commit"]) == 40
    for metric in ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate"):
        steps = [m.step for m in client(workspace).get_metric_history(result.run.run_id, metric)]
        assert sorted(steps) == [0, 1, 2, 3], metric
    artifacts = {a.path for a in client(workspace).list_artifacts(result.run.run_id)}
    assert {"config.yaml", "curves.png", "history.csv", "checkpoints"} <= artifacts
    assert [a.path for a in client(workspace).list_artifacts(result.run.run_id, "checkpoints")] == ["checkpoints/best.keras"]
    # Artifacts live beside the store, not in whatever directory the run started from.
    assert run.info.artifact_uri.startswith((workspace["base"] / "mlruns").as_uri())
    assert (workspace["base"] / "mlruns" / "tests-mlp").is_dir()


def test_logged_model_predicts_through_pyfunc(trained, tiny_prepared, tmp_path):
    x_val, y_val = load_split(tiny_prepared, "val")
    model = mlflow.pyfunc.load_model(f"runs:/{trained['mlp'].run.run_id}/model", dst_path=str(tmp_path))  # not a temp folder left behind
    assert model.metadata.get_input_schema() is not None
    probabilities = np.asarray(model.predict(x_val.astype(np.float32)))
    assert probabilities.shape == (len(y_val), 10)
    assert (probabilities.argmax(axis=1) == y_val).mean() == pytest.approx(trained["mlp"].metrics.val_accuracy, abs=1e-6)


@pytest.mark.slow
def test_logged_model_is_served_by_mlflow_models_serve(trained, workspace, tiny_prepared, tmp_path):
    """``mlflow models serve`` (a real scoring server on 127.0.0.1) answers with the model's probabilities."""
    x_val, y_val = load_split(tiny_prepared, "val")
    command = lambda port: [  # noqa: E731
        str(Path(sys.executable).parent / "mlflow"), "models", "serve", "--model-uri", f"runs:/{trained['mlp'].run.run_id}/model",
        "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", workspace["uri"])
        patch.setenv("TMPDIR", str(tmp_path))  # where the server downloads the model, and leaves it
        with serving(command, "/ping", tmp_path) as url:
            response = requests.post(f"{url}/invocations", json={"inputs": x_val.astype(np.float32).tolist()}, timeout=60)
    assert response.ok, response.text
    probabilities = np.asarray(response.json()["predictions"])
    assert probabilities.shape == (len(y_val), 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-4)
    assert (probabilities.argmax(axis=1) == y_val).mean() == pytest.approx(trained["mlp"].metrics.val_accuracy, abs=1e-6)


def test_same_seed_gives_the_same_metrics(trained, workspace):
    again = train(config(workspace, "mlp", "mlp-again", "tracking.log_models=false"))
    first = pd.read_csv(workspace["base"] / "mlp" / "history.csv")
    second = pd.read_csv(workspace["base"] / "mlp-again" / "history.csv")
    pd.testing.assert_frame_equal(first, second)
    assert again.metrics.val_accuracy == trained["mlp"].metrics.val_accuracy and again.run.run_id != trained["mlp"].run.run_id


def train_and_read_history(workspace: dict, model: str, out: str, *overrides: str):
    """Train ``model`` (no MLflow model logged) into ``<base>/<out>``: its result and its history.csv."""
    result = train(config(workspace, model, out, *overrides, "tracking.log_models=false"))
    return result, pd.read_csv(workspace["base"] / out / "history.csv")


def test_early_stopping_stops_and_restores_the_best_weights(workspace, tiny_prepared):
    # min_delta 1: no evaluation after the first counts as an improvement, so patience 1 stops at the second
    # (start_fraction 0: the tiny recipe's learning rate decays, which would otherwise hold the stop off).
    result, history = train_and_read_history(
        workspace, "mlp", "early", "models.mlp.training.epochs=6", "models.mlp.training.early_stopping.patience=1",
        "models.mlp.training.early_stopping.min_delta=1.0", "models.mlp.training.early_stopping.start_fraction=0",
    )  # fmt: skip
    assert result.metrics.stopped_early and result.metrics.epochs == 2 and result.metrics.best_epoch == 1
    assert history["epoch"].tolist() == [0, 1, 2]
    assert history["val_accuracy"].iloc[2] != history["val_accuracy"].iloc[1], "need a change to see which weights were kept"
    assert result.metrics.val_accuracy == pytest.approx(history["val_accuracy"].iloc[1], abs=1e-6)


def test_a_decaying_schedule_holds_early_stopping_off_until_start_fraction(workspace):
    """A real training on the tiny recipe's cosine schedule, where no evaluation counts as an improvement (it would
    take 100,000 more validation images right) and patience is 1: without start_fraction it would stop at the 2nd
    evaluation; with start_fraction 0.5 of 6 evaluations it stops at the 3rd, and keeps the 1st as best."""
    result, history = train_and_read_history(
        workspace, "mlp", "decaying", "models.mlp.training.epochs=6", "models.mlp.training.early_stopping.patience=1",
        "models.mlp.training.early_stopping.min_delta=0", "models.mlp.training.early_stopping.min_delta_images=100000",
        "models.mlp.training.early_stopping.start_fraction=0.5",
    )  # fmt: skip
    assert result.metrics.stopped_early and result.metrics.epochs == 3 and result.metrics.best_epoch == 1
    assert history["epoch"].tolist() == [0, 1, 2, 3]


def test_evaluation_every_n_steps_and_max_steps(workspace):
    result, history = train_and_read_history(
        workspace, "linear", "steps", "models.linear.training.eval_every_steps=5", "models.linear.training.max_steps=12",
        "models.linear.training.early_stopping.enabled=false",
    )  # fmt: skip
    assert history["step"].tolist() == [0, 5, 10, 12] and result.metrics.steps == 12 and result.metrics.epochs == 3


def test_several_steps_per_call_still_evaluate_and_stop_on_the_planned_steps(workspace):
    """Evaluations every 6 steps and a stop at 16: two steps per call into TensorFlow (the largest count
    dividing both); the same training with steps_per_call=1 gives the same history, value for value."""
    result, history = train_and_read_history(
        workspace, "linear", "calls", "models.linear.training.eval_every_steps=6", "models.linear.training.max_steps=16",
        "models.linear.training.early_stopping.enabled=false",
    )  # fmt: skip
    assert history["step"].tolist() == [0, 6, 12, 16] and result.metrics.steps == 16
    assert keras.models.load_model(workspace["base"] / "calls" / "model.keras").steps_per_execution == 2
    _, one_per_call = train_and_read_history(
        workspace, "linear", "one-call", "models.linear.training.eval_every_steps=6", "models.linear.training.max_steps=16",
        "models.linear.training.early_stopping.enabled=false", "models.linear.training.steps_per_call=1",
    )  # fmt: skip
    assert keras.models.load_model(workspace["base"] / "one-call" / "model.keras").steps_per_execution == 1
    pd.testing.assert_frame_equal(one_per_call, history, check_exact=True)


@pytest.mark.parametrize(
    ("steps_per_eval", "total_steps", "expected"),
    [
        (215, 48 * 215, 5),  # Fashion-MNIST's linear model: 215 batches of 256 a pass
        (430, 50 * 430, 10),  # its MLP and CNN: 430 batches of 128
        (550, 1000, 10),  # tutorial_linear: the last evaluation period is 450 steps
        (8, 24, 8),
        (782, 3 * 782, 2),  # 2 x 17 x 23: nothing larger up to 16
        (167, 500, 1),  # a prime period
    ],
)
def test_steps_per_call_divide_every_evaluation_period(steps_per_eval, total_steps, expected):
    from digitlab.training.schedule import Plan

    plan = Plan(steps_per_eval=steps_per_eval, evaluations=-(-total_steps // steps_per_eval), total_steps=total_steps, max_steps_per_call=16)
    assert plan.steps_per_execution == expected
    assert steps_per_eval % expected == 0 and total_steps % expected == 0
    assert plan.model_copy(update={"max_steps_per_call": 1}).steps_per_execution == 1, "1: a call per step"


def test_evaluation_every_n_epochs(workspace):
    result, history = train_and_read_history(
        workspace, "linear", "every2", "models.linear.training.eval_every_epochs=2", "models.linear.training.epochs=4",
        "models.linear.training.early_stopping.enabled=false",
    )  # fmt: skip
    assert history["step"].tolist() == [0, 2 * 19, 4 * 19] and result.metrics.epochs == 2


def test_label_smoothing_and_weight_decay_train_softer_and_smaller_models(workspace, tiny_prepared):
    """Real trainings of the linear recipe: label smoothing makes the model less sure of its answers,
    decoupled weight decay keeps its weights smaller; both still learn."""
    steady = ("models.linear.training.epochs=5", "models.linear.training.early_stopping.enabled=false")
    plain, _ = train_and_read_history(workspace, "linear", "plain", *steady)
    smooth, _ = train_and_read_history(workspace, "linear", "smooth", *steady, "models.linear.training.label_smoothing=0.3")
    decay, _ = train_and_read_history(workspace, "linear", "decay", *steady, "models.linear.optimizer.weight_decay=1.0")
    x_val, _ = load_split(tiny_prepared, "val")
    models = {name: keras.models.load_model(workspace["base"] / name / "model.keras") for name in ("plain", "smooth", "decay")}

    def sureness(model) -> float:  # the mean probability of the class the model chose
        return float(np.max(model.predict(x_val.astype("float32"), verbose=0), axis=1).mean())

    def weight_norm(model) -> float:
        return float(sum(np.square(w).sum() for w in model.get_weights()))

    assert models["smooth"].loss.get_config()["label_smoothing"] == pytest.approx(0.3)
    assert sureness(models["smooth"]) < sureness(models["plain"]) - 0.05
    assert models["decay"].optimizer.weight_decay == pytest.approx(1.0)
    assert weight_norm(models["decay"]) < 0.9 * weight_norm(models["plain"])
    assert min(r.metrics.val_accuracy for r in (plain, smooth, decay)) > 0.5


def test_weight_average_is_what_validation_scores_and_every_saved_model_holds(workspace, tiny_prepared):
    """Real trainings with ``optimizer.ema_momentum``: each history row scores the averaged weights,
    and the model kept (best, or the last one when the best is not restored, after an early stop)
    and the checkpoint a run resumes from are exactly the weights that were scored."""
    steady = ("models.mlp.training.epochs=4", "models.mlp.training.early_stopping.enabled=false")
    plain, plain_history = train_and_read_history(workspace, "mlp", "ema-plain", *steady)
    averaged, history = train_and_read_history(workspace, "mlp", "ema", *steady, "models.mlp.optimizer.ema_momentum=0.9")
    assert not np.allclose(history["val_loss"][1:], plain_history["val_loss"][1:]), "the average changes what is scored"
    best = history.set_index("epoch").loc[averaged.metrics.best_epoch]
    assert averaged.metrics.val_loss == pytest.approx(best["val_loss"], rel=1e-5)
    assert keras.models.load_model(workspace["base"] / "ema" / "model.keras").optimizer.use_ema

    # Stopped early and the best not restored: the model left is the average scored last, not the raw weights.
    stopped, stopped_history = train_and_read_history(
        workspace, "mlp", "ema-stop", "models.mlp.training.epochs=6", "models.mlp.optimizer.ema_momentum=0.9",
        "models.mlp.training.early_stopping.patience=1", "models.mlp.training.early_stopping.min_delta=1.0",
        "models.mlp.training.early_stopping.start_fraction=0", "models.mlp.training.early_stopping.restore_best_weights=false",
    )  # fmt: skip
    assert stopped.metrics.stopped_early and stopped.metrics.epochs == 2
    assert stopped.metrics.val_loss == pytest.approx(stopped_history["val_loss"].iloc[-1], rel=1e-5)

    # Interrupted after evaluation 2: its checkpoint holds the scored average; the resumed run finishes consistently.
    cfg = config(workspace, "mlp", "ema-resume", *steady, "models.mlp.optimizer.ema_momentum=0.9", "tracking.log_models=false")
    with pytest.raises(KeyboardInterrupt):
        train(cfg, callbacks=[InterruptAt(2)])
    last = keras.models.load_model(checkpoint_dir(cfg, Layout.for_settings(cfg), load_meta(workspace["data"] / "prepared")).last)
    x_val, y_val = load_split(tiny_prepared, "val")
    scored = pd.read_csv(workspace["base"] / "ema-resume" / "history.csv").set_index("epoch").loc[2, "val_loss"]
    assert last.evaluate(x_val.astype("float32"), y_val, verbose=0)[0] == pytest.approx(scored, rel=1e-4)
    resumed = train(cfg)
    resumed_history = pd.read_csv(workspace["base"] / "ema-resume" / "history.csv")
    assert resumed.metrics.epochs == 4 and resumed_history["epoch"].tolist() == [0, 1, 2, 3, 4]
    assert resumed.metrics.val_loss == pytest.approx(resumed_history.set_index("epoch").loc[resumed.metrics.best_epoch, "val_loss"], rel=1e-5)
    # Resuming swaps the raw weights back in: the run goes on as the uninterrupted one did, not from the average.
    assert resumed_history["val_loss"].iloc[-1] == pytest.approx(history["val_loss"].iloc[-1], rel=0.05)


class InterruptAt(keras.callbacks.Callback):
    """Ctrl-C at the end of an evaluation (after digitlab's checkpoint of it)."""

    def __init__(self, epoch: int) -> None:
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.epoch:
            raise KeyboardInterrupt("simulated Ctrl-C")


def test_interrupted_run_resumes_its_checkpoint_and_mlflow_run(workspace):
    cfg = config(workspace, "mlp", "resume", "models.mlp.training.epochs=4", "tracking.log_models=false")
    with pytest.raises(KeyboardInterrupt):
        train(cfg, callbacks=[InterruptAt(2)])
    checkpoints = checkpoint_dir(cfg, Layout.for_settings(cfg), load_meta(workspace["data"] / "prepared"))
    assert checkpoints.directory.parent == workspace["base"] / "checkpoints"
    assert {p.name for p in checkpoints.directory.iterdir()} == {"best.keras", "last.keras", STATE}
    assert not (workspace["base"] / "resume" / "checkpoints").exists(), "resume state is not a stage output"
    state = json.loads(checkpoints.state_path.read_text())
    assert state["epoch"] == 2 and state["step"] == 38
    store = client(workspace)
    interrupted = store.get_run(state["run_id"])
    assert interrupted.info.status == "FAILED" and "simulated Ctrl-C" in interrupted.data.tags["error"]

    resumed = train(cfg)
    assert resumed.run.run_id == state["run_id"] and resumed.metrics.epochs == 4 and resumed.metrics.steps == 4 * 19
    history = pd.read_csv(workspace["base"] / "resume" / "history.csv")
    assert history["epoch"].tolist() == [0, 1, 2, 3, 4]
    runs = store.search_runs([interrupted.info.experiment_id])
    assert [run.info.run_id for run in runs] == [state["run_id"]], "resuming must not start a second MLflow run"
    assert runs[0].info.status == "FINISHED"
    steps = [m.step for m in store.get_metric_history(state["run_id"], "val_accuracy")]
    assert sorted(steps) == [0, 1, 2, 3, 4]

    # A finished run is not resumed: the same command trains afresh in a new MLflow run.
    fresh = train(cfg)
    assert fresh.run.run_id != resumed.run.run_id and fresh.metrics.epochs == 4


def test_nan_loss_fails_clearly_and_the_run_is_failed(workspace):
    cfg = config(
        workspace, "mlp", "nan", "optimizer@models.mlp.optimizer=sgd", "models.mlp.optimizer.learning_rate=1e30",
        "tracking.log_models=false",
    )  # fmt: skip
    with pytest.raises(DigitlabError, match=r"diverged.*nan.*models\.mlp\.optimizer\.learning_rate \(now 1e\+30\)"):
        train(cfg)
    (run,) = client(workspace).search_runs([mlflow.get_experiment_by_name("tests-nan").experiment_id])
    assert run.info.status == "FAILED" and "diverged" in run.data.tags["error"]
    assert not (workspace["base"] / "nan" / "model.keras").exists()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model=resnet"], r"^model='resnet' is not valid: expected one of the recipes under models: linear, mlp, cnn"),
        (["models.mlp.optimizer.name=adamw"], r"^models\.mlp\.optimizer\.name='adamw'.*'adagrad', 'adam', 'rmsprop' or 'sgd'"),
        (["models.mlp.optimizer.learning_rate=0"], r"^models\.mlp\.optimizer\.learning_rate=0 .*greater than 0"),
        (["models.mlp.optimizer.learning_rate=-0.1"], r"^models\.mlp\.optimizer\.learning_rate=-0\.1 "),
        (["models.mlp.training.epochs=0"], r"^models\.mlp\.training\.epochs=0 "),
        (["models.mlp.training.batch_size=0"], r"^models\.mlp\.training\.batch_size=0 "),
        (["models.mlp.training.early_stopping.patience=0"], r"^models\.mlp\.training\.early_stopping\.patience=0 "),
        (["models.mlp.training.early_stopping.monitor=val_f1"], r"^models\.mlp\.training\.early_stopping\.monitor='val_f1'"),
    ],
)  # fmt: skip
def test_bad_settings_are_refused_by_the_schema(overrides, message):
    with pytest.raises(ConfigError, match=message):
        tiny_settings(*overrides)


def test_an_architecture_that_does_not_fit_the_images_fails_before_any_run(workspace):
    settings = config(workspace, "cnn", "bad", "tracking.experiment=tests-bad", "models.cnn.model.conv_filters=[8,8,8,8]",
                      "models.cnn.model.convs_per_block=1")
    with pytest.raises(ConfigError, match=r"layer 'block4_pool' gets shape \(1, 1, 8\) from input images of shape \(8, 8, 1\)"):
        train(settings)
    assert mlflow.get_experiment_by_name("tests-bad") is None, "no MLflow run may start for a bad config"
    assert not (workspace["base"] / "bad").exists()


def test_unreachable_tracking_server_fails_within_seconds_naming_it(workspace):
    with socket.socket() as probe:  # a port that nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    uri = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    with pytest.raises(DigitlabError, match=rf"MLflow tracking server {uri} is unreachable"):
        train(config(workspace, "linear", "unreachable", f"tracking.uri={uri}"))
    assert time.monotonic() - started < 10


@pytest.mark.parametrize(
    ("preset", "dataset", "model"),
    [
        ("tutorial_linear", "mnist", "linear"),
        ("tutorial_cnn", "mnist", "cnn"),
        ("tutorial_dnn", "mnist", "mlp"),
        ("tutorial_keras_mlp", "mnist", "mlp"),
        ("tutorial_cifar100_mlp", "cifar100", "mlp"),
    ],
)
def test_tutorial_presets_are_valid_recipes_for_their_dataset(preset, dataset, model):
    from digitlab.models import build_model

    settings = load_settings(compose([f"experiment={preset}"], root=ROOT))
    recipe = settings.recipe
    assert settings.dataset.name == dataset and settings.model == model
    assert recipe.optimizer.schedule is None, "the tutorials train with a constant learning rate"
    classes = 100 if dataset == "cifar100" else 10
    assert build_model(recipe.model, settings.dataset.image_shape, classes).output_shape == (None, classes)


def test_tutorial_schedules_match_the_tutorials():
    linear = load_settings(compose(["experiment=tutorial_linear"], root=ROOT)).recipe.training
    assert linear.plan(55_000).model_dump() == {"steps_per_eval": 550, "evaluations": 2, "total_steps": 1000, "first_stop": 0, "max_steps_per_call": 16}
    cnn = load_settings(compose(["experiment=tutorial_cnn"], root=ROOT)).recipe.training
    assert cnn.plan(55_000).steps_per_eval == 100 and 100 * cnn.early_stopping.patience == 1000


def tutorial_stop(accuracies: list[float], every: int = 100, require: int = 1000) -> tuple[int, int]:
    """Tutorial 001's loop, as written there: (the iteration it stops after, the iteration of its best validation
    accuracy) for validation accuracies measured every ``every`` iterations."""
    best, last_improvement = 0.0, 0
    for iteration in range(1, every * len(accuracies) + 1):
        if iteration % every == 0:
            accuracy = accuracies[iteration // every - 1]
            if accuracy > best:
                best, last_improvement = accuracy, iteration
        if iteration - last_improvement > require:
            return iteration, last_improvement
    return every * len(accuracies), last_improvement


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tutorial_cnn_stops_where_the_tutorials_loop_stops(tmp_path: Path, seed: int):
    """The preset's stopping rule (patience 10 evaluations of 100 steps, any improvement of one image counts) and
    the tutorial's (stop once more than 1,000 iterations passed since the last improvement) on the same
    validation curves, with ties and one-image steps on a 5,000-image validation set: same best, same end."""
    from digitlab.training.callbacks import KeepBestAndStopEarly
    from digitlab.training.checkpoints import CheckpointDir, RunState

    stopping = load_settings(compose(["experiment=tutorial_cnn"], root=ROOT)).recipe.training.early_stopping
    rng = np.random.default_rng(seed)
    # A noisy rising curve in whole images of 5,000, with ties (no improvement): seeds 0 and 1 stop, seed 2 runs to the end.
    correct = np.minimum(4_800 + np.cumsum(rng.integers(-3, 4, size=100)) + np.arange(100), 4_930)
    accuracies = [float(c) / 5_000 for c in correct]
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])
    model.stop_training = False  # as Keras' fit sets it
    callback = KeepBestAndStopEarly(RunState(fingerprint="f"), stopping, CheckpointDir(tmp_path, "f"), validation_size=5_000)
    callback.set_model(model)
    for epoch, accuracy in enumerate(accuracies):
        callback.on_epoch_end(epoch, {"val_accuracy": accuracy})
        if model.stop_training:
            break
    stop, best = tutorial_stop(accuracies)
    assert callback.state.best_epoch * 100 == best
    # The tutorial checks every iteration and stops one iteration after the 10th flat evaluation; the callback stops
    # at that evaluation. A run that never stops ends at the same last evaluation.
    assert (epoch + 1) * 100 == (stop - 1 if model.stop_training else stop)


def test_early_stopping_waits_for_the_low_learning_rates_of_a_decaying_schedule():
    training = tiny_settings().models["cnn"].training  # batch 64, 3 epochs
    stopping = training.early_stopping.model_copy(update={"start_fraction": 0.8})
    training = training.model_copy(update={"epochs": 20, "early_stopping": stopping})
    assert training.plan(6_400).first_stop == 0, "a constant learning rate: patience alone decides"
    assert training.plan(6_400, decaying=True).first_stop == 16, "cosine over 20 evaluations: not before the 16th"
    assert training.plan(6_400, min_steps=1_900, decaying=True).first_stop == 19, "min_train_steps wins when later"


def test_min_delta_images_is_the_same_rule_on_any_validation_set():
    stopping = tiny_settings().models["mlp"].training.early_stopping.model_copy(update={"min_delta": 0.0, "min_delta_images": 2})
    for size in (500, 5_000, 10_000):
        assert not stopping.improves(1_001 / size, 1_000 / size, size), f"one image more on {size}"
        assert stopping.improves(1_002 / size, 1_000 / size, size), f"two images more on {size}"
    loss = stopping.model_copy(update={"monitor": "val_loss", "min_delta": 0.01})
    assert loss.improves(0.5, 0.52, 500) and not loss.improves(0.5, 0.505, 500), "losses use min_delta"


def test_the_train_stage_builds_a_cnn_with_its_own_count_per_block_pooled_first(workspace, tiny_prepared):
    """`python -m pipeline.train` as a user runs it by hand, with the CNN's per-block convolution counts and pooling
    before normalisation: the saved model has those layers and learns."""
    from tests.conftest import ROOT, TINY_OVERRIDES, run

    out = workspace["base"] / "cnn-layout"
    overrides = [*TINY_OVERRIDES, "model=cnn", f"paths.data={workspace['data']}", f"tracking.uri={workspace['uri']}",
                 f"output_dir={out}", "tracking.experiment=tests-cnn-layout", f"paths.checkpoints={workspace['base'] / 'checkpoints'}",
                 "models.cnn.model.batch_norm=true", "models.cnn.model.convs_per_block=[1,2]", "models.cnn.model.pool_first=true"]  # fmt: skip
    done = run([sys.executable, "-m", "pipeline.train", *overrides], ROOT, timeout=600)
    # No error line from TensorFlow's own logging (at digitlab's level, TF_CPP_MIN_LOG_LEVEL 2): logging the model
    # through predict printed "E0000 ... NodeDef mentions attribute use_unbounded_threadpool" after every training.
    assert not re.findall(r"^[EF]\d{4} .*", done.stderr, re.MULTILINE), done.stderr[-3000:]
    model = keras.saving.load_model(out / "model.keras")
    names = [layer.name for layer in model.layers]
    assert [name for name in names if name.startswith("block")] == [
        "block1_conv1", "block1_pool", "block1_batch_norm1", "block1_relu1", "block1_dropout",
        "block2_conv1", "block2_batch_norm1", "block2_relu1", "block2_conv2", "block2_pool", "block2_batch_norm2", "block2_relu2",
        "block2_dropout",
    ]  # fmt: skip
    history = pd.read_csv(out / "history.csv")
    assert history["val_accuracy"].max() > history["val_accuracy"].iloc[0] + 0.2, history
