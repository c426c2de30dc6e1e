"""``top.bench(config)``: time compact inference against dense baselines and write ``bench.json``.

Three methods run in one process, on the same dev examples, the same weights and the same
thread count:

``dense_padded``   the stock HF model (its default attention kernel), inputs padded to the task
                   length of the paper's table;
``dense_dynamic``  the stock HF model, batches sorted by length, each padded to its longest;
``compact``        ToP with the pruned tokens removed (:func:`top.method.compact.compact_forward`), on
                   the same sorted batches.

On the CPU a fourth, ``dense_dynamic_prepacked``, runs the stock model on dynamic padding with
its linear layers on compact's kernels (:mod:`top.method.prepacked`): compact's speedup over it
is what pruning alone buys, over ``dense_dynamic`` what pruning and the kernels buy together.

Every method is warmed up, then timed over ``--passes`` passes of the dev set (the methods take
turns within a pass, so drift in the machine's load hits all alike; each runs its first batch
once, untimed, before its turn, so it is timed warm on its own weights, as a server would run it). A pass's figure is
its mean time per full batch; ``ms_per_batch`` is the median over passes. FLOPs ratios count
MACs exactly on the same full batches: dense at the task length, dense at each batch's padded
length, and compact at the real survivors of every layer. Peak memory of one forward pass over
the longest batch is measured per method (the rise of the peak resident set in a fresh
subprocess on the CPU, ``torch.cuda.max_memory_allocated`` on a GPU).

Before timing, every batch is checked: ``agreement_with_faithful`` compares compact's
predictions with faithful mode's, and ``max_abs_logit_diff_vs_reference_compact`` compares
compact's logits with :func:`unpadded_reference_logits`, a second statement of compact
inference that shares none of ``compact_forward``'s machinery (see there).

``--runtime onnxruntime`` times exported graphs in onnxruntime instead (CPU only): ``compact`` is
the pruned graph of ``top export`` (optimized), ``dense_padded`` and ``dense_dynamic`` the same
weights exported dense (``top export --dense``, no fusions), ``optimized_dense_padded`` and
``optimized_dense_dynamic`` the stock Hugging Face export after onnxruntime's transformer
optimizer (the dense graph a user would deploy), each fed padded and trimmed batches; every
session gets the same thread count. All graphs pass the export's self-check first. Beside the
speedups it reports the weight-read floor of one forward pass (see :func:`weight_read_floor`).
Peak memory is not measured in this mode.
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from top.data import sources
from top.data.batching import check_max_seq_length, check_token_ids, encode
from top.data.tasks import get_task
from top.deploy.export import ONNX_INSTALL, onnxruntime_available
from top.errors import UserError
from top.evaluation.bench_onnx import (
    FLOOR_METHOD,
    INT8_METHOD,
    int8_record,
    onnx_record,
    onnxruntime_functions,
    weight_read_floor,
)
from top.evaluation.bench_records import Correctness, baseline_records, mac_counts, total_macs
from top.evaluation.bench_target import BASELINE, target_fields
from top.evaluation.config import RUNTIMES, BenchConfig  # noqa: F401 - RUNTIMES: the bench suite's choices
from top.evaluation.memory_probe import measure_peak_memory
from top.evaluation.torch_timing import (
    load_models,
    method_functions,
    sorted_batches,
    time_methods,
    unpadded_reference_logits,
)
from top.method import prepacked
from top.method.checkpoint import load_checkpoint
from top.method.compact import CompactPlan, compact_forward, prediction_agreement
from top.method.modeling import require_finite_logits
from top.runtime import determinism
from top.runtime.devices import resolve_device
from top.storage.hub import resolve_checkpoint_path
from top.storage.io import atomic_write_json
from top.storage.model_files import load_tokenizer

logger = logging.getLogger(__name__)

@dataclasses.dataclass(frozen=True)
class BenchTask:
    """What a bench needs of its task: a name for the record and the length of the padded baseline."""

    name: str
    task_length: int


def _check_config(config: BenchConfig) -> BenchTask:
    """What argparse cannot see: the machine, the installed runtimes and which dev set was named."""
    resolve_device(config.device)  # no GPU behind --device cuda is an error
    runtime = config.runtime
    if config.quantize is not None and runtime != "onnxruntime":
        raise UserError("--quantize times exported graphs; pass --runtime onnxruntime with it.")
    if runtime == "onnxruntime" and resolve_device(config.device).type != "cpu":
        raise UserError("--runtime onnxruntime times the CPU execution provider only; pass --device cpu.")
    if runtime == "onnxruntime" and not onnxruntime_available():
        raise UserError(f"--runtime onnxruntime needs onnx and onnxruntime; {ONNX_INSTALL}.")
    if not config.validation_file and not config.data_dir:
        raise UserError("Neither --data-dir nor --validation-file was given; pass one to say which dev set to time.")
    if config.task is not None:
        task = get_task(config.task)
        return BenchTask(task.name, config.max_seq_length or task.task_length)
    if config.data_dir:
        raise UserError("--data-dir needs --task to say which task's dev set to time; pass --task.")
    if config.max_seq_length is None:
        raise UserError("Timing --validation-file without --task needs the length inputs are padded and cut to; "
                        "pass --max-seq-length, e.g. 128 (or --task to take a task's).")
    return BenchTask(Path(config.validation_file).stem, config.max_seq_length)


def _load_examples(config: BenchConfig, task: BenchTask):
    """The dev examples to time: ``--validation-file`` if given, else ``--task``'s GLUE dev set."""
    if config.validation_file:  # only the examples: the task length stays ``task``'s
        data = sources.load(dataclasses.replace(config, task=None), task.task_length, splits=("dev",))
    else:
        data = sources.load(config, task.task_length, splits=("dev",))
    examples = data.dev
    if config.max_examples is not None:
        examples = examples[: config.max_examples]
    return examples


