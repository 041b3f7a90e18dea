"""Classification metrics: pure functions of labels and predicted probabilities.

Labels are int class indices of shape (N,), probabilities are softmax outputs
of shape (N, K). Everything defers to scikit-learn or statsmodels; this module
only fixes the conventions (all K classes always counted, even those absent
from the test split) so that numbers agree across models and datasets.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn import metrics as skm
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.proportion import proportion_confint

# Below this many discordant pairs the chi-square approximation of McNemar's
# test is poor, so the exact binomial test is used instead.
MCNEMAR_EXACT_BELOW = 25


def _check(y_true: np.ndarray, probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.ndim != 2 or y_true.shape != (probabilities.shape[0],):
        raise ValueError(f"expected labels (N,) and probabilities (N, K), got {y_true.shape} and {probabilities.shape}")
    return y_true.astype(np.int64), probabilities


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(skm.accuracy_score(y_true, y_pred))


def log_loss(y_true: np.ndarray, probabilities: np.ndarray) -> float:
    """Mean cross-entropy of the true class (natural log), over all K classes."""
    y_true, probabilities = _check(y_true, probabilities)
    # Softmax outputs in float32 sum to 1 only up to rounding; renormalise so sklearn doesn't warn.
    probabilities = probabilities / probabilities.sum(axis=1, keepdims=True)
    return float(skm.log_loss(y_true, probabilities, labels=np.arange(probabilities.shape[1])))


def top_k_accuracy(y_true: np.ndarray, probabilities: np.ndarray, k: int) -> float:
    """Share of images whose true class is among the ``k`` most probable (k capped at K)."""
    y_true, probabilities = _check(y_true, probabilities)
    num_classes = probabilities.shape[1]
    if k >= num_classes:  # every class is among the top k
        return 1.0
    if num_classes == 2:  # sklearn's binary form wants the positive-class score
        return float(skm.top_k_accuracy_score(y_true, probabilities[:, 1], k=k, labels=[0, 1]))
    return float(skm.top_k_accuracy_score(y_true, probabilities, k=k, labels=np.arange(num_classes)))


def precision_recall_f1(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int, average: str) -> dict[str, float]:
    """Precision, recall and F1 averaged ``macro`` or ``weighted`` over all classes (0 where undefined)."""
    precision, recall, f1, _ = skm.precision_recall_fscore_support(
        y_true, y_pred, labels=np.arange(num_classes), average=average, zero_division=0
    )
    return {"precision": float(precision), "recall": float(recall), "f1": float(f1)}


def classification_report(y_true: np.ndarray, y_pred: np.ndarray, class_names: list[str]) -> dict:
    """Per-class precision, recall, F1 and support, plus the averages, keyed by class name."""
    return skm.classification_report(
        y_true, y_pred, labels=np.arange(len(class_names)), target_names=class_names, output_dict=True, zero_division=0
    )


def roc_auc(y_true: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    """One-vs-rest ROC AUC, ``micro`` (all decisions pooled) and ``macro`` (mean over classes).

    Classes absent from ``y_true`` have no ROC curve; the macro mean is over
    the classes present. NaN when fewer than two classes are present.
    """
    y_true, probabilities = _check(y_true, probabilities)
    num_classes = probabilities.shape[1]
    present = np.unique(y_true)
    if present.size < 2:
        return {"micro": float("nan"), "macro": float("nan")}
    onehot = one_hot(y_true, num_classes)
    micro = skm.roc_auc_score(onehot.ravel(), probabilities.ravel())
    macro = np.mean([skm.roc_auc_score(onehot[:, c], probabilities[:, c]) for c in present])
    return {"micro": float(micro), "macro": float(macro)}


def one_hot(y: np.ndarray, num_classes: int) -> np.ndarray:
    return np.eye(num_classes, dtype=np.int64)[np.asarray(y, dtype=np.int64)]


def accuracy_interval(correct: int, total: int, confidence_level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for an accuracy of ``correct`` out of ``total``."""
    if not 0 < confidence_level < 1:
        raise ValueError(f"confidence_level must lie between 0 and 1, got {confidence_level}")
    low, high = proportion_confint(correct, total, alpha=1 - confidence_level, method="wilson")
    return float(low), float(high)


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts, rows = actual class, columns = predicted class (K x K)."""
    return skm.confusion_matrix(y_true, y_pred, labels=np.arange(num_classes))


def normalize_rows(counts: np.ndarray) -> np.ndarray:
    """Each row divided by its total: the share of each actual class predicted as each class (0 for empty rows)."""
    counts = np.asarray(counts, dtype=np.float64)
    totals = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)


def summarize(y_true: np.ndarray, probabilities: np.ndarray, *, top_k: int, confidence_level: float) -> dict[str, float]:
    """Every headline number of one model on one test split (flat, for ``dvc metrics show``)."""
    y_true, probabilities = _check(y_true, probabilities)
    num_classes = probabilities.shape[1]
    y_pred = probabilities.argmax(axis=1)
    correct = int((y_pred == y_true).sum())
    low, high = accuracy_interval(correct, len(y_true), confidence_level)
    macro = precision_recall_f1(y_true, y_pred, num_classes, "macro")
    weighted = precision_recall_f1(y_true, y_pred, num_classes, "weighted")
    auc = roc_auc(y_true, probabilities)
    return {
        "accuracy": accuracy(y_true, y_pred),
        "accuracy_ci_low": low,
        "accuracy_ci_high": high,
        "log_loss": log_loss(y_true, probabilities),
        "top_k_accuracy": top_k_accuracy(y_true, probabilities, top_k),
        "precision_macro": macro["precision"],
        "recall_macro": macro["recall"],
        "f1_macro": macro["f1"],
        "precision_weighted": weighted["precision"],
        "recall_weighted": weighted["recall"],
        "f1_weighted": weighted["f1"],
        "roc_auc_micro": auc["micro"],
        "roc_auc_macro": auc["macro"],
        "n_test": len(y_true),
    }


@dataclass(frozen=True)
class McNemarResult:
    """McNemar's test of two models on the same images.

    ``only_a_correct``/``only_b_correct`` are the discordant pairs: images one
    model got right and the other wrong. Only they carry evidence.
    """

    table: tuple[tuple[int, int], tuple[int, int]]
    statistic: float
    p_value: float
    exact: bool

    @property
    def only_a_correct(self) -> int:
        return self.table[0][1]

    @property
    def only_b_correct(self) -> int:
        return self.table[1][0]


def mcnemar_table(y_true: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray) -> np.ndarray:
    """2x2 table [[both right, only A right], [only B right, both wrong]]."""
    y_true, pred_a, pred_b = (np.asarray(a) for a in (y_true, pred_a, pred_b))
    if not (y_true.shape == pred_a.shape == pred_b.shape):
        raise ValueError(f"McNemar needs both models' predictions on the same images, got {pred_a.shape} and {pred_b.shape} for {y_true.shape}")
    a_right, b_right = pred_a == y_true, pred_b == y_true
    return np.array(
        [[np.sum(a_right & b_right), np.sum(a_right & ~b_right)], [np.sum(~a_right & b_right), np.sum(~a_right & ~b_right)]],
        dtype=np.int64,
    )


def mcnemar_test(table: np.ndarray) -> McNemarResult:
    """McNemar's test on a 2x2 table; exact (binomial) when there are few discordant pairs."""
    table = np.asarray(table, dtype=np.int64)
    exact = bool(table[0, 1] + table[1, 0] < MCNEMAR_EXACT_BELOW)
    result = mcnemar(table, exact=exact, correction=True)
    p_value = float(result.pvalue)
    return McNemarResult(
        table=((int(table[0, 0]), int(table[0, 1])), (int(table[1, 0]), int(table[1, 1]))),
        statistic=float(result.statistic),
        p_value=1.0 if np.isnan(p_value) else p_value,
        exact=exact,
    )


def mcnemar_verdict(name_a: str, name_b: str, result: McNemarResult, alpha: float = 0.05) -> str:
    """One plain-language sentence on whether two models really differ."""
    a, b = result.only_a_correct, result.only_b_correct
    evidence = f"{name_a} alone right on {a} images, {name_b} alone right on {b}; p = {result.p_value:.3g}"
    if result.p_value < alpha and a != b:
        better, worse = (name_a, name_b) if a > b else (name_b, name_a)
        return f"{better} is really better than {worse} ({evidence})."
    return f"No real difference between {name_a} and {name_b} at the {alpha:.0%} level ({evidence})."
