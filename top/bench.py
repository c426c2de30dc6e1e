"""``top bench``: time compact inference against two dense baselines and write ``bench.json``.

Three methods run in one process, on the same dev examples, the same weights and the same
thread count:

``dense_padded``   the stock HF model (its default attention kernel), inputs padded to the task
                   length of the paper's table;
``dense_dynamic``  the stock HF model, batches sorted by length, each padded to its longest;
``compact``        ToP with the pruned tokens removed (:func:`top.compact.compact_forward`), on
                   the same sorted batches.

Every method is warmed up, then timed over ``--passes`` passes of the dev set (the methods take
turns within a pass, so drift in the machine's load hits all three alike). A pass's figure is
its mean time per full batch; ``ms_per_batch`` is the median over passes. FLOPs ratios count
MACs exactly on the same full batches: dense at the task length, dense at each batch's padded
length, and compact at the real survivors of every layer. Peak memory of one forward pass over
the longest batch is measured per method (the rise of the peak resident set in a fresh
subprocess on the CPU, ``torch.cuda.max_memory_allocated`` on a GPU).

Before timing, every batch is checked: ``agreement_with_faithful`` compares compact's
predictions with faithful mode's, and ``max_abs_logit_diff_vs_reference_compact`` compares
compact's logits with :func:`unpadded_reference_logits`, a second statement of compact
inference that shares none of ``compact_forward``'s machinery (see there).

``--runtime onnxruntime`` times the same three methods in onnxruntime instead (CPU only):
``compact`` is the pruned graph of ``top export``, ``dense_padded`` and ``dense_dynamic`` the
same weights exported dense (``top export --dense``), fed padded and trimmed batches; all three
sessions get the same thread count. Both graphs pass the export's self-check first. Beside the
speedups it reports the weight-read floor of one forward pass (see :func:`weight_read_floor`).
Peak memory is not measured in this mode.
"""

import argparse
import dataclasses
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from top.argtypes import batch_size_count, int_in_range, positive_int
from top.errors import UserError

logger = logging.getLogger(__name__)

METHODS = ("dense_padded", "dense_dynamic", "compact")
RUNTIMES = ("torch", "onnxruntime")
FLOOR_METHOD = "dense_two_tokens"  # timed only with --runtime onnxruntime
# Threads torch can start (100,000 exhaust memory) and passes that end within a day.
MAX_THREADS = 1024
MAX_PASSES = 10_000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", required=True, help="GLUE task name (sets the task length and the dev file)")
    parser.add_argument("--checkpoint", required=True, help="pruned checkpoint directory (published layout)")
    parser.add_argument("--data-dir", help="GLUE data directory (e.g. glue_data)")
    parser.add_argument("--validation-file", help="a csv/tsv/json file to use instead of the GLUE dev set")
    parser.add_argument("--batch-size", type=batch_size_count, default=32)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--threads", type=int_in_range(1, MAX_THREADS), default=None,
                        help=f"torch threads, 1..{MAX_THREADS} (default: torch's choice)")
    parser.add_argument("--passes", type=int_in_range(5, MAX_PASSES), default=5,
                        help=f"timed passes over the dev set, 5..{MAX_PASSES}")
    parser.add_argument("--warmup-passes", type=int_in_range(0, MAX_PASSES), default=1, help="untimed passes first")
    parser.add_argument("--max-examples", type=positive_int, default=None, help="use only the first N dev examples")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    parser.add_argument("--output", default="bench.json", help="where to write the results")
    parser.add_argument("--runtime", default="torch", choices=RUNTIMES,
                        help="torch (default) or onnxruntime: time the exported pruned graph against "
                        "the same weights exported dense")


# ----------------------------------------------------------------------------------------------
# Loading


