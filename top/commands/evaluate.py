"""``top eval``: a checkpoint in the published layout, scored on a dev set in one mode.

Writes ``OUT/<task>.json`` (metrics, sparsities, FLOPs reductions, kept tokens per layer) and
``OUT/<task>.predictions.jsonl`` (one line per example, in file order).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from top.commands import options
from top.commands.argtypes import batch_size_count, int_at_least
from top.data import batching
from top.data.batching import check_max_seq_length
from top.data.loading import TaskData, load_task_data
from top.data.tasks import TASKS
from top.data.tokenizer_failures import is_tokenizer_failure, rust_panics_quiet
from top.errors import UserError
from top.evaluation import scoring
from top.evaluation.metrics import compute_metrics
from top.method import flops
from top.method.checkpoint import load_checkpoint
from top.method.compact import CompactPlan, compact_forward, unsupported_reason
from top.method.modeling import ToPForSequenceClassification
from top.storage.io import atomic_write_json, atomic_write_text, finite_or_none, json_text

logger = logging.getLogger(__name__)

EVAL_MODES = ("faithful", "compact")


@dataclasses.dataclass
class LoadedModel:
    """A checkpoint made ready to run: the model, its deterministic gates and its tokenizer."""

    model: Any  # ToPForSequenceClassification
    tokenizer: Any
    token_z: Optional[torch.Tensor]
    pruner_z: Optional[torch.Tensor]
    path: Path


def load_model(checkpoint_dir, device: torch.device, tokenizer_name: Optional[str] = None) -> LoadedModel:
    """Read a published-layout checkpoint (or a plain fine-tuned HF model) onto ``device``."""
    checkpoint = load_checkpoint(checkpoint_dir)
    model = ToPForSequenceClassification.from_checkpoint(checkpoint)
    model.to(device).eval()
    tokenizer = load_tokenizer(checkpoint.path, tokenizer_name)
    token_z = checkpoint.token_z.to(device) if checkpoint.token_z is not None else None
    pruner_z = checkpoint.pruner_z.to(device) if checkpoint.pruner_z is not None else None
    return LoadedModel(model, tokenizer, token_z, pruner_z, Path(checkpoint.path))


def load_tokenizer(path, tokenizer_name: Optional[str] = None):
    from transformers import AutoTokenizer

    source = tokenizer_name or str(path)
    try:
        with rust_panics_quiet():
            return AutoTokenizer.from_pretrained(source)
    except BaseException as exc:  # noqa: BLE001 - HF raises many kinds for a missing tokenizer; tokenizers panics
        if not is_tokenizer_failure(exc):
            raise
        raise UserError(
            f"No tokenizer could be loaded from {source} ({type(exc).__name__}); "
            "put the tokenizer files next to the weights or pass --tokenizer NAME_OR_DIR."
        ) from None


def check_labels(loaded: LoadedModel, eval_data: TaskData) -> None:
    num_labels = loaded.model.config.num_labels
    if num_labels != eval_data.num_labels:
        raise UserError(
            f"The checkpoint {loaded.path} predicts {num_labels} label(s) but {eval_data.name} "
            f"({eval_data.source}) has {eval_data.num_labels}; evaluate it on the task it was trained for."
        )


def evaluate(
    loaded: LoadedModel,
    eval_data: TaskData,
    mode: str = "faithful",
    max_seq_length: int = 256,
    batch_size: int = 32,
    progress: bool = True,
) -> Dict[str, Any]:
    """Run the dev set; return the ``<task>.json`` record plus ``predictions`` (list of dicts)."""
    if mode not in EVAL_MODES:
        raise UserError(f"Unknown mode {mode!r}; pass --mode faithful or --mode compact.")
    check_labels(loaded, eval_data)
    model, device = loaded.model, next(loaded.model.parameters()).device
    forward = model_forward(loaded, mode, max_seq_length)
    encoded = batching.encode_set(eval_data.dev, loaded.tokenizer, max_seq_length, what="the dev set")
    batching.check_token_ids(encoded, model.config, loaded.path)
    token_z, pruner_z = loaded.token_z, loaded.pruner_z

    started = time.perf_counter()
    scored = scoring.predict(
        lambda batch: forward(batching.model_inputs(batch)),
        encoded,
        batch_size,
        device,
        trim=False,  # padded to max_seq_length, as the original evaluates
        measure=lambda batch, out: _batch_costs(model, token_z, pruner_z, eval_data.task_length, batch, out),
        progress=f"eval {eval_data.name} ({mode})" if progress else None,
    )
    duration = time.perf_counter() - started
    scoring.require_finite_logits(scored.logits, loaded.path)
    sparsity, sequence_sparsity, macs, kept = zip(*scored.per_batch)
    exact_macs, dense_macs, task_macs = _sums(macs)
    logits, labels = scored.logits, encoded.labels
    regression = model.config.num_labels == 1
    predictions = logits[:, 0] if regression else logits.argmax(dim=-1)
    metrics = compute_metrics(eval_data.task, predictions.numpy(), labels.numpy())
    expected_sparsity = flops.mean_of_batch_means(sparsity)
    expected_sequence_sparsity = flops.mean_of_batch_means(sequence_sparsity)
    record = {
        "task": eval_data.name,
        "mode": mode,
        "n_examples": len(eval_data.dev),
        "metrics": metrics,
        "expected_sparsity": expected_sparsity,
        "expected_sequence_sparsity": expected_sequence_sparsity,
        "flops_reduction": float(flops.flops_reduction(expected_sequence_sparsity)),
        "flops_reduction_unpadded": float(flops.flops_reduction(expected_sparsity)),
        # The same number by the name top train's log.jsonl gives it.
        "flops_reduction_same_inputs": float(flops.flops_reduction(expected_sparsity)),
        "remaining_token_ratio": remaining_token_ratio(model, token_z, pruner_z),
        # From the tokens that really survived each layer (not the gates' expectation).
        "exact_flops_reduction": task_macs / exact_macs,
        "exact_flops_reduction_unpadded": dense_macs / exact_macs,
        "mean_kept_tokens_per_layer": [round(float(v), 4) for v in torch.cat(kept).float().mean(0)],
        "checkpoint": str(loaded.path),
        "data": eval_data.source,
        "max_seq_length": max_seq_length,
        "batch_size": batch_size,
        "device": str(device),
        "duration_s": round(duration, 3),
    }
    record["predictions"] = [
        {
            "index": i,
            "logits": [float(x) for x in logits[i].tolist()],
            "prediction": float(predictions[i]) if regression else int(predictions[i]),
            "label": float(labels[i]) if regression else int(labels[i]),
        }
        for i in range(len(logits))
    ]
    return record


def _batch_costs(model, token_z, pruner_z, task_length: int, batch, out):
    """One batch's expected sparsities, its MACs (as run; dense at its lengths; dense at the task's
    length) and the tokens kept at each layer."""
    config, mask = model.config, batch["attention_mask"]
    s, seq = _expected_sparsities(model, token_z, pruner_z, mask, task_length)
    lengths = mask.sum(dim=1, keepdim=True).float().expand(-1, config.num_hidden_layers)
    macs = (
        float(flops.exact_model_macs(out.kept_lengths, config).sum()),
        float(flops.model_macs(lengths, config).sum()),
        float(flops.model_macs(torch.full_like(lengths, float(task_length)), config).sum()),
    )
    return s, seq, macs, out.kept_lengths.cpu()


def _sums(rows) -> List[float]:
    """Column sums of per-batch numbers, added in batch order from 0.0."""
    totals = [0.0] * len(rows[0])
    for row in rows:
        for i, value in enumerate(row):
            totals[i] += value
    return totals


def model_forward(loaded: LoadedModel, mode: str, max_seq_length: int):
    """``inputs -> output`` with ``logits`` and ``kept_lengths``; compact mode's plan is built here, once."""
    model, token_z, pruner_z = loaded.model, loaded.token_z, loaded.pruner_z
    if mode == "faithful":
        return lambda inputs: model(**inputs, mode="faithful", token_z=token_z, pruner_z=pruner_z)

    reason = unsupported_reason(model)
    if reason is not None:
        raise UserError(f"--mode compact cannot run {loaded.path}: {reason}; evaluate it with --mode faithful.")
    plan = CompactPlan.from_gates(token_z, pruner_z, model.prune_locations, max_seq_length)
    return lambda inputs: compact_forward(model, plan, **inputs)


