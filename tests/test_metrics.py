"""GLUE metrics against values worked out by hand, and against scikit-learn where it is installed."""

import math

import numpy as np
import pytest

from top.data.custom import custom_task
from top.data.tasks import TASKS, get_task
from top.evaluation.metrics import compute_metrics


def test_matthews_binary_from_a_hand_confusion_matrix():
    # TP=3, TN=2, FP=1, FN=2
    labels = [1, 1, 1, 0, 0, 0, 1, 1]
    preds = [1, 1, 1, 0, 0, 1, 0, 0]
    tp, tn, fp, fn = 3, 2, 1, 2
    expected = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    result = compute_metrics(get_task("cola"), preds, labels)
    assert result["matthews_correlation"] == pytest.approx(expected)
    assert result["accuracy"] == pytest.approx(5 / 8)
    assert set(result) == {"matthews_correlation", "accuracy"}


def test_matthews_multiclass_from_a_hand_confusion_matrix():
    labels = [0, 0, 1, 1, 2, 2]
    preds = [0, 1, 1, 1, 2, 0]
    # confusion rows=true [[1,1,0],[0,2,0],[1,0,1]]: true counts 2,2,2; predicted 2,3,1; 4 correct of 6
    covariance = 4 * 6 - (2 * 2 + 3 * 2 + 1 * 2)
    expected = covariance / math.sqrt((36 - (4 + 9 + 1)) * (36 - (4 + 4 + 4)))
    assert compute_metrics(get_task("cola"), preds, labels)["matthews_correlation"] == pytest.approx(expected)


def test_matthews_is_zero_when_one_class_is_always_predicted():
    assert compute_metrics(get_task("cola"), [1, 1, 1, 1], [0, 1, 0, 1])["matthews_correlation"] == 0.0


def test_f1_and_accuracy_for_mrpc_and_qqp():
    labels = [1, 1, 1, 1, 1, 0, 0, 0]
    preds = [1, 1, 1, 0, 0, 1, 0, 0]  # TP=3, FP=1, FN=2, TN=2
    for task in ("mrpc", "QQP"):
        result = compute_metrics(get_task(task), preds, labels)
        assert result == pytest.approx({"accuracy": 5 / 8, "f1": 2 * 3 / (2 * 3 + 1 + 2)})
    assert compute_metrics(get_task("mrpc"), [0, 0], [0, 0])["f1"] == 0.0


def test_logits_are_argmaxed():
    logits = np.array([[0.1, 2.0, -1.0], [3.0, 0.0, 0.0], [0.0, 0.0, 5.0]])
    assert compute_metrics(get_task("mnli"), logits, [1, 0, 1]) == pytest.approx({"accuracy": 2 / 3})


def test_pearson_and_spearman_for_stsb():
    rng = np.random.default_rng(0)
    labels = rng.uniform(0, 5, size=50)
    preds = labels + rng.normal(0, 1, size=50)
    result = compute_metrics(get_task("STS-B"), preds.reshape(-1, 1), labels)
    assert result["pearson"] == pytest.approx(np.corrcoef(preds, labels)[0, 1])
    ranks = lambda x: np.argsort(np.argsort(x))  # noqa: E731 - no ties in continuous draws
    assert result["spearmanr"] == pytest.approx(np.corrcoef(ranks(preds), ranks(labels))[0, 1])
    assert 0 < result["spearmanr"] < 1


def test_a_custom_file_is_a_task_with_accuracy_or_correlations():
    classes = custom_task(False, ["0", "1", "2"], 64, is_pair=False)
    assert (classes.num_labels, classes.metric, classes.task_length) == (3, "accuracy", 64)
    assert compute_metrics(classes, [2, 0, 1], [2, 1, 1]) == pytest.approx({"accuracy": 2 / 3})
    numbers = custom_task(True, [], 64, is_pair=True)
    assert numbers.is_regression and numbers.metric == "pearson"
    result = compute_metrics(numbers, [1.0, 2.0, 4.0], [1.0, 2.0, 3.0])
    assert set(result) == {"pearson", "spearmanr"}
    assert result["spearmanr"] == pytest.approx(1.0)
    assert result["pearson"] == pytest.approx(np.corrcoef([1, 2, 4], [1, 2, 3])[0, 1])


def test_every_task_reports_its_metrics():
    for task in TASKS.values():
        labels = [0.5, 1.5, 2.5, 4.0] if task.is_regression else [0, 1, 1, 0]
        result = compute_metrics(task, labels, labels)
        assert tuple(result) == task.metrics and task.metric in result
        assert all(value == pytest.approx(1.0) for value in result.values())


def test_mismatched_or_empty_inputs():
    with pytest.raises(ValueError):
        compute_metrics(get_task("sst2"), [0, 1], [0, 1, 1])
    with pytest.raises(ValueError):
        compute_metrics(get_task("sst2"), [], [])


def _label_draws():
    """Random label/prediction vectors, plus the degenerate ones where a metric is undefined."""
    rng = np.random.default_rng(7)
    draws = []
    for classes in (2, 2, 2, 3, 5):
        n = int(rng.integers(1, 60))
        draws.append((rng.integers(0, classes, n), rng.integers(0, classes, n)))
    draws += [
        (np.array([1, 1, 1, 1]), np.array([0, 1, 0, 1])),  # one class always predicted
        (np.array([0, 0, 0]), np.array([0, 0, 0])),  # no positive anywhere
        (np.array([1, 0, 1, 0]), np.array([1, 0, 1, 0])),  # perfect
        (np.array([0, 1, 0, 1]), np.array([1, 0, 1, 0])),  # perfectly wrong
    ]
    return draws


@pytest.mark.filterwarnings("ignore:A single label was found:UserWarning")  # the all-zero draw, on purpose
def test_matthews_f1_and_accuracy_match_scikit_learn():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    for preds, labels in _label_draws():
        ours = compute_metrics(get_task("cola"), preds, labels)
        assert ours["matthews_correlation"] == pytest.approx(
            sklearn_metrics.matthews_corrcoef(labels, preds), abs=1e-12
        ), (preds, labels)
        assert ours["accuracy"] == pytest.approx(sklearn_metrics.accuracy_score(labels, preds), abs=1e-12)
        if max(preds.max(), labels.max()) <= 1:
            theirs = sklearn_metrics.f1_score(labels, preds, pos_label=1, average="binary", zero_division=0)
            ours_f1 = compute_metrics(get_task("mrpc"), preds, labels)["f1"]
            assert ours_f1 == pytest.approx(theirs, abs=1e-12), (preds, labels)
