"""A latency model of compact inference: what a batch costs as a function of the tokens each layer keeps.

``top calibrate`` (:mod:`top.evaluation.calibrate`) times compact inference and the dense model on
one machine, at one batch size, in one runtime, and fits the two models below; ``top train
--latency-model`` constrains the expected latency under the gates with them instead of the
expected MACs, and ``top bench`` predicts the speedup it measures with them.

Compact inference of a batch of ``B`` examples (:func:`top.method.compact.compact_forward`)::

    t = fixed                                    launches, host work, weight reads: does not shrink
      + attention_tokens    * sum_l T_l          q, k, v and output projections of layer l
      + feed_forward_tokens * sum_l T'_l         the feed-forward, on the tokens layer l keeps
      + attention_grid      * sum_l B n_l^2      the scores, padded to the batch's longest row n_l
      + ranking_layers      * R                  the R layers that rank tokens (importance, sort, gather)
      + ranking_grid        * sum_ranking B n_l^2  their probabilities materialised (no fused kernel)

where ``T_l`` is the number of tokens entering layer ``l`` (summed over the batch where the
runtime packs them, ``B n_l`` where it pads every layer to the longest row, as the exported graph
does) and ``T'_l`` the number entering the next one. The dense model on dynamic padding (each
batch padded to its longest input ``n``)::

    t = fixed + tokens * B n + grid * B n^2

Both are linear in their coefficients, fitted by non-negative least squares on relative error
(:func:`fit`). Every time is per batch, at the calibrated batch size.

A speedup here is what ``top bench`` measures: the dense model's time over compact's, summed over
the length-sorted full batches of a dev set (:func:`sorted_batches`). The constraint of ``top train``
is the *latency sparsity*: the fraction of unpruned compact inference's time that pruning removes,
``1 - t(gates) / t(no pruning)``, which is 0 before pruning as the MAC sparsity is; a target speedup
``S`` over dense is the latency sparsity ``1 - S0 / S``, where ``S0`` is compact's predicted speedup
without pruning (:class:`LatencyConstraint`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from top.errors import UserError
from top.method.compact import CompactPlan
from top.method.compact import kernels as compact_kernels
from top.method.flops import expected_sparsities, flops_reduction, layer_keep_ratios

FORMAT = "top-latency-model"
VERSION = 1
COMPACT_TERMS = ("fixed", "attention_tokens", "feed_forward_tokens", "attention_grid", "ranking_layers",
                 "ranking_grid")
DENSE_TERMS = ("fixed", "tokens", "grid")
# The architecture a latency model is of: a model that differs in any of these is another model.
SHAPE_KEYS = ("model_type", "hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers")
# What the conditions recorded must agree on for a latency model to describe this machine and this top.
MACHINE_KEYS = ("device", "cpu", "gpu", "cores", "threads", "torch", "runtime", "runtime_version", "kernels")


# ----------------------------------------------------------------------------------------------
# Features of one batch


def compact_features(layer_lengths: Sequence[Sequence[int]], ranking: Sequence[int],
                     packed: bool = True) -> List[float]:
    """The compact terms of one batch: ``layer_lengths[l]`` holds each example's tokens entering layer ``l``
    ([CLS] included), ``ranking`` the layers that rank tokens; ``packed`` False counts each layer padded."""
    batch = len(layer_lengths[0])
    ranking = set(ranking)
    num_layers = len(layer_lengths)
    attention = feed_forward = grid = ranked = ranked_grid = 0.0
    for layer, lengths in enumerate(layer_lengths):
        after = layer_lengths[min(layer + 1, num_layers - 1)]
        width, width_after = max(lengths), max(after)
        attention += sum(lengths) if packed else batch * width
        feed_forward += sum(after) if packed else batch * width_after
        square = float(batch * width * width)
        grid += square
        if layer in ranking:
            ranked += 1.0
            ranked_grid += square
    return [1.0, attention, feed_forward, grid, ranked, ranked_grid]


def dense_features(lengths: Sequence[int]) -> List[float]:
    """The dense terms of one batch padded to its longest input."""
    batch, width = len(lengths), max(lengths)
    return [1.0, float(batch * width), float(batch * width * width)]


def ranking_layers(plan: Optional[CompactPlan], prune_after: Dict[int, int], static: bool) -> List[int]:
    """The layers that rank tokens: those whose prune step changes this batch's lengths (``compact_forward``),
    or, ``static`` (the exported graph), those whose location can prune at any length."""
    if plan is None or not plan.pruning:
        return []
    if not static:
        return sorted(prune_after)
    return sorted(
        index - 1 for location, index in enumerate(plan.prune_locations)
        if any(kept < alive for alive, kept in enumerate(plan.table[location]))
    )


def sorted_batches(lengths: Sequence[int], batch_size: int) -> List[List[int]]:
    """The lengths of the batches ``top bench`` times: sorted longest first, full batches only (all of
    them when there is no full one)."""
    ordered = sorted((int(n) for n in lengths), reverse=True)
    batches = [ordered[i:i + batch_size] for i in range(0, len(ordered), batch_size)]
    full = [b for b in batches if len(b) == batch_size]
    return full or batches


# ----------------------------------------------------------------------------------------------
# The fit


def fit(features: Sequence[Sequence[float]], seconds: Sequence[float]) -> List[float]:
    """Non-negative coefficients minimising the relative error of ``features @ c`` against ``seconds``."""
    from scipy.optimize import nnls

    matrix = np.asarray(features, dtype=np.float64)
    target = np.asarray(seconds, dtype=np.float64)
    if matrix.ndim != 2 or len(target) != matrix.shape[0] or len(target) == 0:
        raise ValueError("fit needs one row of features per time")
    weights = 1.0 / np.maximum(target, 1e-12)
    scale = np.abs(matrix).max(axis=0)
    scale[scale == 0] = 1.0  # a term that never varies from 0 gets coefficient 0
    solution, _ = nnls(matrix * weights[:, None] / scale, np.ones_like(target))
    return [float(c) for c in solution / scale]


def predict(coefficients: Sequence[float], features: Sequence[float]) -> float:
    return float(sum(c * f for c, f in zip(coefficients, features)))


def relative_errors(coefficients: Sequence[float], features, seconds) -> List[float]:
    """``|predicted - measured| / measured`` per point."""
    return [abs(predict(coefficients, f) - s) / s for f, s in zip(features, seconds)]


def error_summary(errors: Sequence[float]) -> Dict[str, Any]:
    if not errors:
        return {"points": 0, "median_relative_error": None, "max_relative_error": None}
    return {"points": len(errors), "median_relative_error": float(np.median(errors)),
            "max_relative_error": float(max(errors))}


# ----------------------------------------------------------------------------------------------
# The model as read from latency.json


@dataclasses.dataclass(frozen=True)
class LatencyModel:
    """The fitted coefficients (seconds per unit of each term) and what they were measured on."""

    batch_size: int
    compact: Tuple[float, ...]  # in COMPACT_TERMS order
    dense: Tuple[float, ...]  # in DENSE_TERMS order
    packed: bool  # compact's token terms count the batch's tokens (torch) or its padded grid (the ONNX graph)
    static_ranking: bool  # every location that can prune ranks, whatever the batch (the ONNX graph)
    shape: Dict[str, Any]
    machine: Dict[str, Any]
    fingerprint: str  # sha256 of the file's bytes
    path: str = ""

    @classmethod
    def from_record(cls, record: Dict[str, Any], fingerprint: str, path: str = "") -> LatencyModel:
        where = path or "the latency model"
        fix = "write it again with `top calibrate`"
        if not isinstance(record, dict) or record.get("format") != FORMAT:
            raise UserError(f"{where} is not a latency model of `top calibrate`; {fix}.")
        if record.get("version") != VERSION:
            raise UserError(f"{where} has format version {record.get('version')!r}, not {VERSION}; {fix} with this "
                            "version of top.")
        try:
            compact = record["compact"]["coefficients"]
            dense = record["dense"]["coefficients"]
            values = tuple(float(compact[t]) for t in COMPACT_TERMS), tuple(float(dense[t]) for t in DENSE_TERMS)
            batch_size = int(record["batch_size"])
            shape = {k: record["shape"][k] for k in SHAPE_KEYS}
            machine = dict(record["machine"])
            packed, static = bool(record["compact"]["packed_tokens"]), bool(record["compact"]["static_ranking"])
        except (KeyError, TypeError, ValueError):
            raise UserError(f"{where} lacks a field of a latency model or holds a wrong value; {fix}.") from None
        finite = all(math.isfinite(v) and v >= 0 for v in values[0] + values[1])
        if batch_size < 1 or not finite or sum(values[0]) <= 0 or sum(values[1]) <= 0:
            raise UserError(f"{where} holds coefficients that are not finite non-negative times; {fix}.")
        return cls(batch_size, values[0], values[1], packed, static, shape, machine, fingerprint, path)

    def to_record(self) -> Dict[str, Any]:
        """The part of ``latency.json`` that :meth:`from_record` reads (for a checkpoint to carry)."""
        return {
            "format": FORMAT, "version": VERSION, "batch_size": self.batch_size, "shape": dict(self.shape),
            "machine": dict(self.machine),
            "compact": {"coefficients": dict(zip(COMPACT_TERMS, self.compact)), "packed_tokens": self.packed,
                        "static_ranking": self.static_ranking},
            "dense": {"coefficients": dict(zip(DENSE_TERMS, self.dense))},
        }

    @property
    def num_layers(self) -> int:
        return int(self.shape["num_hidden_layers"])

    # Exact predictions, batch by batch -------------------------------------------------------

    def batch_seconds(self, lengths: Sequence[int], plan: Optional[CompactPlan]) -> Tuple[float, float]:
        """``(compact, dense)`` predicted seconds of one batch of inputs of ``lengths`` tokens; ``plan``
        None is compact without pruning."""
        if plan is None or not plan.pruning:
            layer_lengths, prune_after = [list(lengths)] * self.num_layers, {}
        else:
            layer_lengths, prune_after = plan.layer_lengths(list(lengths), self.num_layers)
        ranking = ranking_layers(plan, prune_after, self.static_ranking)
        return (predict(self.compact, compact_features(layer_lengths, ranking, self.packed)),
                predict(self.dense, dense_features(lengths)))

    def speedups(self, lengths: Sequence[int], plan: Optional[CompactPlan]) -> Dict[str, float]:
        """Over the sorted full batches of ``lengths`` (as ``top bench`` times them): compact's predicted speedup
        over dense with the gates of ``plan`` and without pruning, and the latency sparsity between them."""
        pruned = unpruned = dense = 0.0
        for batch in sorted_batches(lengths, self.batch_size):
            compact_s, dense_s = self.batch_seconds(batch, plan)
            pruned += compact_s
            dense += dense_s
            unpruned += self.batch_seconds(batch, None)[0]
        return {"predicted_speedup": dense / pruned, "unpruned_speedup": dense / unpruned,
                "latency_sparsity": 1.0 - pruned / unpruned}

    # The expectation under the gates, differentiable ---------------------------------------------

    def expected_seconds(self, token_score: torch.Tensor, pruner_score: torch.Tensor, prune_locations: Sequence[int],
                         attention_mask: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Per example, ``(pruned, unpruned)`` expected compact seconds (its share of a batch), differentiable
        in the gates' keep probabilities as :func:`top.method.flops.relative_macs` is.

        A layer that keeps ratio r of an n-token input runs on (n - 1) r + 1 tokens, as in
        ``relative_macs``. Batches are taken as ``top bench`` makes them (sorted by length), so an
        example's row of the padded grid is its own length, and the fixed parts are shared by the
        batch. Every prune location's ranking is counted, whatever its layer gate: that cost does
        not shrink with the tokens, and charged to the layer gate's keep probability it holds the
        gate half open (off in the deterministic masks, so nothing is pruned) rather than letting
        the tokens pay for it. Only ``pruned`` depends on the gates.
        """
        num_layers = self.num_layers
        fixed, attention, feed_forward, grid, ranked, ranked_grid = (float(c) for c in self.compact)
        ratios = layer_keep_ratios(token_score, pruner_score, prune_locations, num_layers)
        full = attention_mask.sum(-1).to(ratios.dtype)
        lengths = (full.unsqueeze(-1) - 1) * ratios.unsqueeze(0) + 1  # [B, L]
        after = torch.cat([lengths[:, 1:], lengths[:, -1:]], dim=1)
        ranking = [int(index) - 1 for index in prune_locations]
        square = lengths * lengths
        per_batch = fixed / self.batch_size
        pruned = (per_batch + attention * lengths.sum(-1) + feed_forward * after.sum(-1) + grid * square.sum(-1)
                  + len(ranking) * ranked / self.batch_size + ranked_grid * square[:, ranking].sum(-1))
        unpruned = per_batch + num_layers * ((attention + feed_forward) * full + grid * full * full)
        return pruned, unpruned


