"""Which evaluation ``best/`` keeps, and the warnings when a run's sparsity is off its target."""

from __future__ import annotations

import logging
from typing import Any, Dict, Optional

from top.training.config import BEST_RULES

logger = logging.getLogger(__name__)

# What best/ and summary.json record of the best evaluation.
BEST_KEYS = ("score", "step", "expected_sparsity", "expected_sequence_sparsity", "flops_reduction",
             "flops_reduction_same_inputs")
NO_BEST = dict.fromkeys(BEST_KEYS)
# ... and with a target speedup.
LATENCY_KEYS = ("expected_latency_sparsity", "predicted_speedup")


def within_band(sparsity: float, target: float, epsilon: float) -> bool:
    """``|sparsity - target| <= epsilon``, allowing float rounding (0.31 is within 0.01 of 0.3)."""
    return abs(sparsity - target) <= epsilon + 1e-9


def apply_best_rule(
    record: Dict[str, Any], best: Dict[str, Any], target: float, epsilon: float, rule: str = BEST_RULES[0],
    measure: str = "expected_sparsity",
) -> Dict[str, Any]:
    """The best so far after the evaluation ``record``, which is marked ``reached_target`` and ``is_best``.

    ``reached_target``: the expected sparsity reached target - epsilon (a dense evaluation, before
    pruning, has none). Rule ``score`` (the default): best/ keeps the best score among evaluations
    that reached the target. The original's rule was looser: once one evaluation reached the target,
    every later one could become best/ even below it. Rule ``nearest-target``: among evaluations
    within target +- epsilon, the one nearest the target, the better score breaking a tie. An
    undefined score (None: see top.evaluation.metrics) is never the best.

    ``measure`` is the record's key the target is of: ``expected_sparsity`` (MACs), or with a target
    speedup ``expected_latency_sparsity`` (the share of compact inference's time the gates remove,
    ``top.method.latency``); best/ then also keeps it and the ``predicted_speedup``.
    """
    if rule not in BEST_RULES:
        raise ValueError(f"unknown best rule {rule!r}")
    sparsity = record.get(measure)
    reached = sparsity is not None and sparsity >= target - epsilon
    record["reached_target"] = bool(reached)
    first = best["score"] is None
    if rule == "score":
        eligible = reached
        better = first or (record["score"] is not None and record["score"] > best["score"])
    else:
        eligible = sparsity is not None and within_band(sparsity, target, epsilon)
        distance = abs(sparsity - target) if sparsity is not None else None
        best_distance = None if first else abs(best[measure] - target)
        better = first or (
            record["score"] is not None
            and (distance < best_distance or (distance == best_distance and record["score"] > best["score"]))
        )
    record["is_best"] = bool(eligible and record["score"] is not None and better)
    keys = BEST_KEYS if measure == "expected_sparsity" else BEST_KEYS + LATENCY_KEYS
    return {key: record.get(key) for key in keys} if record["is_best"] else best


def warn_off_target(what: str, sparsity: float, target: float, epsilon: float, control: str) -> bool:
    """A warning when ``sparsity`` (``what``: when and which) is outside target +- epsilon, naming the
    levers; True when it warned."""
    if within_band(sparsity, target, epsilon):
        return False
    logger.warning(
        "%s is %.4f, %s the target %.4g by more than --sparsity-epsilon %g; to land nearer, try %s.",
        what, sparsity, "above" if sparsity > target else "below", target, epsilon, levers(sparsity, target, control),
    )
    return True


def levers(sparsity: Optional[float], target: float, control: str) -> str:
    """The flags that move a run's sparsity from ``sparsity`` (None: pruning never started) onto ``target``."""
    if sparsity is None:
        return "more steps (--epochs or --max-steps)"
    if sparsity > target:
        found = "a longer --warmup-epochs, a lower --reg-learning-rate or more steps"
    else:
        found = "a higher --reg-learning-rate, more steps or a shorter --warmup-epochs"
    return "--sparsity-control adaptive, " + found if control == "paper" else found


def final_sparsity(final: Optional[Dict[str, Any]], steps: int, target: float, epsilon: float, control: str,
                   prepruning_steps: int, measure: str = "expected_sparsity") -> Optional[float]:
    """The last evaluation's ``measure`` (the expected sparsity; None before pruning), with a warning when it is
    off target."""
    sparsity = None if final is None else final.get(measure)
    if sparsity is None:
        logger.warning("Pruning never started (%d steps); give more than %d steps.", steps, prepruning_steps)
    else:
        what = measure.replace("_", " ")
        warn_off_target(f"At the end (step {steps}), the {what}", sparsity, target, epsilon, control)
    return sparsity
