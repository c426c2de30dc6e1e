"""The one builder of a dev-set record: the task's metrics and score, and, for a pruned model, its
expected sparsities and FLOPs reductions. ``top eval``, ``top finetune`` and ``top train`` all build
theirs here, so a score means the same thing in every file that holds one."""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

from top.data.loading import TaskData
from top.evaluation.metrics import compute_metrics
from top.evaluation.scoring import Predictions
from top.method import flops


def dev_record(data: TaskData, predictions: Predictions, sparsities: Optional[Sequence[Tuple[float, float]]] = None,
               metrics_key: str = "eval") -> Dict[str, Any]:
    """``{metrics_key: every metric, "score": the task's metric}``; with ``sparsities`` (per batch: the
    expected MAC sparsity at the batch's own lengths, and at the task's length) also their means and
    the FLOPs reductions they imply (against the dense model at the task's length, the paper's
    figure, and at the same inputs)."""
    metrics = compute_metrics(data.task, predictions.logits.numpy(), predictions.labels.numpy())
    record: Dict[str, Any] = {metrics_key: metrics, "score": metrics[data.metric]}
    if sparsities is not None:
        per_batch, per_batch_sequence = zip(*sparsities)
        record["expected_sparsity"] = flops.mean_of_batch_means(per_batch)
        record["expected_sequence_sparsity"] = flops.mean_of_batch_means(per_batch_sequence)
        record["flops_reduction"] = float(flops.flops_reduction(record["expected_sequence_sparsity"]))
        record["flops_reduction_same_inputs"] = float(flops.flops_reduction(record["expected_sparsity"]))
    return record


def score_text(score: Optional[float]) -> str:
    return "undefined" if score is None else f"{score:.4f}"