# ----------------------------------------------------------------------------------------------
# The three methods














# ----------------------------------------------------------------------------------------------
# Peak memory










# ----------------------------------------------------------------------------------------------
# The benchmark


@dataclasses.dataclass
class Loaded:
    """A pruned checkpoint's models, gates and compact plan on the device, and its dev set in sorted batches."""

    checkpoint: Any
    dense: torch.nn.Module
    top_model: torch.nn.Module
    token_z: torch.Tensor
    pruner_z: torch.Tensor
    plan: Any
    batches: List[Dict[str, Any]]  # longest first; the last may be short
    full_batches: List[Dict[str, Any]]  # the timed ones
    dense_prepacked: Optional[torch.nn.Module] = None  # the stock model on compact's kernels (CPU)
    prepacked_bytes: int = 0  # what compact's packed weight copies take


def _dev_batches(config: BenchConfig, task: BenchTask, checkpoint) -> List[Dict[str, Any]]:
    tokenizer = load_tokenizer(checkpoint.path, fix="put the tokenizer files next to the weights")
    examples = _load_examples(config, task)
    encoded = encode(examples, tokenizer, task.task_length, padding="max_length")
    check_token_ids(encoded, checkpoint.config, checkpoint.path)
    encoded.pop("labels", None)
    batches = sorted_batches(encoded, config.batch_size)
    if not any(b["size"] == config.batch_size for b in batches):
        raise UserError(
            f"The dev set has {len(examples)} examples, fewer than one batch of {config.batch_size}; "
            "pass a smaller --batch-size."
        )
    return batches


def load_bench(config: BenchConfig, task: BenchTask) -> Loaded:
    """Load the checkpoint and the dev set, and put both on ``--device``."""
    checkpoint = load_checkpoint(resolve_checkpoint_path(config.checkpoint, progress=False))
    if not checkpoint.is_pruned:
        raise UserError(
            f"{checkpoint.path} has no token gates (zs.pt or l0_module.pt); give a pruned checkpoint to bench."
        )
    check_max_seq_length(task.task_length, checkpoint.config, f"the checkpoint {checkpoint.path}", None)
    batches = _dev_batches(config, task, checkpoint)
    dense, top_model = load_models(checkpoint)
    device = resolve_device(config.device)
    dense.to(device)
    top_model.to(device)
    token_z, pruner_z = checkpoint.token_z.to(device), checkpoint.pruner_z.to(device)
    plan = CompactPlan.from_gates(token_z, pruner_z, top_model.prune_locations, task.task_length)
    for batch in batches:
        for part in ("full", "trimmed"):
            batch[part] = {k: v.to(device) for k, v in batch[part].items()}
    full_batches = [b for b in batches if b["size"] == config.batch_size]
    dense_prepacked, packed_bytes = None, 0
    if device.type == "cpu" and config.runtime == "torch" and prepacked.enabled():
        packed_bytes = prepacked.prepack(top_model)
        dense_prepacked = prepacked.with_prepacked_linears(load_models(checkpoint, need_top=False)[0])
    return Loaded(checkpoint, dense, top_model, token_z, pruner_z, plan, batches, full_batches,
                  dense_prepacked, packed_bytes)




