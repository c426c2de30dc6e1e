"""GLUE's metrics on a 0-1 scale, with the names the `datasets` glue metric uses.

A metric that the data leaves undefined (a correlation with constant labels or predictions) is
``None``, with a warning that says why; reports write it as JSON's null.
"""

import logging
from typing import Dict, Optional, Sequence, Union

import numpy as np
from scipy import stats

from top.data.tasks import METRIC_NAMES, Task

logger = logging.getLogger(__name__)

ArrayLike = Union[Sequence[float], np.ndarray]


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


def _correlation_undefined(name: str, predictions: np.ndarray, labels: np.ndarray) -> bool:
    """A correlation needs variation on both sides; say which side has none."""
    for what, values in (("labels", labels), ("predictions", predictions)):
        if len(values) < 2 or np.all(values == values[0]):
            logger.warning(
                "%s is undefined because all %d %s are equal; it is reported as null", name, len(values), what
            )
            return True
    if not (np.all(np.isfinite(predictions)) and np.all(np.isfinite(labels))):
        logger.warning(
            "%s is undefined because some predictions or labels are not finite; it is reported as null", name
        )
        return True
    return False


def pearson(predictions: np.ndarray, labels: np.ndarray) -> Optional[float]:
    if _correlation_undefined("pearson", predictions, labels):
        return None
    return float(stats.pearsonr(predictions, labels)[0])


def spearmanr(predictions: np.ndarray, labels: np.ndarray) -> Optional[float]:
    if _correlation_undefined("spearmanr", predictions, labels):
        return None
    return float(stats.spearmanr(predictions, labels)[0])


_FUNCTIONS = {
    "accuracy": accuracy,
    "f1": f1,
    "matthews_correlation": matthews_correlation,
    "pearson": pearson,
    "spearmanr": spearmanr,
}
assert tuple(sorted(_FUNCTIONS)) == tuple(sorted(METRIC_NAMES))


def compute_metrics(task: Task, predictions: ArrayLike, labels: ArrayLike) -> Dict[str, Optional[float]]:
    """Every metric ``task`` reports, on a 0-1 scale (None where the data leaves it undefined).

    A user's own data is a Task too (``top.data.custom.custom_task``). Classification predictions may be
    class ids or logits ``[N, C]`` (argmax is taken); regression predictions may be ``[N]`` or ``[N, 1]``.
    """
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if task.is_regression:
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
    return {name: _FUNCTIONS[name](predictions, labels) for name in task.metrics}
