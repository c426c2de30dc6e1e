"""``top.export(config)``: the pruned model as an ONNX graph that removes the pruned tokens itself.

The graph is traced from :class:`top.deploy.graph.ExportForward`. Inputs: ``input_ids``,
``attention_mask`` and, for BERT, ``token_type_ids``, int64 ``[batch, sequence]``, right-padded
as a tokenizer pads them. Output: ``logits`` ``[batch, num_labels]``.

Then onnxruntime's transformer optimizer fuses what it recognises (:func:`optimize_graph`: each
feed-forward's bias and GELU, each residual addition with its LayerNorm; ``no_optimize`` keeps
the plain ONNX operators, for runtimes other than onnxruntime).

The export checks itself before it writes: onnxruntime runs the graph on sample inputs (two
tokens, the longest the model takes, lengths between, and a padded batch) and its logits must
equal :func:`top.method.compact.compact_forward`'s within ``TOLERANCE``; otherwise nothing is written.
While onnxruntime's Python tools run, their loggers are quietened and put back afterwards.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import math
import warnings
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import nn

from top.deploy.config import (  # noqa: F401 - the export's limits, named where they are checked
    INT8_CHECK_EXAMPLES,
    INT8_MIN_AGREEMENT,
    MIN_OPSET,
    QUANTIZE,
    TOLERANCE,
    ExportConfig,
)
from top.deploy.graph import ExportForward
from top.errors import UserError, install_hint
from top.method.checkpoint import load_checkpoint
from top.method.compact import CompactPlan, compact_forward, prediction_agreement
from top.method.modeling import ToPClassifier, require_finite_logits
from top.storage.hub import resolve_checkpoint_path
from top.storage.io import atomic_write_bytes
from top.storage.model_files import max_input_tokens

logger = logging.getLogger(__name__)

# How to install what an export needs, named in every hint.
ONNX_INSTALL = install_hint("onnx")


def default_opset() -> int:
    """17, or 16 on torch 1.12, whose exporter stops there."""
    return 17 if tuple(int(x) for x in torch.__version__.split(".")[:2]) >= (1, 13) else 16


def max_opset() -> int:
    """The newest opset this torch's TorchScript exporter writes."""
    from torch.onnx import _constants

    for name in ("ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", "ONNX_MAX_OPSET", "onnx_main_opset"):
        if isinstance(getattr(_constants, name, None), int):
            return max(default_opset(), getattr(_constants, name))
    return default_opset()


@dataclasses.dataclass(frozen=True)
class ExportResult:
    """Where the graph went, and what its self-check found (``export_model``'s report)."""

    path: Path
    report: Dict[str, Any]

    @property
    def summary(self) -> str:
        report = self.report
        if report["int8_check"] is not None:
            check = report["int8_check"]
            return ("wrote {out} ({mb:.1f} MB, int8, opset {opset}); its predictions equal the float PyTorch "
                    "compact path's on {rate:.1%} of {n} sample inputs (largest logit difference {diff:.2g})").format(
                out=self.path, mb=report["bytes"] / 2**20, opset=report["opset"],
                rate=check["agreement_with_float_compact"], n=check["checked_examples"],
                diff=check["max_abs_logit_diff_vs_compact"])
        fused = ", ".join(f"{name} x{count}" for name, count in sorted(report["fused_operators"].items()))
        return ("wrote {out} ({mb:.1f} MB, opset {opset}{fused}); onnxruntime agrees with the PyTorch compact path "
                "within {diff:.2g} on lengths {lengths}").format(
            out=self.path, mb=report["bytes"] / 2**20, opset=report["opset"],
            fused=f"; fused {fused}" if fused else ("" if report["optimized"] else "; not optimized"),
            diff=report["max_abs_logit_diff_vs_compact"], lengths=report["checked_lengths"])