def check_correctness(loaded: Loaded, onnx_compact: Optional[Callable[[Dict[str, Any]], Any]],
                      onnx_int8: Optional[Callable[[Dict[str, Any]], Any]] = None) -> Correctness:
    """Compact against faithful (predictions) and the unpadded reference (logits), on every batch;
    with ``onnx_compact``, the exported graph against both as well; with ``onnx_int8``, the int8
    graph's predictions against compact's."""
    model, plan = loaded.top_model, loaded.plan
    result = Correctness([], 0.0, [], [], 0.0)
    with torch.no_grad():
        for batch in loaded.batches:
            t = batch["trimmed"]
            inputs = (t["input_ids"], t["attention_mask"], t.get("token_type_ids"))
            fast = compact_forward(model, plan, *inputs)
            require_finite_logits(fast.logits, loaded.checkpoint.path)
            faithful = model(*inputs, mode="faithful", token_z=loaded.token_z, pruner_z=loaded.pruner_z).logits
            reference = unpadded_reference_logits(model, plan, *inputs)
            result.agree.extend(prediction_agreement(fast.logits, faithful))
            result.max_diff = max(result.max_diff, float((fast.logits - reference).abs().max()))
            result.kept.append(fast.kept_lengths.cpu())
            if onnx_compact is not None:
                onnx_logits = torch.from_numpy(onnx_compact(batch))
                result.onnx_agree.extend(prediction_agreement(onnx_logits, faithful))
                result.onnx_diff = max(result.onnx_diff, float((onnx_logits - fast.logits).abs().max()))
            if onnx_int8 is not None:
                result.int8_agree.extend(prediction_agreement(torch.from_numpy(onnx_int8(batch)), fast.logits))
    return result






def time_per_batch(opts: BenchConfig, functions,
                   full_batches) -> Tuple[Dict[str, List[float]], Dict[str, float]]:
    """Seconds per batch of every pass, and the median over passes in milliseconds, per method."""
    logger.info("timing %d full batches of %d, %d passes", len(full_batches), opts.batch_size, opts.passes)
    per_pass = time_methods(functions, full_batches, opts.passes, opts.warmup_passes, opts.device)
    return per_pass, {name: 1000.0 * statistics.median(values) for name, values in per_pass.items()}




def result_record(opts: BenchConfig, task, threads: int, loaded: Loaded, correctness: Correctness,
                  macs, per_pass, ms, memory) -> Dict[str, Any]:
    """``bench.json`` for the torch runtime (the onnxruntime run adds to it)."""
    import transformers

    batches, batch_size = loaded.batches, opts.batch_size
    every_compact = total_macs(macs["compact"], batches, batch_size, False)
    return {
        "task": task.name,
        "batch_size": batch_size,
        "device": opts.device,
        "threads": threads,
        "compact": {"ms_per_batch": ms["compact"]},
        "baselines": baseline_records(ms, macs, batches, batch_size),
        "flops_reduction": total_macs(macs["dense_padded"], batches, batch_size, False) / every_compact,
        "flops_reduction_unpadded": total_macs(macs["unpadded"], batches, batch_size, False) / every_compact,
        "agreement_with_faithful": sum(correctness.agree) / len(correctness.agree),
        "max_abs_logit_diff_vs_reference_compact": correctness.max_diff,
        "n_examples": len(correctness.agree),
        "n_timed_batches": len(loaded.full_batches),
        "passes": opts.passes,
        "warmup_passes": opts.warmup_passes,
        "per_pass_ms": {name: [1000.0 * v for v in values] for name, values in per_pass.items()},
        # The fastest pass: a check on the median when other processes share the CPU.
        "min_ms_per_batch": {name: 1000.0 * min(values) for name, values in per_pass.items()},
        "mean_tokens_per_example": float(
            torch.cat([b["trimmed"]["attention_mask"].sum(dim=1).cpu() for b in batches]).double().mean()
        ),
        "task_length": task.task_length,
        "peak_memory_mb": memory[0],
        "peak_memory_measure": memory[1],
        "compact_linear_kernels": prepacked.kernels() if loaded.prepacked_bytes else "F.linear",
        "prepacked_weight_mb": loaded.prepacked_bytes / 2**20,
        "dense_attention": getattr(loaded.dense.config, "_attn_implementation", None) or "eager",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "runtime": opts.runtime,
    }


