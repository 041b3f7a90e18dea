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

pytest.register_assert_rewrite("tests.evaluation_fixtures")
from tests.evaluation_fixtures import MODEL_NAMES, config, make_project  # noqa: E402

pytest_plugins = ["tests.evaluation_fixtures"]

ROOT = Path(__file__).resolve().parents[1]


def test_outputs_agree_with_scikit_learn(evaluated):
    root, _, _ = evaluated
    for name in MODEL_NAMES:
        out = root / "reports" / name
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
        for figure in evaluate.FIGURES.values():
            path = out / "figures" / figure
            assert path.stat().st_size > 1000, path
            with Image.open(path) as image:
                assert image.format == "PNG" and min(image.size) >= 150


def test_logged_to_the_training_run_which_stays_finished(evaluated):
    root, run_ids, uri = evaluated
    client = mlflow.MlflowClient(tracking_uri=uri)
    for name, run_id in run_ids.items():
        run = client.get_run(run_id)
        result = json.loads((root / "reports" / name / "metrics.json").read_text())
        assert run.info.status == "FINISHED"
        assert run.data.metrics["test_accuracy"] == pytest.approx(result["accuracy"])
        assert run.data.metrics["test_f1_macro"] == pytest.approx(result["f1_macro"])
        artifacts = {a.path for a in client.list_artifacts(run_id, "evaluation/figures")}
        assert f"evaluation/figures/{evaluate.FIGURES['confusion']}" in artifacts
        assert f"evaluation/figures/{evaluate.FIGURES['weights']}" in artifacts
        table = mlflow.load_table("evaluation/confusion_matrix.json", run_ids=[run_id])
        assert table["count"].sum() == result["n_test"]


def test_weight_maps_follow_the_first_learned_layer(trained_models):
    import keras

    for name, expected_count, title in (("linear", 10, "class 0"), ("mlp", 16, "unit 0"), ("cnn", 4, "filter 0")):
        model = keras.models.load_model(trained_models / name / "model.keras")
        maps, titles, _ = evaluate.first_layer_weight_maps(model, (8, 8, 1), [str(c) for c in range(10)])
        assert len(maps) == len(titles) == expected_count and titles[0] == title
        assert maps.shape[1:] == ((3, 3) if name == "cnn" else (8, 8))
    kernel = np.asarray(keras.models.load_model(trained_models / "linear" / "model.keras").layers[-1].kernel)
    maps, _, _ = evaluate.first_layer_weight_maps(keras.models.load_model(trained_models / "linear" / "model.keras"), (8, 8, 1), list("0123456789"))
    assert np.allclose(maps[3], kernel[:, 3].reshape(8, 8))


def test_missing_model_output_names_the_file(tiny_prepared, trained_models, tmp_path, mlflow_uri, monkeypatch):
    make_project(tmp_path, tiny_prepared, trained_models, monkeypatch)
    (tmp_path / "models" / "mlp" / "history.csv").unlink()
    with pytest.raises(DigitlabError, match=r"models/mlp/history\.csv is missing.*train stage"):
        evaluate.run(config("model=mlp"))
    assert not (tmp_path / "reports" / "mlp").exists()


def test_bad_settings_fail_before_loading(tmp_path, monkeypatch):
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    with pytest.raises(ConfigError, match="evaluate.confidence_level=1.5"):
        evaluate.run(config("model=linear", "evaluate.confidence_level=1.5"))
    with pytest.raises(ConfigError, match="model='resnet'.*cnn, linear, mlp"):
        evaluate.run(config("model=resnet"))


def test_stage_entry_point_exits_2_on_missing_model(tmp_path):
    from tests.conftest import run

    result = run([str(ROOT / ".venv" / "bin" / "python"), "-m", "pipeline.evaluate", "--params", str(ROOT / "params.yaml"), "model=cnn"],
                 cwd=ROOT, env={"DVC_ROOT": str(tmp_path)}, check=False)
    assert result.returncode == 2
    assert "models/cnn/model.keras is missing" in result.stderr
