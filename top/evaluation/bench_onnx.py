"""``top bench --runtime onnxruntime``: the three methods as exported graphs in onnxruntime, and the
weight-read floor of one forward pass."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any, Dict

import numpy as np

from top.deploy.export import export_model, onnxruntime_session, sample_inputs
from top.evaluation.bench_records import Correctness

FLOOR_METHOD = "dense_two_tokens"  # timed only with --runtime onnxruntime


INT8_METHOD = "compact_int8"
INT8_DENSE = "optimized_dense_int8_dynamic"


def onnxruntime_functions(top_model, token_z, pruner_z, batches, threads: int, directory: Path, stock_model,
                          quantize=None):
    """The methods in onnxruntime: ``(functions, pruned session, export reports)``.

    Three graphs are written to ``directory`` by :func:`top.deploy.export.export_model`, which
    checks each against the PyTorch compact path first: the pruned graph as ``top export``
    writes it (optimized), the same weights exported dense by ``top export --dense`` (the pruned
    graph's operators, no fusions), and the stock Hugging Face export of ``stock_model`` after
    onnxruntime's transformer optimizer (fused attention, LayerNorms and GELU: the dense graph
    a user would otherwise deploy). Each dense graph is fed padded (``*_padded``) and trimmed
    (``*_dynamic``) batches. Every batch gets numpy copies of its inputs, so the timed calls
    convert nothing. With ``quantize="int8"`` the pruned graph and the optimized stock graph are
    also written int8 (``top export --quantize int8``) and timed on trimmed batches.
    """
    reports = {
        "compact": export_model(top_model, token_z, pruner_z, directory / "pruned.onnx"),
        "dense": export_model(top_model, None, None, directory / "dense.onnx", dense=True),
        "optimized_dense": export_model(top_model, None, None, directory / "stock.onnx", stock_model=stock_model),
    }
    pruned = onnxruntime_session(directory / "pruned.onnx", threads)
    dense = onnxruntime_session(directory / "dense.onnx", threads)
    optimized = onnxruntime_session(directory / "stock.onnx", threads)
    names = [i.name for i in pruned.get_inputs()]
    for batch in batches:
        for part in ("full", "trimmed"):
            batch[part + "_numpy"] = {k: batch[part][k].cpu().numpy() for k in names}

    def fed(session, part: str):
        """The session run on each batch's ``full`` (task-length padded) or ``trimmed`` inputs."""
        return lambda batch: session.run(["logits"], batch[part + "_numpy"])[0]

    two = sample_inputs(top_model.config, [2])
    two_tokens = {k: two[k].numpy() for k in names}

    def dense_two_tokens(batch):
        # The weight-read floor of batch 1, timed in turn with the others (see weight_read_floor):
        # the fastest dense graph, so the floor is the tightest one.
        return optimized.run(["logits"], two_tokens)[0]

    functions = {"dense_padded": fed(dense, "full"), "dense_dynamic": fed(dense, "trimmed"),
                 "optimized_dense_padded": fed(optimized, "full"),
                 "optimized_dense_dynamic": fed(optimized, "trimmed"), "compact": fed(pruned, "trimmed"),
                 FLOOR_METHOD: dense_two_tokens}
    if quantize == "int8":
        reports[INT8_METHOD] = export_model(top_model, token_z, pruner_z, directory / "pruned-int8.onnx",
                                            quantize="int8")
        reports[INT8_DENSE] = export_model(top_model, None, None, directory / "stock-int8.onnx",
                                           stock_model=stock_model, quantize="int8")
        functions[INT8_METHOD] = fed(onnxruntime_session(directory / "pruned-int8.onnx", threads), "trimmed")
        functions[INT8_DENSE] = fed(onnxruntime_session(directory / "stock-int8.onnx", threads), "trimmed")
    return functions, pruned, reports


def weight_read_floor(top_model, two_token_ms: float) -> Dict[str, Any]:
    """What bounds one batch-1 forward pass from below: every weight matrix is read once.

    Two measures. ``bandwidth_floor_ms``: the bytes of every weight the layers and the head read
    whole (the embedding tables are only indexed, so they are left out) over the read bandwidth
    of this machine, measured by summing a float32 buffer of the same size (numpy, one thread).
    ``two_token_ms``: the optimized dense graph on a two-token input ([CLS] [SEP]), timed in turn with the
    other methods: the same weights streamed through the same kernels with next to no arithmetic,
    onnxruntime's cost per operator included.
    """
    weight_bytes = sum(
        p.numel() * p.element_size() for name, p in top_model.named_parameters() if ".embeddings." not in name
    )
    buffer = np.ones(weight_bytes // 4, dtype=np.float32)
    reads = []
    for _ in range(5):
        start = time.perf_counter()
        buffer.sum()
        reads.append(time.perf_counter() - start)
    del buffer
    read_s = statistics.median(reads)
    return {
        "weight_bytes": int(weight_bytes),
        "read_bandwidth_gb_s": weight_bytes / read_s / 1e9,
        "bandwidth_floor_ms": 1000.0 * read_s,
        "two_token_ms": two_token_ms,
        "method": "weight bytes / one-thread numpy read bandwidth; optimized dense ONNX graph on 2 tokens "
                  "at batch 1, timed in turn with the other methods (warm on its own weights), same threads",
    }


def onnx_record(correctness: Correctness, exports, floor) -> Dict[str, Any]:
    """What ``--runtime onnxruntime`` adds to (or changes in) ``bench.json``."""
    import onnxruntime

    return {
        "onnxruntime": onnxruntime.__version__,
        "onnx_agreement_with_faithful": sum(correctness.onnx_agree) / len(correctness.onnx_agree),
        "max_abs_logit_diff_onnx_vs_compact": correctness.onnx_diff,
        "onnx_export_check": exports,
        "weight_read_floor": floor,
        "dense_graph": "dense_*: the same weights exported by top export --dense (no pruning, padding computed, "
                       "no fusions); optimized_dense_*: the stock Hugging Face export after onnxruntime's "
                       "transformer optimizer",
        "dense_attention": "dense_*: onnx MatMul/Softmax, as in the pruned graph; optimized_dense_*: fused Attention",
    }


def int8_record(result: Dict[str, Any], ms: Dict[str, float], agreement: float) -> Dict[str, Any]:
    """The int8 pruned graph against the int8 stock graph (same quantization), and against the float graphs."""
    optimized = result["baselines"]["optimized_dense_dynamic"]
    return {
        "compact_ms_per_batch": ms[INT8_METHOD],
        "optimized_dense_dynamic_ms_per_batch": ms[INT8_DENSE],
        "speedup": ms[INT8_DENSE] / ms[INT8_METHOD],
        "flops_ratio": optimized["flops_ratio"],  # the float graphs' tokens
        "speedup_over_flops_ratio": ms[INT8_DENSE] / ms[INT8_METHOD] / optimized["flops_ratio"],
        "speedup_vs_float_compact": ms["compact"] / ms[INT8_METHOD],
        "speedup_vs_float_optimized_dense_dynamic": optimized["ms_per_batch"] / ms[INT8_METHOD],
        "agreement_with_float_compact": agreement,
        "export_check": {name: result["onnx_export_check"][name]["int8_check"] for name in (INT8_METHOD, INT8_DENSE)},
        "quantization": "onnxruntime quantize_dynamic: int8 weights (QInt8, 7-bit reduce_range) of MatMul and "
                        "Attention with a constant matrix, uint8 activations quantized per call; products of two "
                        "activations stay float",
    }