def read_latency_model(path) -> LatencyModel:
    """``latency.json`` as :class:`LatencyModel`; a one-sentence ``UserError`` when it is missing or not one."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--latency-model {path} does not exist; write one with `top calibrate --output {path}`.")
    data = path.read_bytes()
    try:
        record = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise UserError(f"--latency-model {path} is not JSON; write it again with `top calibrate`.") from None
    return LatencyModel.from_record(record, hashlib.sha256(data).hexdigest(), str(path))


# ----------------------------------------------------------------------------------------------
# Does it describe this model and machine?


def shape_of(config: Any) -> Dict[str, Any]:
    return {key: getattr(config, key, None) for key in SHAPE_KEYS}


def check_shape(model: LatencyModel, config: Any, what: str) -> None:
    """A latency model of another architecture is refused: its coefficients say nothing of this one."""
    mine = shape_of(config)
    different = [f"{key} {model.shape[key]} there, {mine[key]} here" for key in SHAPE_KEYS
                 if model.shape[key] != mine[key]]
    if different:
        raise UserError(
            f"--latency-model {model.path} was calibrated on another architecture than {what} "
            f"({'; '.join(different)}); run `top calibrate --model` on {what} first."
        )


def timing_conditions(machine: Dict[str, Any]) -> Dict[str, Any]:
    """What a time measured here depends on besides the model and its inputs: ``machine``
    (:func:`top.runtime.machine.timing_machine`'s record) and, in torch, the kernels of top's compact
    inference (:func:`top.method.compact.kernels`; None in onnxruntime, whose version the machine names).
    A latency model records them; one timed on other kernels (an older top) describes other code."""
    kernels = compact_kernels(machine["device"]) if machine.get("runtime", "torch") == "torch" else None
    return dict(machine, kernels=kernels)


def machine_differences(model: LatencyModel, machine: Dict[str, Any]) -> List[str]:
    """What of the recorded conditions differs from ``machine`` (:func:`timing_conditions`'s keys), as
    ``key there vs here``. A latency model of a top before kernels were recorded has none: that differs
    from any kernels here."""
    different = []
    for key in MACHINE_KEYS:
        if key in machine and model.machine.get(key) != machine.get(key):
            there = f"{model.machine[key]!r} there" if key in model.machine else "not recorded there (an older top)"
            different.append(f"{key} {there}, {machine.get(key)!r} here")
    return different


# ----------------------------------------------------------------------------------------------
# A speedup target made a constraint


@dataclasses.dataclass(frozen=True)
class LatencyConstraint:
    """``--target-speedup`` on a dev set, as the latency sparsity the Lagrangian holds the gates to."""

    model: LatencyModel
    target_speedup: float
    unpruned_speedup: float  # compact without pruning over dense, predicted on the dev set
    target: float  # the latency sparsity: 1 - unpruned_speedup / target_speedup
    implied_keep_ratio: float  # the same keep ratio at every location that reaches the target
    implied_sparsity: float  # ... and the expected MAC sparsity and FLOPs reduction it gives
    implied_flops_reduction: float

    def figures(self, lengths: Sequence[int], token_z: torch.Tensor, pruner_z: torch.Tensor,
                prune_locations: Sequence[int]) -> Dict[str, float]:
        """An evaluation's latency figures for deterministic gates on inputs of ``lengths`` tokens: the latency
        sparsity the constraint holds (``expected_latency_sparsity``) and the ``predicted_speedup`` over dense."""
        plan = CompactPlan.from_gates(token_z.detach().cpu(), pruner_z.detach().cpu(), prune_locations,
                                      max(int(n) for n in lengths))
        speedups = self.model.speedups(lengths, plan)
        return {"expected_latency_sparsity": speedups["latency_sparsity"],
                "predicted_speedup": speedups["predicted_speedup"]}

    def checkpoint_record(self, evaluation: Dict[str, Any]) -> Dict[str, Any]:
        """``latency_target.json`` of a checkpoint trained to this target: the target, what the evaluation that
        wrote it predicted, and the latency model itself (so ``top bench`` can predict on its own batches)."""
        return {"target_speedup": self.target_speedup,
                "predicted_speedup": evaluation.get("predicted_speedup"),
                "step": evaluation.get("step"),
                "latency_model_sha256": self.model.fingerprint,
                "latency_model": self.model.to_record()}

    def record(self) -> Dict[str, Any]:
        """What ``run.json`` and ``summary.json`` say of the constraint."""
        return {
            "target_speedup": self.target_speedup,
            "target_latency_sparsity": self.target,
            "unpruned_speedup": self.unpruned_speedup,
            "implied_keep_ratio": self.implied_keep_ratio,
            "implied_sparsity": self.implied_sparsity,
            "implied_flops_reduction": self.implied_flops_reduction,
            "latency_model": {"path": self.model.path, "sha256": self.model.fingerprint,
                              "batch_size": self.model.batch_size, "machine": self.model.machine},
        }


def even_keep_speedup(model: LatencyModel, keep: float, prune_locations: Sequence[int], attention_mask: torch.Tensor,
                      unpruned_speedup: float) -> float:
    """The predicted speedup over dense when every location keeps ``keep`` of its tokens."""
    n = len(prune_locations)
    with torch.no_grad():
        pruned, unpruned = model.expected_seconds(torch.full((n, 1), float(keep), dtype=torch.float64),
                                                  torch.ones(n, dtype=torch.float64), prune_locations,
                                                  attention_mask)
    return unpruned_speedup * float(unpruned.sum() / pruned.sum())


def constraint_for(model: LatencyModel, target_speedup: float, prune_locations: Sequence[int], config: Any,
                   attention_mask: torch.Tensor, task_length: int) -> LatencyConstraint:
    """The constraint of ``target_speedup`` on a dev set (its ``attention_mask``); a ``UserError`` when the
    target needs no pruning or more than pruning at ``prune_locations`` can give."""
    lengths = attention_mask.sum(-1).tolist()
    unpruned = model.speedups(lengths, None)["unpruned_speedup"]
    locations = list(prune_locations)
    if target_speedup <= unpruned:
        raise UserError(
            f"--target-speedup {target_speedup:g} needs no pruning: compact inference alone is predicted at "
            f"{unpruned:.2f}x over the dense model on this data at batch {model.batch_size}; give a target above "
            f"{unpruned:.2f}."
        )
    most = even_keep_speedup(model, 0.0, locations, attention_mask, unpruned)
    if target_speedup >= most:
        raise UserError(
            f"--target-speedup {target_speedup:g} is beyond what pruning at layers {locations} can give: even "
            f"keeping only [CLS] the latency model predicts {most:.2f}x on this data at batch {model.batch_size}; "
            "give a lower target or prune from an earlier layer (--prune-location)."
        )
    low, high = 0.0, 1.0  # keep ratios: speedup falls as the ratio rises
    for _ in range(50):
        middle = (low + high) / 2
        if even_keep_speedup(model, middle, locations, attention_mask, unpruned) > target_speedup:
            low = middle
        else:
            high = middle
    keep = (low + high) / 2
    n = len(locations)
    with torch.no_grad():
        sparsity, _ = expected_sparsities(torch.full((n, 1), keep, dtype=torch.float64),
                                          torch.ones(n, dtype=torch.float64), locations, config, attention_mask,
                                          task_length)
    sparsity = float(sparsity)
    return LatencyConstraint(model, float(target_speedup), unpruned, 1.0 - unpruned / target_speedup, keep, sparsity,
                             float(flops_reduction(sparsity)))