def bench(config: BenchConfig) -> BenchResult:
    """Run ``top bench`` with ``config``: time, write ``config.output``, return the record. Torch's thread
    count (``threads``) is put back on return."""
    with determinism.global_state_restored():
        result = benchmark(config)
    atomic_write_json(config.output, result)
    return BenchResult(Path(config.output), result)


def benchmark(opts: BenchConfig) -> Dict[str, Any]:
    """The ``bench.json`` record of ``opts`` (nothing written)."""
    task = _check_config(opts)
    opts = dataclasses.replace(opts, device=resolve_device(opts.device).type)
    if opts.threads is not None:
        torch.set_num_threads(opts.threads)
    threads = torch.get_num_threads()
    loaded = load_bench(opts, task)
    functions = method_functions(loaded.dense, loaded.top_model, loaded.plan, loaded.dense_prepacked)
    runtime = opts.runtime
    onnx_dir = onnx_session = exports = None
    if runtime == "onnxruntime":
        onnx_dir = tempfile.TemporaryDirectory(prefix="top-bench-onnx-")
        functions, onnx_session, exports = onnxruntime_functions(
            loaded.top_model, loaded.token_z, loaded.pruner_z, loaded.batches, threads, Path(onnx_dir.name),
            loaded.dense, opts.quantize,
        )
    correctness = check_correctness(loaded, functions["compact"] if onnx_session is not None else None,
                                    functions.get(INT8_METHOD))
    macs = mac_counts(loaded.top_model.config, loaded.batches, correctness.kept, task.task_length)
    per_pass, ms = time_per_batch(opts, functions, loaded.full_batches)

    floor = None
    if onnx_session is not None:
        floor = weight_read_floor(loaded.top_model, ms.pop(FLOOR_METHOD))
        del functions, onnx_session
        onnx_dir.cleanup()
    memory = (None, None)
    if not opts.no_memory and runtime == "torch":
        longest = loaded.full_batches[0]  # sorted longest first
        memory = measure_peak_memory(opts.device, loaded.checkpoint, functions, longest, threads)

    result = result_record(opts, task, threads, loaded, correctness, macs, per_pass, ms, memory)
    lengths = [n for b in loaded.batches for n in b["trimmed"]["attention_mask"].sum(dim=1).tolist()]
    result.update(target_fields(loaded.checkpoint.path, loaded.plan, lengths, opts.batch_size, runtime, opts.device,
                                threads, result["baselines"][BASELINE]["speedup"]))
    if runtime == "onnxruntime":
        result.update(onnx_record(correctness, exports, floor))
        if opts.quantize:
            result["int8"] = int8_record(result, ms, sum(correctness.int8_agree) / len(correctness.int8_agree))
    return result


@dataclasses.dataclass(frozen=True)
class BenchResult:
    """Where ``bench.json`` went, and what it holds."""

    path: Path
    record: Dict[str, Any]

    @property
    def summary(self) -> str:
        result = self.record
        baselines = "; ".join(
            "vs {name} {sp:.2f}x (FLOPs limit {fr:.2f}x)".format(name=name, sp=b["speedup"], fr=b["flops_ratio"])
            for name, b in result["baselines"].items()
        )
        return (
            "{task} batch {bs} on {dev} ({thr} threads, {rt}): compact {c:.1f} ms; {baselines}; "
            "agreement with faithful {ag:.4f}".format(
                task=result["task"], bs=result["batch_size"], dev=result["device"], thr=result["threads"],
                rt=result["runtime"], c=result["compact"]["ms_per_batch"], baselines=baselines,
                ag=result["agreement_with_faithful"],
            )
            + self.target_text
        )

    @property
    def target_text(self) -> str:
        """For a checkpoint trained to a target speedup: the target beside the measured and predicted figures."""
        result = self.record
        if "target_speedup" not in result:
            return ""
        text = "; target {t:g}x: measured {m:.2f}x over {b} ({r:.0%} of it), predicted {p:.2f}x".format(
            t=result["target_speedup"], m=result["measured_speedup"], b=result["speedup_baseline"],
            r=result["measured_over_target"], p=result["predicted_speedup"])
        if result["target_conditions_differ"]:
            text += " (calibrated under other conditions: " + "; ".join(result["target_conditions_differ"]) + ")"
        return text
