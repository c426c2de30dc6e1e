"""GLUE's metrics on a 0-1 scale, with the names the `datasets` glue metric uses."""

from typing import Dict, Sequence, Union

import numpy as np
from scipy import stats

from top.tasks import METRIC_NAMES, Task, get_task

# The kinds of a user's own data set (see top.data.load_custom_file).
CUSTOM_METRICS = {
    "classification": ("accuracy",),
    "regression": ("pearson", "spearmanr"),
}

ArrayLike = Union[Sequence[float], np.ndarray]
TaskOrKind = Union[str, Task]


def accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(predictions == labels))


def f1(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Binary F1 of the positive class (label 1); 0.0 when there is no positive at all."""
    true_positive = int(np.sum((predictions == 1) & (labels == 1)))
    false_positive = int(np.sum((predictions == 1) & (labels != 1)))
    false_negative = int(np.sum((predictions != 1) & (labels == 1)))
    denominator = 2 * true_positive + false_positive + false_negative
    return 2 * true_positive / denominator if denominator else 0.0


def matthews_correlation(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Matthews correlation from the confusion matrix (the multi-class form); 0.0 when undefined."""
    classes, encoded = np.unique(np.concatenate([labels, predictions]), return_inverse=True)
    true_ids, pred_ids = encoded[: len(labels)], encoded[len(labels) :]
    confusion = np.zeros((len(classes), len(classes)), dtype=np.float64)
    np.add.at(confusion, (true_ids, pred_ids), 1)
    true_counts, pred_counts = confusion.sum(axis=1), confusion.sum(axis=0)
    correct, total = np.trace(confusion), confusion.sum()
    covariance = correct * total - pred_counts @ true_counts
    denominator = np.sqrt((total**2 - pred_counts @ pred_counts) * (total**2 - true_counts @ true_counts))
    return float(covariance / denominator) if denominator else 0.0


def pearson(predictions: np.ndarray, labels: np.ndarray) -> float:
    return float(stats.pearsonr(predictions, labels)[0])


def spearmanr(predictions: np.ndarray, labels: np.ndarray) -> float:
    return float(stats.spearmanr(predictions, labels)[0])


_FUNCTIONS = {
    "accuracy": accuracy,
    "f1": f1,
    "matthews_correlation": matthews_correlation,
    "pearson": pearson,
    "spearmanr": spearmanr,
}
assert tuple(sorted(_FUNCTIONS)) == tuple(sorted(METRIC_NAMES))


def _metrics_and_kind(task_or_kind: TaskOrKind):
    if isinstance(task_or_kind, str) and task_or_kind in CUSTOM_METRICS:
        return CUSTOM_METRICS[task_or_kind], task_or_kind == "regression"
    task = task_or_kind if isinstance(task_or_kind, Task) else get_task(task_or_kind)
    return task.metrics, task.is_regression


def compute_metrics(task_or_kind: TaskOrKind, predictions: ArrayLike, labels: ArrayLike) -> Dict[str, float]:
    """Every metric the task reports, on a 0-1 scale.

    `task_or_kind` is a GLUE task (name or Task) or, for a user's own data,
    "classification" or "regression". Classification predictions may be class ids
    or logits `[N, C]` (argmax is taken); regression predictions may be `[N]` or `[N, 1]`.
    """
    names, is_regression = _metrics_and_kind(task_or_kind)
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if is_regression:
        predictions = predictions.reshape(len(predictions), -1)[:, 0].astype(np.float64)
        labels = labels.astype(np.float64)
    else:
        if predictions.ndim == 2:
            predictions = predictions.argmax(axis=-1)
        predictions, labels = predictions.astype(np.int64), labels.astype(np.int64)
    if predictions.shape != labels.shape or predictions.ndim != 1:
        raise ValueError(f"predictions {predictions.shape} and labels {labels.shape} must be matching vectors")
    if len(labels) == 0:
        raise ValueError("cannot compute metrics on zero examples")
    return {name: _FUNCTIONS[name](predictions, labels) for name in names}


def primary_metric(task_or_kind: TaskOrKind) -> str:
    """The metric the paper reports for a task (accuracy / pearson for a user's own data)."""
    if isinstance(task_or_kind, str) and task_or_kind in CUSTOM_METRICS:
        return CUSTOM_METRICS[task_or_kind][0]
    task = task_or_kind if isinstance(task_or_kind, Task) else get_task(task_or_kind)
    return task.metric
