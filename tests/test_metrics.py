"""Every metric against scikit-learn or values worked out by hand on small fixed arrays."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import chi2
from sklearn.metrics import f1_score, precision_score, recall_score, roc_auc_score

from digitlab.evaluation import metrics

Y = np.array([0, 1, 2, 1, 0, 2])
P = np.array(
    [
        [0.7, 0.2, 0.1],  # right
        [0.1, 0.6, 0.3],  # right
        [0.2, 0.5, 0.3],  # wrong (1), true class 2nd
        [0.3, 0.4, 0.3],  # right
        [0.15, 0.05, 0.8],  # wrong (2), true class 2nd
        [0.05, 0.15, 0.8],  # right
    ]
)


def test_accuracy_and_log_loss_by_hand():
    assert metrics.accuracy(Y, P.argmax(axis=1)) == pytest.approx(4 / 6)
    by_hand = -np.mean(np.log([0.7, 0.6, 0.3, 0.4, 0.15, 0.8]))
    assert metrics.log_loss(Y, P) == pytest.approx(by_hand)


def test_top_k_accuracy_by_hand():
    assert metrics.top_k_accuracy(Y, P, 1) == pytest.approx(4 / 6)
    assert metrics.top_k_accuracy(Y, P, 2) == pytest.approx(6 / 6)
    assert metrics.top_k_accuracy(Y, P, 10) == 1.0  # k beyond the number of classes is capped


def test_precision_recall_f1_match_scikit_learn_and_count_absent_classes():
    y_pred = P.argmax(axis=1)
    for average in ("macro", "weighted"):
        result = metrics.precision_recall_f1(Y, y_pred, 3, average)
        assert result["precision"] == pytest.approx(precision_score(Y, y_pred, average=average, zero_division=0))
        assert result["recall"] == pytest.approx(recall_score(Y, y_pred, average=average, zero_division=0))
        assert result["f1"] == pytest.approx(f1_score(Y, y_pred, average=average, zero_division=0))
    # A fourth class nobody predicts and no image has still counts in the macro mean (as 0).
    assert metrics.precision_recall_f1(Y, y_pred, 4, "macro")["f1"] == pytest.approx(f1_score(Y, y_pred, average="macro") * 3 / 4)


def test_classification_report_is_keyed_by_class_name():
    report = metrics.classification_report(Y, P.argmax(axis=1), ["zero", "one", "two"])
    assert report["one"]["recall"] == pytest.approx(1.0) and report["one"]["precision"] == pytest.approx(2 / 3)
    assert report["zero"]["support"] == 2


def test_roc_auc_matches_scikit_learn():
    result = metrics.roc_auc(Y, P)
    assert result["macro"] == pytest.approx(roc_auc_score(Y, P, multi_class="ovr", average="macro"))
    assert result["micro"] == pytest.approx(roc_auc_score(np.eye(3)[Y], P, average="micro"))
    assert math.isnan(metrics.roc_auc(np.zeros(6, dtype=int), P)["macro"])


def test_wilson_interval_by_hand():
    z = 1.959963984540054
    n, p = 100, 0.8
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    low, high = metrics.accuracy_interval(80, 100, 0.95)
    assert (low, high) == (pytest.approx(centre - half), pytest.approx(centre + half))
    assert metrics.accuracy_interval(80, 100, 0.99)[0] < low
    with pytest.raises(ValueError, match="confidence_level"):
        metrics.accuracy_interval(80, 100, 95)


def test_confusion_matrix_and_row_normalisation():
    counts = metrics.confusion_matrix(Y, P.argmax(axis=1), 4)
    assert counts.tolist() == [[1, 0, 1, 0], [0, 2, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0]]
    shares = metrics.normalize_rows(counts)
    assert shares[0].tolist() == [0.5, 0, 0.5, 0] and shares[3].tolist() == [0, 0, 0, 0]


def test_summarize_is_flat_and_consistent():
    result = metrics.summarize(Y, P, top_k=2, confidence_level=0.95)
    assert result["accuracy"] == pytest.approx(4 / 6) and result["n_test"] == 6
    assert result["accuracy_ci_low"] < result["accuracy"] < result["accuracy_ci_high"]
    assert all(isinstance(value, (int, float)) for value in result.values())


def test_mcnemar_on_a_known_table():
    # 101 both right, 121 only A right, 59 only B right, 33 both wrong: chi-square with continuity correction.
    result = metrics.mcnemar_test(np.array([[101, 121], [59, 33]]))
    statistic = (abs(121 - 59) - 1) ** 2 / (121 + 59)
    assert not result.exact
    assert result.statistic == pytest.approx(statistic)
    assert result.p_value == pytest.approx(chi2.sf(statistic, 1))
    assert metrics.mcnemar_verdict("a", "b", result).startswith("a is really better than b")


def test_mcnemar_exact_for_few_discordant_pairs():
    result = metrics.mcnemar_test(np.array([[10, 2], [8, 5]]))
    assert result.exact
    assert result.p_value == pytest.approx(2 * (1 + 10 + 45) / 2**10)  # two-sided binomial, n=10, k<=2
    assert metrics.mcnemar_verdict("a", "b", result).startswith("No real difference between a and b")
    assert metrics.mcnemar_test(np.array([[5, 0], [0, 5]])).p_value == 1.0


def test_mcnemar_table_from_predictions():
    y_true = np.array([0, 1, 2, 3, 4])
    table = metrics.mcnemar_table(y_true, np.array([0, 1, 2, 0, 0]), np.array([0, 0, 2, 3, 0]))
    assert table.tolist() == [[2, 1], [1, 1]]
    with pytest.raises(ValueError, match="same images"):
        metrics.mcnemar_table(y_true, y_true[:3], y_true)