def _check_args(args: argparse.Namespace) -> None:
    """What argparse cannot see: the machine, the installed runtimes and which dev set was named."""
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but torch sees no GPU; pass --device cpu.")
    runtime = getattr(args, "runtime", "torch")
    if runtime == "onnxruntime" and args.device != "cpu":
        raise UserError("--runtime onnxruntime times the CPU execution provider only; pass --device cpu.")
    if runtime == "onnxruntime":
        from top.export import onnxruntime_available

        if not onnxruntime_available():
            raise UserError("--runtime onnxruntime needs onnx and onnxruntime; pip install 'top[onnx]'.")
    if not args.validation_file and not args.data_dir:
        raise UserError("Neither --data-dir nor --validation-file was given; pass one to say which dev set to time.")


def load_models(checkpoint, need_dense: bool = True, need_top: bool = True):
    """``(dense, top_model)`` from one ``PrunedCheckpoint``, on the CPU, in eval mode.

    ``dense`` is the stock HF classifier with the library's default attention; ``top_model`` the
    ToP wrapper (eager attention, as ranking needs the probabilities). Either may be None.
    """
    from top.modeling import ToPForSequenceClassification, stock_model_from_checkpoint

    dense = stock_model_from_checkpoint(checkpoint) if need_dense else None
    top_model = ToPForSequenceClassification.from_checkpoint(checkpoint) if need_top else None
    return dense, top_model


def _load_examples(args: argparse.Namespace, task):
    """The dev examples to time: ``--validation-file`` if given, else ``task``'s GLUE dev set."""
    from top.data import load_task_data

    if args.validation_file:  # only the examples: the task length stays ``task``'s
        data = load_task_data(validation_file=args.validation_file, max_seq_length=task.task_length, splits=("dev",))
    else:
        data = load_task_data(task, args.data_dir, max_seq_length=task.task_length, splits=("dev",))
    examples = data.dev
    if args.max_examples is not None:
        examples = examples[: args.max_examples]
    return examples


def sorted_batches(encoded: Dict[str, torch.Tensor], batch_size: int) -> List[Dict[str, torch.Tensor]]:
    """Batches of examples sorted by length (longest first), each trimmed to its longest member.

    Every batch keeps ``full`` (the task-length padded tensors) for the padded baseline.
    """
    lengths = encoded["attention_mask"].sum(dim=1)
    order = torch.sort(lengths, descending=True, stable=True).indices
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in encoded]
    out = []
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        full = {k: encoded[k][index] for k in keys}
        width = int(full["attention_mask"].sum(dim=1).max())
        out.append({"full": full, "trimmed": {k: v[:, :width] for k, v in full.items()}, "size": len(index)})
    return out


# ----------------------------------------------------------------------------------------------
# The three methods


def method_functions(dense, top_model, plan) -> Dict[str, Callable[[Dict[str, Any]], torch.Tensor]]:
    from top.compact import compact_forward

    def dense_padded(batch):
        return dense(**batch["full"]).logits

    def dense_dynamic(batch):
        return dense(**batch["trimmed"]).logits

    def compact(batch):
        t = batch["trimmed"]
        return compact_forward(top_model, plan, t["input_ids"], t["attention_mask"], t.get("token_type_ids")).logits

    functions = {"dense_padded": dense_padded, "dense_dynamic": dense_dynamic, "compact": compact}
    return {name: functions[name] for name in METHODS if (dense is not None or name == "compact")
            and (top_model is not None or name != "compact")}


def unpadded_reference_logits(top_model, plan, input_ids, attention_mask, token_type_ids=None) -> torch.Tensor:
    """Compact inference stated plainly, for the logit check in ``bench.json``.

    The examples of each length run together through the stock Hugging Face layers, with no
    padding and no attention mask. A prune step keeps the tokens :func:`top.pruning.prune_step`
    picks from the layer's own attention probabilities (averaged over heads and rows), by boolean
    indexing; equal lengths keep equal counts, so each group stays rectangular. Nothing is packed,
    re-padded or planned, unlike :func:`top.compact.compact_forward`.
    """
    from top.pruning import prune_step

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