def _expected_sparsities(model, token_z, pruner_z, attention_mask, task_length):
    if token_z is None:  # a dense model: nothing pruned, so only the padding convention differs
        token_z = attention_mask.new_ones(0, 1, dtype=torch.float)
        pruner_z = attention_mask.new_ones(0, dtype=torch.float)
    s, seq = flops.expected_sparsities(
        token_z.float(), pruner_z.float(), model.prune_locations, model.config, attention_mask, task_length
    )
    return float(s), float(seq)


def remaining_token_ratio(model, token_z, pruner_z) -> List[float]:
    num_layers = model.config.num_hidden_layers
    if token_z is None:
        return [1.0] * num_layers
    ratios = flops.layer_keep_ratios(token_z.float().cpu(), pruner_z.float().cpu(), model.prune_locations, num_layers)
    return [round(float(r), 4) for r in ratios]


def write_outputs(record: Dict[str, Any], output_dir) -> Path:
    output_dir = Path(output_dir)
    record = dict(record)
    predictions = record.pop("predictions")
    # `evaluate` refuses non-finite logits; a NaN elsewhere (a metric) is written as null.
    lines = "".join(json_text(finite_or_none(p)) + "\n" for p in predictions)
    atomic_write_text(output_dir / f"{record['task']}.predictions.jsonl", lines)
    path = output_dir / f"{record['task']}.json"
    atomic_write_json(path, record)
    return path


