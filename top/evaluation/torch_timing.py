"""Timing in PyTorch: the three methods ``top bench`` compares, their batches, and their timed passes.

``dense_padded`` (the stock model at the task length), ``dense_dynamic`` (the stock model on
length-sorted batches, each padded to its longest) and ``compact`` (ToP without the pruned tokens).
"""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, List

import torch

from top.data.batching import MODEL_INPUT_KEYS
from top.method.compact import compact_forward
from top.method.modeling import ToPClassifier, stock_model_from_checkpoint
from top.method.pruning import prune_step

METHODS = ("dense_padded", "dense_dynamic", "compact")
# The stock model on dynamic padding with its linear layers on compact's kernels
# (top.method.prepacked), timed beside the others where those kernels exist: it tells the
# speedup that pruning gives from the one that the kernels give.
PREPACKED = "dense_dynamic_prepacked"


def load_models(checkpoint, need_dense: bool = True, need_top: bool = True):
    """``(dense, top_model)`` from one ``PrunedCheckpoint``, on the CPU, in eval mode.

    ``dense`` is the stock HF classifier with the library's default attention; ``top_model`` the
    ToP wrapper (eager attention, as ranking needs the probabilities). Either may be None.
    """
    dense = stock_model_from_checkpoint(checkpoint) if need_dense else None
    top_model = ToPClassifier.from_checkpoint(checkpoint) if need_top else None
    return dense, top_model


def sorted_batches(encoded: Dict[str, torch.Tensor], batch_size: int) -> List[Dict[str, torch.Tensor]]:
    """Batches of examples sorted by length (longest first), each trimmed to its longest member.

    Every batch keeps ``full`` (the task-length padded tensors) for the padded baseline.
    """
    lengths = encoded["attention_mask"].sum(dim=1)
    order = torch.sort(lengths, descending=True, stable=True).indices
    keys = [k for k in MODEL_INPUT_KEYS if k in encoded]
    out = []
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        full = {k: encoded[k][index] for k in keys}
        width = int(full["attention_mask"].sum(dim=1).max())
        out.append({"full": full, "trimmed": {k: v[:, :width] for k, v in full.items()}, "size": len(index)})
    return out


def method_functions(dense, top_model, plan,
                     dense_prepacked=None) -> Dict[str, Callable[[Dict[str, Any]], torch.Tensor]]:
    def dense_padded(batch):
        return dense(**batch["full"]).logits

    def dense_dynamic(batch):
        return dense(**batch["trimmed"]).logits

    def compact(batch):
        t = batch["trimmed"]
        return compact_forward(top_model, plan, t["input_ids"], t["attention_mask"], t.get("token_type_ids")).logits

    functions = {"dense_padded": dense_padded, "dense_dynamic": dense_dynamic, "compact": compact}
    chosen = {name: functions[name] for name in METHODS if (dense is not None or name == "compact")
              and (top_model is not None or name != "compact")}
    if dense_prepacked is not None:
        chosen[PREPACKED] = lambda batch: dense_prepacked(**batch["trimmed"]).logits
    return chosen


def unpadded_reference_logits(top_model, plan, input_ids, attention_mask, token_type_ids=None) -> torch.Tensor:
    """Compact inference stated plainly, for the logit check in ``bench.json``.

    The examples of each length run together through the stock Hugging Face layers, with no
    padding and no attention mask. A prune step keeps the tokens :func:`top.method.pruning.prune_step`
    picks from the layer's own attention probabilities (averaged over heads and rows), by boolean
    indexing; equal lengths keep equal counts, so each group stays rectangular. Nothing is packed,
    re-padded or planned, unlike :func:`top.method.compact.compact_forward`.
    """
    family = top_model._family
    lengths = attention_mask.sum(dim=1)
    logits = None
    for n in lengths.unique().tolist():
        rows = (lengths == n).nonzero().flatten()
        hidden = family.embed(input_ids[rows, :n], None if token_type_ids is None else token_type_ids[rows, :n])
        importance = None
        for index, layer in enumerate(family.layers):
            if plan.pruning and index in plan.prune_locations:
                location = plan.prune_locations.index(index)
                keep = prune_step(importance, torch.ones_like(importance), plan.token_z[location],
                                  plan.pruner_z[location]) > 0
                keep = torch.cat([keep.new_ones(keep.shape[0], 1), keep], dim=1)
                hidden = hidden[keep].view(hidden.shape[0], -1, hidden.shape[-1])
            hidden, probs = layer(hidden, output_attentions=True)[:2]
            importance = probs.mean(dim=(1, 2))[:, 1:]
        group = family.head(hidden)
        if logits is None:
            logits = group.new_zeros(input_ids.shape[0], group.shape[-1])
        logits[rows] = group
    return logits


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_methods(functions, batches, passes: int, warmup_passes: int, device: str) -> Dict[str, List[float]]:
    """Per method, each pass's mean seconds per batch, over ``batches`` (all full).

    The methods take turns within a pass, each running all its batches back to back, as a
    server runs one model; before its turn, each runs the first batch once untimed, so that it
    starts warm on its own weights (whatever of them the caches hold) rather than on the
    previous method's.
    """
    per_pass = {name: [] for name in functions}
    with torch.no_grad():
        for _ in range(warmup_passes):
            for fn in functions.values():
                for batch in batches:
                    fn(batch)
        for _ in range(passes):
            for name, fn in functions.items():
                fn(batches[0])  # warm on its own weights
                _sync(device)
                total = 0.0
                for batch in batches:
                    _sync(device)
                    start = time.perf_counter()
                    fn(batch)
                    _sync(device)
                    total += time.perf_counter() - start
                per_pass[name].append(total / len(batches))
    return per_pass