def onnxruntime_functions(top_model, token_z, pruner_z, batches, threads: int, directory: Path):
    """The three methods in onnxruntime: ``(functions, pruned session, export reports)``.

    The pruned graph and the same weights exported dense are written to ``directory`` by
    :func:`top.export.export_model`, which checks each against the PyTorch compact path first.
    Every batch gets numpy copies of its inputs, so the timed calls convert nothing.
    """
    from top.export import export_model, onnxruntime_session, sample_inputs

    reports = {
        "compact": export_model(top_model, token_z, pruner_z, directory / "pruned.onnx"),
        "dense": export_model(top_model, None, None, directory / "dense.onnx", dense=True),
    }
    pruned = onnxruntime_session(directory / "pruned.onnx", threads)
    dense = onnxruntime_session(directory / "dense.onnx", threads)
    names = [i.name for i in pruned.get_inputs()]
    for batch in batches:
        for part in ("full", "trimmed"):
            batch[part + "_numpy"] = {k: batch[part][k].cpu().numpy() for k in names}

    def dense_padded(batch):
        return dense.run(["logits"], batch["full_numpy"])[0]

    def dense_dynamic(batch):
        return dense.run(["logits"], batch["trimmed_numpy"])[0]

    def compact(batch):
        return pruned.run(["logits"], batch["trimmed_numpy"])[0]

    two = sample_inputs(top_model.config, [2])
    two_tokens = {k: two[k].numpy() for k in names}

    def dense_two_tokens(batch):
        # The weight-read floor of batch 1, timed in turn with the others (see weight_read_floor).
        return dense.run(["logits"], two_tokens)[0]

    functions = {"dense_padded": dense_padded, "dense_dynamic": dense_dynamic, "compact": compact,
                 FLOOR_METHOD: dense_two_tokens}
    return functions, pruned, reports


def weight_read_floor(top_model, two_token_ms: float) -> Dict[str, Any]:
    """What bounds one batch-1 forward pass from below: every weight matrix is read once.

    Two measures. ``bandwidth_floor_ms``: the bytes of every weight the layers and the head read
    whole (the embedding tables are only indexed, so they are left out) over the read bandwidth
    of this machine, measured by summing a float32 buffer of the same size (numpy, one thread).
    ``two_token_ms``: the dense graph on a two-token input ([CLS] [SEP]), timed in turn with the
    other methods: the same weights streamed through the same kernels with next to no arithmetic,
    onnxruntime's cost per operator included.
    """
    import numpy as np

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
        "method": "weight bytes / one-thread numpy read bandwidth; dense ONNX graph on 2 tokens at batch 1, "
                  "timed in turn with the other methods, same threads",
    }


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_methods(functions, batches, passes: int, warmup_passes: int, device: str) -> Dict[str, List[float]]:
    """Per method, each pass's mean seconds per batch, over ``batches`` (all full)."""
    per_pass = {name: [] for name in functions}
    with torch.no_grad():
        for _ in range(warmup_passes):
            for fn in functions.values():
                for batch in batches:
                    fn(batch)
        for _ in range(passes):
            for name, fn in functions.items():
                total = 0.0
                for batch in batches:
                    _sync(device)
                    start = time.perf_counter()
                    fn(batch)
                    _sync(device)
                    total += time.perf_counter() - start
                per_pass[name].append(total / len(batches))
    return per_pass


# ----------------------------------------------------------------------------------------------
# Peak memory