def summary_line(record: Dict[str, Any]) -> str:
    metrics = ", ".join(f"{k} {'undefined' if v is None else f'{100 * v:.2f}'}" for k, v in record["metrics"].items())
    return (
        f"{record['task']} ({record['mode']}, {record['n_examples']} examples): {metrics} | "
        f"FLOPs reduction {record['flops_reduction']:.2f}x (unpadded {record['flops_reduction_unpadded']:.2f}x)"
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", help=f"GLUE task: {', '.join(TASKS)} (the seed's spellings work too)")
    parser.add_argument("--checkpoint", required=True, help="checkpoint directory in the published layout")
    parser.add_argument("--data-dir", help="GLUE_DIR in GLUE's original layout (else the `datasets` hub copy)")
    parser.add_argument("--validation-file", help="a csv/tsv/json file with sentence[, sentence2], label")
    parser.add_argument("--mode", choices=EVAL_MODES, default="faithful")
    parser.add_argument("--max-seq-length", type=int_at_least(2), default=256)
    parser.add_argument("--batch-size", type=batch_size_count, default=32)
    options.add_device_argument(parser)
    parser.add_argument("--tokenizer", help="tokenizer name or directory when the checkpoint has none")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    device = options.resolve_device(args.device)
    eval_data = load_task_data(args.task, args.data_dir, validation_file=args.validation_file,
                               max_seq_length=args.max_seq_length, splits=("dev",))
    loaded = load_model(args.checkpoint, device, args.tokenizer)
    check_max_seq_length(args.max_seq_length, loaded.model.config, f"the checkpoint {loaded.path}")
    record = evaluate(loaded, eval_data, args.mode, args.max_seq_length, args.batch_size,
                      progress=not args.no_progress)
    path = write_outputs(record, args.output_dir)
    print(summary_line(record))
    print(f"wrote {path}")
    return 0
