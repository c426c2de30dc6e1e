"""What ``bench.json`` counts: the correctness checks' results and exact MACs per method and batch."""

from __future__ import annotations

import dataclasses
from typing import Dict, List

import torch

from top.method.flops import model_macs


@dataclasses.dataclass
class Correctness:
    agree: List[bool]  # compact's prediction equals faithful's, per example
    max_diff: float  # largest |compact - unpadded reference| logit
    kept: List[torch.Tensor]  # per batch, the survivors of every layer (for the MAC counts)
    onnx_agree: List[bool]
    onnx_diff: float  # largest |onnx compact - torch compact| logit
    int8_agree: List[bool] = dataclasses.field(default_factory=list)  # int8 graph's prediction equals compact's


def mac_counts(config, batches, kept: List[torch.Tensor], task_length: int) -> Dict[str, List[torch.Tensor]]:
    """Exact MACs per example and batch: compact at its survivors, dense at the task length
    (``dense_padded``), at each batch's padded length (``dense_dynamic``) and at each example's
    own length (``unpadded``)."""
    layers = int(config.num_hidden_layers)
    macs: Dict[str, List[torch.Tensor]] = {
        "compact": [model_macs(k, config).double() for k in kept],
        "dense_dynamic": [],
        "dense_padded": [],
        "unpadded": [],
    }
    for batch in batches:
        mask = batch["trimmed"]["attention_mask"].cpu()
        size, width = mask.shape
        macs["dense_dynamic"].append(model_macs(torch.full((size, layers), width), config).double())
        macs["dense_padded"].append(model_macs(torch.full((size, layers), task_length), config).double())
        macs["unpadded"].append(model_macs(mask.sum(dim=1, keepdim=True).expand(size, layers), config).double())
    return macs


def total_macs(macs: List[torch.Tensor], batches, batch_size: int, only_full: bool = True) -> float:
    return float(sum(m.sum() for m, b in zip(macs, batches) if b["size"] == batch_size or not only_full))


def baseline_records(ms: Dict[str, float], macs, batches, batch_size: int) -> Dict[str, Dict[str, float]]:
    compact_total = total_macs(macs["compact"], batches, batch_size)
    baselines = {}
    # Each baseline and the MACs it computes (the prepacked model pads as dense_dynamic does).
    counted = {"dense_padded": "dense_padded", "dense_dynamic": "dense_dynamic",
               "dense_dynamic_prepacked": "dense_dynamic",
               "optimized_dense_padded": "dense_padded", "optimized_dense_dynamic": "dense_dynamic"}
    for name, counted_as in counted.items():
        if name not in ms:
            continue
        baselines[name] = {
            "ms_per_batch": ms[name],
            "speedup": ms[name] / ms["compact"],
            "flops_ratio": total_macs(macs[counted_as], batches, batch_size) / compact_total,
        }
    for entry in baselines.values():
        entry["speedup_over_flops_ratio"] = entry["speedup"] / entry["flops_ratio"]
    return baselines