def export(config: ExportConfig) -> ExportResult:
    """Run ``top export`` with ``config``: the checkpoint's graph, checked, written atomically to ``config.output``."""
    opset = config.opset if config.opset is not None else default_opset()
    if opset > max_opset():
        raise UserError(f"--opset {opset} is newer than torch {torch.__version__} exports (at most {max_opset()}); "
                        f"pass --opset {default_opset()}.")
    require_onnxruntime()
    # No tokenizer needed: the graph starts at token ids.
    checkpoint = load_checkpoint(resolve_checkpoint_path(config.checkpoint))
    if checkpoint.token_z is None and not config.dense:
        raise UserError(
            f"{config.checkpoint} has no token gates (zs.pt or l0_module.pt); give a pruned checkpoint "
            "or pass --dense."
        )
    model = ToPClassifier.from_checkpoint(checkpoint)
    output = Path(config.output)
    report = export_model(model, checkpoint.token_z, checkpoint.pruner_z, output, opset, dense=config.dense,
                          source=str(checkpoint.path), optimize=not config.no_optimize, quantize=config.quantize)
    return ExportResult(output, report)


def input_names(config) -> List[str]:
    names = ["input_ids", "attention_mask"]
    if getattr(config, "model_type", None) == "bert":
        names.append("token_type_ids")
    return names


