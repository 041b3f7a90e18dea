"""The evaluate stage on tiny real Keras models: outputs, MLflow logging, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.metrics import accuracy_score, f1_score

from digitlab.errors import ConfigError, DigitlabError
from digitlab.evaluation import evaluate
from digitlab.evaluation.figures import FIGURES, EvaluationData, figure
from digitlab.evaluation.figures import report_order as figures_in_report_order
from digitlab.evaluation.outputs import EvaluationMetrics, EvaluationOutputs, Predictions
from digitlab.evaluation.figures.weights import first_layer_weight_maps

pytest.register_assert_rewrite("tests.evaluation_fixtures")
from tests.evaluation_fixtures import MODEL_NAMES, evaluation_dir, layout, make_project, settings  # noqa: E402

pytest_plugins = ["tests.evaluation_fixtures"]

ROOT = Path(__file__).resolve().parents[1]


def test_outputs_agree_with_scikit_learn(evaluated):
    root, _, _ = evaluated
    for name in MODEL_NAMES:
        out = evaluation_dir(root, name)
        result = json.loads((out / "metrics.json").read_text())
        predictions = np.load(out / "predictions.npz")
        y_true, y_pred, probabilities = predictions["y_true"], predictions["y_pred"], predictions["probabilities"]
        assert len(y_true) == result["n_test"] == 347
        assert np.array_equal(y_pred, probabilities.argmax(axis=1))
        assert result["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
        assert result["f1_macro"] == pytest.approx(f1_score(y_true, y_pred, average="macro"))
        assert result["accuracy_ci_low"] < result["accuracy"] < result["accuracy_ci_high"]
        assert result["top_k_accuracy"] >= result["accuracy"]
        assert result["accuracy"] > 0.5, f"{name} learned nothing: {result}"
        assert result["throughput_images_per_s"] > 0 and result["n_params"] > 0
        # Keras's loss and sklearn's log loss measure the same cross-entropy (no weight penalty here).
        assert result["loss"] == pytest.approx(result["log_loss"], rel=1e-3)

        confusion = pd.read_csv(out / "confusion.csv", dtype=str)
        assert list(confusion.columns) == ["actual", "predicted"] and len(confusion) == len(y_true)
        assert (confusion["actual"] == confusion["predicted"]).mean() == pytest.approx(result["accuracy"])
        report = json.loads((out / "classification_report.json").read_text())
        assert set(report) >= {str(c) for c in range(10)}
        for figure in (spec.filename for _, spec in FIGURES.items()):
            path = out / "figures" / figure
            assert path.stat().st_size > 1000, path
            with Image.open(path) as image:
                assert image.format == "PNG" and min(image.size) >= 150


def test_logged_to_the_training_run_which_stays_finished(evaluated):
    root, run_ids, uri = evaluated
    client = mlflow.MlflowClient(tracking_uri=uri)
    for name, run_id in run_ids.items():
        run = client.get_run(run_id)
        result = json.loads((evaluation_dir(root, name) / "metrics.json").read_text())
        assert run.info.status == "FINISHED"
        assert run.data.metrics["test_accuracy"] == pytest.approx(result["accuracy"])
        assert run.data.metrics["test_f1_macro"] == pytest.approx(result["f1_macro"])
        artifacts = {a.path for a in client.list_artifacts(run_id, "evaluation/figures")}
        assert f"evaluation/figures/{FIGURES['confusion'].filename}" in artifacts
        assert f"evaluation/figures/{FIGURES['weights'].filename}" in artifacts
        # Read from the run itself: mlflow.load_table searches the process's active experiment, which another test may have set.
        logged = mlflow.artifacts.load_dict(f"{client.get_run(run_id).info.artifact_uri}/evaluation/confusion_matrix.json")
        table = pd.DataFrame(logged["data"], columns=logged["columns"])
        assert table["count"].sum() == result["n_test"]


def test_weight_maps_follow_the_first_learned_layer(trained_models):
    import keras

    for name, expected_count, title in (("linear", 10, "class 0"), ("mlp", 16, "unit 0"), ("cnn", 4, "filter 0")):
        model = keras.models.load_model(trained_models / name / "model.keras")
        maps, titles, _ = first_layer_weight_maps(model, (8, 8, 1), [str(c) for c in range(10)])
        assert len(maps) == len(titles) == expected_count and titles[0] == title
        assert maps.shape[1:] == ((3, 3) if name == "cnn" else (8, 8))
    kernel = np.asarray(keras.models.load_model(trained_models / "linear" / "model.keras").layers[-1].kernel)
    maps, _, _ = first_layer_weight_maps(keras.models.load_model(trained_models / "linear" / "model.keras"), (8, 8, 1), list("0123456789"))
    assert np.allclose(maps[3], kernel[:, 3].reshape(8, 8))


def test_missing_model_output_names_the_file(tiny_prepared, trained_models, tmp_path, mlflow_uri, monkeypatch):
    make_project(tmp_path, tiny_prepared, trained_models, monkeypatch)
    (tmp_path / "models" / "mlp" / "history.csv").unlink()
    with pytest.raises(DigitlabError, match=r"models/mlp/history\.csv is missing.*train stage"):
        evaluate.run(settings(), layout(tmp_path), "mlp")
    assert not evaluation_dir(tmp_path, "mlp").exists()


def test_bad_settings_fail_before_loading(tmp_path, monkeypatch):
    # The settings are validated once, before the stage gets them: nothing is loaded or written.
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    with pytest.raises(ConfigError, match="evaluate.confidence_level=1.5"):
        evaluate.run(settings("model=linear", "evaluate.confidence_level=1.5"), layout(tmp_path), "linear")
    with pytest.raises(ConfigError, match="model='resnet'.*linear, mlp, cnn"):
        evaluate.run(settings("model=resnet"), layout(tmp_path), "resnet")
    assert not list(tmp_path.iterdir())


def test_stage_entry_point_exits_2_on_missing_model(tmp_path):
    from tests.conftest import run

    # The stage works in the project of its working directory: an empty one here.
    result = run([str(ROOT / ".venv" / "bin" / "python"), "-m", "pipeline.evaluate", "--params", str(ROOT / "params.yaml"), "model=cnn"],
                 cwd=tmp_path, env={"DVC_ROOT": str(tmp_path), "PYTHONPATH": str(ROOT)}, check=False)
    assert result.returncode == 2
    assert "models/cnn/model.keras is missing" in result.stderr


def test_figures_are_registered_once_in_report_order():
    specs = [spec for _, spec in FIGURES.items()]
    assert [spec.key for spec in figures_in_report_order()] == ["confusion", "confusion_normalized", "curves", "errors", "roc", "weights"]
    assert len({spec.filename for spec in specs}) == len(specs)
    assert all(spec.filename.endswith(".png") and spec.title for spec in specs)
    with pytest.raises(RuntimeError, match="two figures are registered as 'roc'"):
        figure("roc", filename="roc.png", title="ROC again")(lambda data: None)


def test_a_figure_that_does_not_apply_is_not_written(tiny_prepared, tmp_path):
    """Weight maps need a first learned layer that is Dense or Conv2D; the other figures are drawn for any model."""
    import keras

    from digitlab.data.prepared import load_meta, load_split

    meta = load_meta(tiny_prepared)
    x, y = load_split(tiny_prepared, "test")
    model = keras.Sequential([keras.Input(meta.image_shape), keras.layers.LayerNormalization(), keras.layers.Flatten(), keras.layers.Dense(10, activation="softmax")])
    probabilities = np.full((len(y), 10), 0.1)
    probabilities[np.arange(len(y)), (y + np.arange(len(y)) % 2) % 10] = 0.5
    history = pd.DataFrame({"epoch": [0, 1], "loss": [2.0, 1.0], "accuracy": [0.1, 0.5], "val_loss": [2.0, 1.1], "val_accuracy": [0.1, 0.5]})
    data = EvaluationData("odd", meta, x, y, probabilities, history, 1, model)
    outputs = EvaluationOutputs(tmp_path / "odd", "odd")
    written = evaluate.draw_figures(data, outputs)
    assert [spec.key for spec in written] == ["confusion", "confusion_normalized", "curves", "errors", "roc"]
    assert sorted(p.name for p in outputs.figures.iterdir()) == sorted(spec.filename for spec in written)
    assert list(outputs.figure_files()) == [spec.key for spec in written]


def test_outputs_round_trip_and_replace_stale_files(tmp_path):
    from digitlab.evaluation import metrics

    y_true = np.array([0, 1, 2, 1, 0, 2])
    probabilities = np.eye(3)[[0, 1, 1, 1, 2, 2]] * 0.7 + 0.1
    summary = metrics.summarize(y_true, probabilities, top_k=2, confidence_level=0.9)
    result = EvaluationMetrics(**summary, loss=0.5, top_k=2, confidence_level=0.9, throughput_images_per_s=10.0, n_params=7)
    outputs = EvaluationOutputs(tmp_path / "tiny")
    (outputs.figures).mkdir(parents=True)
    (outputs.figures / "weights.png").write_bytes(b"from an earlier model")

    def fill(staging):
        staging.write_predictions(Predictions(y_true, probabilities.argmax(axis=1), probabilities))
        staging.write_confusion(y_true, probabilities.argmax(axis=1), ["a", "b", "c"])
        staging.write_metrics(result)

    outputs.replace(fill)
    assert outputs.require().read_metrics() == result
    assert list(json.loads(outputs.metrics.read_text())) == [*summary, "loss", "top_k", "confidence_level", "throughput_images_per_s", "n_params"]
    predictions = outputs.read_predictions()
    assert predictions.probabilities.dtype == np.float32 and predictions.y_pred.tolist() == [0, 1, 1, 1, 2, 2]
    assert outputs.read_confusion().values.tolist() == [["a", "a"], ["b", "b"], ["c", "b"], ["b", "b"], ["a", "c"], ["c", "c"]]
    assert not outputs.figures.exists() and [p.name for p in tmp_path.iterdir()] == ["tiny"]
    outputs.predictions.unlink()
    with pytest.raises(DigitlabError, match=r"tiny/predictions\.npz is missing: run the evaluate stage of recipe 'tiny'"):
        outputs.require()
