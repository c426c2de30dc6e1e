"""``top.evaluate(config)``: a checkpoint in the published layout, scored on a dev set in one mode.

Writes ``OUT/<task>.json`` (metrics, sparsities, FLOPs reductions, kept tokens per layer; each
field is explained in ``docs/RESULTS.md``) and ``OUT/<task>.predictions.jsonl`` (one line per
example, in file order). The checkpoint is read first, then the data.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from top.data import batching, sources
from top.data.batching import check_max_seq_length
from top.data.loading import TaskData
from top.errors import UserError
from top.evaluation import scoring
from top.evaluation.config import EvalConfig
from top.evaluation.dev import dev_record
from top.method import flops
from top.method.checkpoint import load_checkpoint
from top.method.compact import CompactPlan, compact_forward, unsupported_reason
from top.method.defaults import RUN_MODES
from top.method.modeling import ToPClassifier
from top.runtime.devices import resolve_device
from top.storage.hub import resolve_checkpoint_path
from top.storage.io import atomic_write_json, atomic_write_text, finite_or_none, json_text
from top.storage.model_files import load_tokenizer

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class LoadedModel:
    """A checkpoint made ready to run: the model, its deterministic gates and its tokenizer."""

    model: Any  # ToPClassifier
    tokenizer: Any
    token_z: Optional[torch.Tensor]
    pruner_z: Optional[torch.Tensor]
    path: Path

    @property
    def is_pruned(self) -> bool:
        return self.token_z is not None


@dataclasses.dataclass(frozen=True)
class EvalResult:
    """What ``top.evaluate`` wrote, and the record it wrote there."""

    path: Path  # OUT/<task>.json
    predictions_path: Path
    record: Dict[str, Any]  # <task>.json's contents

    @property
    def summary(self) -> str:
        return summary_line(self.record)


def load_model(checkpoint_dir, device: torch.device, tokenizer_name: Optional[str] = None) -> LoadedModel:
    """Read a published-layout checkpoint (or a plain fine-tuned HF model) onto ``device``."""
    checkpoint = load_checkpoint(checkpoint_dir)
    model = ToPClassifier.from_checkpoint(checkpoint)
    model.to(device).eval()
    tokenizer = load_tokenizer(tokenizer_name or checkpoint.path,
                               fix="put the tokenizer files next to the weights or pass --tokenizer NAME_OR_DIR")
    token_z = checkpoint.token_z.to(device) if checkpoint.token_z is not None else None
    pruner_z = checkpoint.pruner_z.to(device) if checkpoint.pruner_z is not None else None
    return LoadedModel(model, tokenizer, token_z, pruner_z, Path(checkpoint.path))


def check_labels(loaded: LoadedModel, eval_data: TaskData) -> None:
    num_labels = loaded.model.config.num_labels
    if num_labels != eval_data.num_labels:
        raise UserError(
            f"The checkpoint {loaded.path} predicts {num_labels} label(s) but {eval_data.name} "
            f"({eval_data.source}) has {eval_data.num_labels}; evaluate it on the task it was trained for."
        )


def evaluate(config: EvalConfig) -> EvalResult:
    """Run ``top eval`` with ``config``: score, write ``<task>.json`` and the predictions, return both."""
    device = resolve_device(config.device)
    path = resolve_checkpoint_path(config.checkpoint, progress=not config.no_progress)
    loaded = load_model(path, device, config.tokenizer)
    check_max_seq_length(config.max_seq_length, loaded.model.config, f"the checkpoint {loaded.path}")
    eval_data = sources.load(config, config.max_seq_length, splits=("dev",))
    record = score(loaded, eval_data, config.mode, config.max_seq_length, config.batch_size,
                   progress=not config.no_progress)
    return write_outputs(record, config.output_dir)


def score(
    loaded: LoadedModel,
    eval_data: TaskData,
    mode: str = "faithful",
    max_seq_length: int = 256,
    batch_size: int = 32,
    progress: bool = True,
) -> Dict[str, Any]:
    """Run the dev set; return the ``<task>.json`` record plus ``predictions`` (list of dicts)."""
    if mode not in RUN_MODES:
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
    macs, kept = [b[2] for b in scored.per_batch], [b[3] for b in scored.per_batch]
    exact_macs, dense_macs, task_macs = _sums(macs)
    logits, labels = scored.logits, encoded.labels
    regression = model.config.num_labels == 1
    predictions = logits[:, 0] if regression else logits.argmax(dim=-1)
    core = dev_record(eval_data, scored, [b[:2] for b in scored.per_batch], metrics_key="metrics")
    record = {
        "task": eval_data.name,
        "mode": mode,
        "n_examples": len(eval_data.dev),
        "metrics": core["metrics"],
        "expected_sparsity": core["expected_sparsity"],
        "expected_sequence_sparsity": core["expected_sequence_sparsity"],
        "flops_reduction": core["flops_reduction"],
        "flops_reduction_unpadded": core["flops_reduction_same_inputs"],
        # The same number by the name top train's log.jsonl gives it.
        "flops_reduction_same_inputs": core["flops_reduction_same_inputs"],
        "remaining_token_ratio": remaining_token_ratio(model, token_z, pruner_z),
        # From the tokens that really survived each layer (not the gates' expectation).
        "exact_flops_reduction": task_macs / exact_macs,
        "exact_flops_reduction_unpadded": dense_macs / exact_macs,
        "mean_kept_tokens_per_layer": [round(float(v), 4) for v in torch.cat(kept).float().mean(0)],
        "pruned": loaded.is_pruned,
        "custom_data": eval_data.is_custom,
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


def write_outputs(record: Dict[str, Any], output_dir) -> EvalResult:
    output_dir = Path(output_dir)
    record = dict(record)
    predictions = record.pop("predictions")
    # `score` refuses non-finite logits; a NaN elsewhere (a metric) is written as null.
    lines = "".join(json_text(finite_or_none(p)) + "\n" for p in predictions)
    predictions_path = output_dir / f"{record['task']}.predictions.jsonl"
    atomic_write_text(predictions_path, lines)
    path = output_dir / f"{record['task']}.json"
    atomic_write_json(path, record)
    return EvalResult(path, predictions_path, record)


def summary_line(record: Dict[str, Any]) -> str:
    """One line for a person: the metrics and the FLOPs reduction that means something for this run.

    A dense checkpoint prunes nothing, so it claims no reduction. On the paper's tasks the headline is
    the paper's figure (against the dense model padded to the task's length, ``flops_reduction``); on
    a user's own data, which has no such length, it is the reduction at the same inputs
    (``flops_reduction_unpadded``).
    """
    metrics = ", ".join(f"{k} {'undefined' if v is None else f'{100 * v:.2f}'}" for k, v in record["metrics"].items())
    if not record.get("pruned", True):
        flops_text = "no pruning (FLOPs reduction 1.00x)"
    elif record.get("custom_data"):
        flops_text = f"FLOPs reduction {record['flops_reduction_unpadded']:.2f}x at the same inputs"
    else:
        flops_text = (f"FLOPs reduction {record['flops_reduction']:.2f}x against dense at the task length "
                      f"(unpadded {record['flops_reduction_unpadded']:.2f}x)")
    return f"{record['task']} ({record['mode']}, {record['n_examples']} examples): {metrics} | {flops_text}"