def sample_inputs(config, lengths: Sequence[int], seed: int = 0, pad_to: Optional[int] = None
                  ) -> Dict[str, torch.Tensor]:
    """Random right-padded inputs of the given lengths (token ids clear of the special ones)."""
    gen = torch.Generator().manual_seed(seed)
    width = pad_to or max(lengths)
    pad = int(getattr(config, "pad_token_id", 0) or 0)
    low = min(pad + 3, int(config.vocab_size) - 1)
    ids = torch.randint(low, int(config.vocab_size), (len(lengths), width), generator=gen)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, n in enumerate(lengths):
        mask[row, :n] = 1
    ids = torch.where(mask.bool(), ids, torch.full_like(ids, pad))
    inputs = {"input_ids": ids, "attention_mask": mask}
    if "token_type_ids" in input_names(config):
        types = torch.zeros_like(ids)
        for row, n in enumerate(lengths):
            types[row, n // 2 : n] = 1  # a sentence pair: segment B in the second half
        inputs["token_type_ids"] = types * mask
    return inputs


def check_batches(config) -> List[Dict[str, torch.Tensor]]:
    """What the self-check runs: single examples from 2 tokens to the longest, and padded batches."""
    longest = max_input_tokens(config)
    singles = sorted({2, 3, min(8, longest), min(17, longest), min(64, longest), longest})
    batches = [sample_inputs(config, [n], seed=n) for n in singles]
    gen = torch.Generator().manual_seed(1)
    mixed = [2, longest] + [int(n) for n in torch.randint(2, min(longest, 128) + 1, (6,), generator=gen)]
    batches.append(sample_inputs(config, mixed, seed=7))
    # Padded past the longest example, as a tokenizer with padding="max_length" gives.
    batches.append(sample_inputs(config, [5, 9, 3], seed=8, pad_to=min(longest, 32)))
    return batches


def _onnx_export(module: nn.Module, config, opset: int) -> bytes:
    """The traced graph of ``module`` as ONNX bytes (``com.microsoft`` opset 1 imported for fused attention)."""
    names = input_names(config)
    example = sample_inputs(config, [min(12, max_input_tokens(config)), 3], seed=0)
    args = tuple(example[name] for name in names)
    axes = {name: {0: "batch", 1: "sequence"} for name in names}
    axes["logits"] = {0: "batch"}
    kwargs = {}
    if "dynamo" in _export_parameters():
        kwargs["dynamo"] = False  # the TorchScript exporter: dynamic axes through data-dependent widths
    if getattr(module, "fused_attention", False):
        kwargs["custom_opsets"] = {"com.microsoft": 1}
    _register_argsort(opset)
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        # The exporter's notice that it is the legacy one, and tracer notes on Python-side checks
        # in the HF modules; the self-check runs the graph at other shapes and catches what matters.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        try:
            torch.onnx.export(
                module, args, buffer, input_names=names, output_names=["logits"], dynamic_axes=axes,
                opset_version=opset, do_constant_folding=True, **kwargs,
            )
        except ValueError as exc:
            if "opset" not in str(exc).lower():
                raise
            raise UserError(
                f"torch {torch.__version__} cannot export opset {opset} ({exc}); pass --opset {default_opset()}."
            ) from None
    return buffer.getvalue()


def _register_argsort(opset: int) -> None:
    """torch 1.12's exporter has ``sort`` but not ``argsort`` (which prune_step uses): map one to the other."""
    if default_opset() >= 17:
        return  # torch 1.13+ exports argsort itself
    from torch.onnx import symbolic_opset11

    def argsort(g, self, dim, descending, *args):
        return symbolic_opset11.sort(g, self, dim, descending)[1]

    torch.onnx.register_custom_op_symbolic("::argsort", argsort, opset)


def _export_parameters() -> Sequence[str]:
    import inspect

    return list(inspect.signature(torch.onnx.export).parameters)


def onnxruntime_session(model_bytes_or_path, threads: Optional[int] = None):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    source = model_bytes_or_path if isinstance(model_bytes_or_path, bytes) else str(model_bytes_or_path)
    return onnxruntime.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def run_session(session, inputs: Dict[str, torch.Tensor]) -> torch.Tensor:
    wanted = [i.name for i in session.get_inputs()]
    feed = {name: inputs[name].cpu().numpy() for name in wanted}
    return torch.from_numpy(session.run(["logits"], feed)[0])


def _side_by_side(session, model, token_z, pruner_z, batches, source: str):
    """``(inputs, onnxruntime logits, PyTorch compact logits)`` for every batch."""
    longest = max(int(inputs["input_ids"].shape[1]) for inputs in batches)
    plan = CompactPlan.from_gates(token_z, pruner_z, model.prune_locations, longest)
    for inputs in batches:
        reference = compact_forward(
            model, plan, inputs["input_ids"], inputs["attention_mask"], inputs.get("token_type_ids")
        ).logits
        require_finite_logits(reference, source)
        yield inputs, run_session(session, inputs), reference


def compare_with_compact(session, model, token_z, pruner_z, batches,
                         source: str = "being exported") -> Tuple[float, int]:
    """``(max |logit difference|, length of the worst batch)`` of onnxruntime against PyTorch compact."""
    worst, worst_length = 0.0, 0
    for inputs, got, reference in _side_by_side(session, model, token_z, pruner_z, batches, source):
        diff = float((got - reference).abs().max()) if got.shape == reference.shape else math.inf
        if not diff <= worst:  # also catches NaN
            worst, worst_length = diff, int(inputs["attention_mask"].sum(dim=1).max())
    return worst, worst_length


@contextlib.contextmanager
def _quiet_logging() -> Iterator[None]:
    """onnxruntime's Python tools log every fusion they try at INFO, some through the root logger:
    while they run, only errors pass (a filter on the root logger, and onnxruntime's own loggers
    raised to ERROR); every logger is put back as it was afterwards."""

    class _OnlyErrorsFromOnnxruntime(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return record.levelno >= logging.ERROR or "onnxruntime" not in record.pathname

    root, onnx_logger = logging.getLogger(), logging.getLogger("onnxruntime")
    quiet, level = _OnlyErrorsFromOnnxruntime(), onnx_logger.level
    root.addFilter(quiet)
    onnx_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.removeFilter(quiet)
        onnx_logger.setLevel(level)


def optimize_graph(model_bytes: bytes, config) -> Tuple[bytes, Dict[str, int]]:
    """The graph after onnxruntime's transformer optimizer, and the fused operators it made.

    ``optimize_model(..., model_type="bert")`` with the model's heads and hidden size and its
    default level: onnxruntime's basic optimizations, then the Python fusions of BERT patterns
    (EmbedLayerNormalization, Attention, SkipLayerNormalization, BiasGelu, ...). On the pruned
    graph it fuses what it recognises: every feed-forward's bias and GELU and the residual
    additions with their LayerNorms. Attention is fused by the export itself where it ranks
    nothing (:class:`FusedSelfAttention`); attention that ranks tokens must keep its
    probabilities, so it stays as written. What it makes is checked like any export before it
    is written.
    """
    import tempfile

    from onnxruntime.transformers.optimizer import optimize_model

    with tempfile.TemporaryDirectory(prefix="top-onnx-") as tmp:
        source = Path(tmp) / "graph.onnx"
        source.write_bytes(model_bytes)
        with _quiet_logging(), warnings.catch_warnings():  # it logs every fusion it tries, and the totals
            warnings.simplefilter("ignore")
            optimized = optimize_model(str(source), model_type="bert",
                                       num_heads=int(config.num_attention_heads),
                                       hidden_size=int(config.hidden_size))
            statistics = optimized.get_fused_operator_statistics()
        fused = {name: int(count) for name, count in statistics.items() if count}
        return optimized.model.SerializeToString(), fused


def stock_export(model, opset: Optional[int] = None) -> bytes:
    """The stock Hugging Face classifier exported as a user would export it: ``torch.onnx.export``
    with batch and sequence dynamic, padding computed (the dense model a user would otherwise deploy)."""
    opset = opset or default_opset()
    config = model.config
    names = input_names(config)
    example = sample_inputs(config, [min(12, max_input_tokens(config)), 3], seed=0)
    axes = {name: {0: "batch", 1: "sequence"} for name in names}
    axes["logits"] = {0: "batch"}
    kwargs = {"dynamo": False} if "dynamo" in _export_parameters() else {}

    class Logits(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, *inputs):
            return self.inner(**dict(zip(names, inputs))).logits

    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Logits(model.cpu().eval()), tuple(example[n] for n in names), buffer, input_names=names,
                          output_names=["logits"], dynamic_axes=axes, opset_version=opset,
                          do_constant_folding=True, **kwargs)
    return buffer.getvalue()


def checked_graph(model_bytes: bytes, model, token_z, pruner_z, output, source: str) -> Tuple[float, List[int]]:
    """Run ``model_bytes`` in onnxruntime on :func:`check_batches` against compact; raise unless within TOLERANCE."""
    session = onnxruntime_session(model_bytes)
    batches = check_batches(model.config)
    with torch.no_grad():
        worst, length = compare_with_compact(session, model, token_z, pruner_z, batches, source)
    if not worst <= TOLERANCE:
        raise UserError(
            f"The exported graph's logits differ from the PyTorch compact path's by {worst:.3g} "
            f"(> {TOLERANCE:g}) at length {length}, so {output} was not written; "
            "report this with the checkpoint and the versions of torch and onnxruntime."
        )
    return worst, sorted({int(n) for b in batches for n in b["attention_mask"].sum(dim=1).tolist()})


def quantize_graph(model_bytes: bytes) -> bytes:
    """onnxruntime's dynamic int8 quantization: int8 weights for every product with a constant
    matrix (MatMul, and the fused Attention of a stock graph), activations quantized per call.

    The products of two activations (attention scores, which rank the tokens) stay float
    (``MatMulConstBOnly``), so ranking sees float probabilities of int8-projected queries and keys.
    Weights use 7 bits (``reduce_range``), as onnxruntime advises for x86 CPUs without VNNI, whose
    8-bit products can saturate: with the full range the RoBERTa test checkpoint agreed with
    float compact on 97.1% of the check inputs, with 7 bits on all of them.
    """
    import tempfile

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(prefix="top-onnx-") as tmp:
        source, target = Path(tmp) / "float.onnx", Path(tmp) / "int8.onnx"
        source.write_bytes(model_bytes)
        with _quiet_logging():  # its advice to pre-process, given on every call
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                quantize_dynamic(str(source), str(target), op_types_to_quantize=["MatMul", "Attention"],
                                 weight_type=QuantType.QInt8, reduce_range=True,
                                 extra_options={"MatMulConstBOnly": True, "DefaultTensorType": onnx.TensorProto.FLOAT})
        return target.read_bytes()


def int8_check_batches(config) -> List[Dict[str, torch.Tensor]]:
    """INT8_CHECK_EXAMPLES random inputs in batches of 8, lengths 2 to 128 (or the longest allowed)."""
    longest = min(max_input_tokens(config), 128)
    gen = torch.Generator().manual_seed(3)
    batches = []
    for index in range(INT8_CHECK_EXAMPLES // 8):
        lengths = [int(n) for n in torch.randint(2, longest + 1, (8,), generator=gen)]
        batches.append(sample_inputs(config, lengths, seed=100 + index))
    return batches


def checked_int8(model_bytes: bytes, model, token_z, pruner_z, output, source: str) -> Dict[str, object]:
    """The int8 graph's predictions against float compact's; raise unless they agree often enough."""
    session = onnxruntime_session(model_bytes)
    batches = int8_check_batches(model.config) + check_batches(model.config)
    agree, worst = [], 0.0
    with torch.no_grad():
        for _, got, reference in _side_by_side(session, model, token_z, pruner_z, batches, source):
            if got.shape != reference.shape or not bool(torch.isfinite(got).all()):
                agree.extend([False] * reference.shape[0])
                continue
            agree.extend(prediction_agreement(got, reference))
            worst = max(worst, float((got - reference).abs().max()))
    rate = sum(agree) / len(agree)
    if not rate >= INT8_MIN_AGREEMENT:
        raise UserError(
            f"The int8 graph gives the float PyTorch compact path's prediction on {rate:.1%} of {len(agree)} "
            f"sample inputs (< {INT8_MIN_AGREEMENT:.0%}), so {output} was not written; export it without --quantize."
        )
    return {"agreement_with_float_compact": rate, "checked_examples": len(agree),
            "max_abs_logit_diff_vs_compact": worst}


def export_model(model, token_z: Optional[torch.Tensor], pruner_z: Optional[torch.Tensor], output,
                 opset: Optional[int] = None, dense: bool = False, source: str = "being exported",
                 optimize: bool = True, stock_model: Optional[nn.Module] = None,
                 quantize: Optional[str] = None) -> Dict[str, object]:
    """Export, check against the compact path in onnxruntime, then write ``output`` atomically.

    ``dense`` exports the same weights without pruning and without trimming padding, and is never
    optimized: a baseline with the pruned graph's own operators. ``stock_model`` (the stock Hugging
    Face classifier with ``model``'s weights) is exported by :func:`stock_export` instead, dense,
    and checked against ``model``'s dense compact path. ``optimize`` runs :func:`optimize_graph`
    (not with ``dense``). ``quantize="int8"`` then runs :func:`quantize_graph`, and the check is
    :func:`checked_int8` (predictions) instead of the logit tolerance. Returns what the check
    found. Raises :class:`UserError` (and writes nothing) when the graph disagrees.
    """
    require_onnxruntime()
    opset = opset or default_opset()
    model = model.cpu().eval()
    if dense or stock_model is not None:
        token_z = pruner_z = None
    prune_after: Dict[int, int] = {}
    if stock_model is not None:
        model_bytes = stock_export(stock_model, opset)
    else:
        module = ExportForward(model, token_z, pruner_z, trim=not dense, fused_attention=optimize and not dense).eval()
        prune_after = module.prune_after
        model_bytes = _onnx_export(module, model.config, opset)
    optimized = optimize and not dense
    fused: Dict[str, int] = {}
    if optimized:
        model_bytes, fused = optimize_graph(model_bytes, model.config)
    int8 = None
    if quantize == "int8":
        model_bytes = quantize_graph(model_bytes)
        int8 = checked_int8(model_bytes, model, token_z, pruner_z, output, source)
        worst, lengths = int8["max_abs_logit_diff_vs_compact"], None
    elif quantize is not None:
        raise ValueError(f"quantize must be one of {QUANTIZE} or None, got {quantize!r}")
    else:
        worst, lengths = checked_graph(model_bytes, model, token_z, pruner_z, output, source)
    atomic_write_bytes(output, model_bytes)
    return {
        "output": str(output),
        "opset": opset,
        "pruned": bool(prune_after),
        "pruning_layers": sorted(index for index in prune_after),
        "graph": "stock" if stock_model is not None else ("dense" if dense else "pruned"),
        "optimized": optimized,
        "fused_operators": fused,
        "quantized": quantize,
        "int8_check": int8,
        "max_abs_logit_diff_vs_compact": worst,
        "checked_lengths": lengths,
        "bytes": len(model_bytes),
    }


def require_onnxruntime() -> None:
    missing = [name for name in ("onnx", "onnxruntime") if not _importable(name)]
    if missing:
        raise UserError(
            f"Exporting to ONNX needs {' and '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} "
            f"not installed; {ONNX_INSTALL}."
        )


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def onnxruntime_available() -> bool:
    return _importable("onnx") and _importable("onnxruntime")