def _read_status_kb(field: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def memory_probe_main(argv: Optional[List[str]] = None) -> None:
    """Child process: load one method, run it once on the saved batch, print the peak rise in MB."""
    from top.checkpoint import load_checkpoint
    from top.compact import CompactPlan
    from top.safeload import read_tree

    checkpoint_path, method, batch_path, threads = (argv or sys.argv[1:])[:4]
    torch.set_num_threads(int(threads))
    checkpoint = load_checkpoint(checkpoint_path)
    dense, top_model = load_models(checkpoint, need_dense=method != "compact", need_top=method == "compact")
    batch = read_tree(batch_path, what="benchmark batch")
    plan = CompactPlan.from_gates(checkpoint.token_z, checkpoint.pruner_z, checkpoint.prune_locations,
                                  batch["full"]["input_ids"].shape[1])
    functions = method_functions(dense, top_model, plan)
    before = _read_status_kb("VmRSS")
    how = "vmhwm" if before is not None and _reset_peak_rss() else "ru_maxrss"
    if how == "ru_maxrss":  # the lifetime peak, which loading may already have set
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with torch.no_grad():
        functions[method](batch)
    after = _read_status_kb("VmHWM") if how == "vmhwm" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"peak_mb": max(0, after - before) / 1024.0, "how": how}))


def measure_peak_memory(args, checkpoint, functions, batch, threads: int) -> Tuple[Dict[str, Optional[float]], str]:
    """Peak memory (MB) one forward pass on ``batch`` adds, per method."""
    from top.safeload import write_tree

    if args.device == "cuda":
        peaks = {}
        with torch.no_grad():
            for name, fn in functions.items():
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
                fn(batch)
                torch.cuda.synchronize()
                peaks[name] = (torch.cuda.max_memory_allocated() - base) / 2**20
        return peaks, "torch.cuda.max_memory_allocated rise during one batch"
    root = str(Path(__file__).resolve().parent.parent)
    code = f"import sys; sys.path.insert(0, {root!r}); from top.bench import memory_probe_main; memory_probe_main()"
    peaks, how = {}, "vmhwm"
    with tempfile.TemporaryDirectory() as tmp:
        batch_path = os.path.join(tmp, "batch.safetensors")
        write_tree(batch_path, batch)
        for name in functions:
            result = subprocess.run(
                [sys.executable, "-c", code, str(checkpoint.path), name, batch_path, str(threads)],
                capture_output=True, text=True,
            )
            try:
                report = json.loads(result.stdout.strip().splitlines()[-1])
                peaks[name], how = report["peak_mb"], report["how"]
            except (IndexError, ValueError, KeyError):
                logger.warning("memory probe for %s failed: %s", name, result.stderr.strip()[-300:])
                peaks[name] = None
    described = {
        "vmhwm": "peak resident set rise (VmHWM after clear_refs) during one batch, fresh process",
        "ru_maxrss": "ru_maxrss rise during one batch, fresh process (lifetime peak; may read low)",
    }[how]
    return peaks, described


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


def _dev_batches(args: argparse.Namespace, task, checkpoint) -> List[Dict[str, Any]]:
    from top.data import check_token_ids, encode
    from top.evaluate import load_tokenizer

    tokenizer = load_tokenizer(checkpoint.path)
    examples = _load_examples(args, task)
    encoded = encode(examples, tokenizer, task.task_length, padding="max_length")
    check_token_ids(encoded, checkpoint.config, checkpoint.path)
    encoded.pop("labels", None)
    batches = sorted_batches(encoded, args.batch_size)
    if not any(b["size"] == args.batch_size for b in batches):
        raise UserError(
            f"The dev set has {len(examples)} examples, fewer than one batch of {args.batch_size}; "
            "pass a smaller --batch-size."
        )
    return batches


def load_bench(args: argparse.Namespace, task) -> Loaded:
    """Load the checkpoint and the dev set, and put both on ``--device``."""
    from top.checkpoint import load_checkpoint
    from top.compact import CompactPlan
    from top.data import check_max_seq_length

    checkpoint = load_checkpoint(args.checkpoint)
    if not checkpoint.is_pruned:
        raise UserError(
            f"{checkpoint.path} has no token gates (zs.pt or l0_module.pt); give a pruned checkpoint to bench."
        )
    check_max_seq_length(task.task_length, checkpoint.config, f"the checkpoint {checkpoint.path}", None)
    batches = _dev_batches(args, task, checkpoint)
    dense, top_model = load_models(checkpoint)
    device = torch.device(args.device)
    dense.to(device)
    top_model.to(device)
    token_z, pruner_z = checkpoint.token_z.to(device), checkpoint.pruner_z.to(device)
    plan = CompactPlan.from_gates(token_z, pruner_z, top_model.prune_locations, task.task_length)
    for batch in batches:
        for part in ("full", "trimmed"):
            batch[part] = {k: v.to(device) for k, v in batch[part].items()}
    full_batches = [b for b in batches if b["size"] == args.batch_size]
    return Loaded(checkpoint, dense, top_model, token_z, pruner_z, plan, batches, full_batches)


@dataclasses.dataclass
class Correctness:
    agree: List[bool]  # compact's prediction equals faithful's, per example
    max_diff: float  # largest |compact - unpadded reference| logit
    kept: List[torch.Tensor]  # per batch, the survivors of every layer (for the MAC counts)
    onnx_agree: List[bool]
    onnx_diff: float  # largest |onnx compact - torch compact| logit


def check_correctness(loaded: Loaded, onnx_compact: Optional[Callable[[Dict[str, Any]], Any]]) -> Correctness:
    """Compact against faithful (predictions) and the unpadded reference (logits), on every batch;
    with ``onnx_compact``, the exported graph against both as well."""
    from top.compact import compact_forward, prediction_agreement
    from top.scoring import require_finite_logits

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
    return result


def mac_counts(config, batches, kept: List[torch.Tensor], task_length: int) -> Dict[str, List[torch.Tensor]]:
    """Exact MACs per example and batch: compact at its survivors, dense at the task length
    (``dense_padded``), at each batch's padded length (``dense_dynamic``) and at each example's
    own length (``unpadded``)."""
    from top.flops import model_macs

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


def time_per_batch(args: argparse.Namespace, functions,
                   full_batches) -> Tuple[Dict[str, List[float]], Dict[str, float]]:
    """Seconds per batch of every pass, and the median over passes in milliseconds, per method."""
    logger.info("timing %d full batches of %d, %d passes", len(full_batches), args.batch_size, args.passes)
    per_pass = time_methods(functions, full_batches, args.passes, args.warmup_passes, args.device)
    return per_pass, {name: 1000.0 * statistics.median(values) for name, values in per_pass.items()}


def baseline_records(ms: Dict[str, float], macs, batches, batch_size: int) -> Dict[str, Dict[str, float]]:
    compact_total = total_macs(macs["compact"], batches, batch_size)
    baselines = {}
    for name in ("dense_padded", "dense_dynamic"):
        baselines[name] = {
            "ms_per_batch": ms[name],
            "speedup": ms[name] / ms["compact"],
            "flops_ratio": total_macs(macs[name], batches, batch_size) / compact_total,
        }
    for entry in baselines.values():
        entry["speedup_over_flops_ratio"] = entry["speedup"] / entry["flops_ratio"]
    return baselines


def result_record(args: argparse.Namespace, task, threads: int, loaded: Loaded, correctness: Correctness,
                  macs, per_pass, ms, memory) -> Dict[str, Any]:
    """``bench.json`` for the torch runtime (the onnxruntime run adds to it)."""
    import transformers

    batches, batch_size = loaded.batches, args.batch_size
    every_compact = total_macs(macs["compact"], batches, batch_size, False)
    return {
        "task": task.name,
        "batch_size": batch_size,
        "device": args.device,
        "threads": threads,
        "compact": {"ms_per_batch": ms["compact"]},
        "baselines": baseline_records(ms, macs, batches, batch_size),
        "flops_reduction": total_macs(macs["dense_padded"], batches, batch_size, False) / every_compact,
        "flops_reduction_unpadded": total_macs(macs["unpadded"], batches, batch_size, False) / every_compact,
        "agreement_with_faithful": sum(correctness.agree) / len(correctness.agree),
        "max_abs_logit_diff_vs_reference_compact": correctness.max_diff,
        "n_examples": len(correctness.agree),
        "n_timed_batches": len(loaded.full_batches),
        "passes": args.passes,
        "warmup_passes": args.warmup_passes,
        "per_pass_ms": {name: [1000.0 * v for v in values] for name, values in per_pass.items()},
        # The fastest pass: a check on the median when other processes share the CPU.
        "min_ms_per_batch": {name: 1000.0 * min(values) for name, values in per_pass.items()},
        "mean_tokens_per_example": float(
            torch.cat([b["trimmed"]["attention_mask"].sum(dim=1).cpu() for b in batches]).double().mean()
        ),
        "task_length": task.task_length,
        "peak_memory_mb": memory[0],
        "peak_memory_measure": memory[1],
        "dense_attention": getattr(loaded.dense.config, "_attn_implementation", None) or "eager",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "runtime": getattr(args, "runtime", "torch"),
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
        "dense_graph": "the same weights exported by top export --dense (no pruning, padding computed)",
        "dense_attention": "onnx (MatMul/Softmax, as in the pruned graph)",
    }


def benchmark(args: argparse.Namespace) -> Dict[str, Any]:
    from top.tasks import get_task

    _check_args(args)
    task = get_task(args.task)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    loaded = load_bench(args, task)
    functions = method_functions(loaded.dense, loaded.top_model, loaded.plan)
    runtime = getattr(args, "runtime", "torch")
    onnx_dir = onnx_session = exports = None
    if runtime == "onnxruntime":
        onnx_dir = tempfile.TemporaryDirectory(prefix="top-bench-onnx-")
        functions, onnx_session, exports = onnxruntime_functions(
            loaded.top_model, loaded.token_z, loaded.pruner_z, loaded.batches, threads, Path(onnx_dir.name)
        )
    correctness = check_correctness(loaded, functions["compact"] if onnx_session is not None else None)
    macs = mac_counts(loaded.top_model.config, loaded.batches, correctness.kept, task.task_length)
    per_pass, ms = time_per_batch(args, functions, loaded.full_batches)

    floor = None
    if onnx_session is not None:
        floor = weight_read_floor(loaded.top_model, ms.pop(FLOOR_METHOD))
        del functions, onnx_session
        onnx_dir.cleanup()
    memory = (None, None)
    if not args.no_memory and runtime == "torch":
        longest = loaded.full_batches[0]  # sorted longest first
        memory = measure_peak_memory(args, loaded.checkpoint, functions, longest, threads)

    result = result_record(args, task, threads, loaded, correctness, macs, per_pass, ms, memory)
    if runtime == "onnxruntime":
        result.update(onnx_record(correctness, exports, floor))
    return result


def run(args: argparse.Namespace) -> int:
    from top.io import atomic_write_json

    result = benchmark(args)
    atomic_write_json(args.output, result)
    base = result["baselines"]
    print(
        "{task} batch {bs} on {dev} ({thr} threads, {rt}): compact {c:.1f} ms; "
        "vs dense_padded {sp:.2f}x (FLOPs limit {fp:.2f}x); vs dense_dynamic {sd:.2f}x (FLOPs limit {fd:.2f}x); "
        "agreement with faithful {ag:.4f}".format(
            task=result["task"], bs=result["batch_size"], dev=result["device"], thr=result["threads"],
            rt=result["runtime"],
            c=result["compact"]["ms_per_batch"], sp=base["dense_padded"]["speedup"],
            fp=base["dense_padded"]["flops_ratio"], sd=base["dense_dynamic"]["speedup"],
            fd=base["dense_dynamic"]["flops_ratio"], ag=result["agreement_with_faithful"],
        )
    )
    return 0
