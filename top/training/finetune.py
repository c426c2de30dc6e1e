"""``top.finetune(config)``: fine-tune the dense teacher (the original's PreFT step) in a plain loop.

Defaults follow the original's ``run_PreFT.sh``: learning rate 2e-5, batch 32, ``max_seq_length``
256, seed 57, 10 epochs for the small tasks (MRPC, RTE, STS-B, CoLA) and 3 for the large ones,
a linear learning-rate decay, gradient clipping at 1.0 and, as the original's optimiser does for
every stage, frozen embeddings. The dev set is scored every ``eval_steps`` (default: once per
epoch); ``OUT/best`` keeps the best score and ``OUT/last`` the final model, both in Hugging Face
layout (config, weights, tokenizer; no gates), ready to be ``top train``'s student and teacher.
As ``top.train`` does, a call leaves the process's global state as it found it and prints nothing.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from top.data import batching, sources
from top.data.batching import check_max_seq_length
from top.data.loading import TaskData
from top.errors import UserError, error_detail
from top.evaluation import scoring
from top.evaluation.dev import dev_record, score_text
from top.runtime import determinism
from top.runtime.devices import resolve_device
from top.settings.fields import record as config_record
from top.storage import rundir
from top.storage.hub import resolve_model
from top.storage.io import atomic_write_json
from top.storage.model_files import load_tokenizer, read_model_config
from top.storage.safeload import read_state_dict
from top.training import batch_order, distributed, memory_budget, optimisers, run_files
from top.training.checkpoints import write_dense
from top.training.config import FinetuneConfig
from top.training.plan import total_steps
from top.training.progress import Callback, Reporter

logger = logging.getLogger(__name__)

SMALL_TASKS = ("mrpc", "rte", "stsb", "cola")
SMALL_EPOCHS, LARGE_EPOCHS = 10, 3
# A user's own data counts as small below this many training examples (MRPC..CoLA have < 10k).
SMALL_CUSTOM_EXAMPLES = 10_000


@dataclasses.dataclass(frozen=True)
class FinetuneResult:
    """Where a fine-tuning run wrote, and what ``summary.json`` says of it."""

    output_dir: Path
    best_dir: Optional[Path]  # None when no evaluation gave a defined score
    last_dir: Path
    summary: Dict[str, Any]
    config: FinetuneConfig  # as the run resolved it


def default_epochs(data: TaskData) -> int:
    if not data.is_custom:
        return SMALL_EPOCHS if data.task.name in SMALL_TASKS else LARGE_EPOCHS
    return SMALL_EPOCHS if len(data.train) < SMALL_CUSTOM_EXAMPLES else LARGE_EPOCHS


def read_config(config: FinetuneConfig, data: TaskData, directory: Path):
    """``--model``'s config with this task's labels, its length checked against ``max_seq_length``."""
    model_config = read_model_config(directory, f"The config.json of --model {config.model}",
                                     num_labels=data.num_labels, finetuning_task=data.name)
    check_max_seq_length(config.max_seq_length, model_config, f"--model {config.model}")
    if not data.is_custom and not data.is_regression:
        model_config.id2label = dict(enumerate(data.task.labels))
        model_config.label2id = {label: i for i, label in enumerate(data.task.labels)}
    return model_config


def load_model(config: FinetuneConfig, data: TaskData, directory: Path, model_config):
    """The pre-trained encoder in ``directory`` (``--model`` resolved) with this task's classifier head.

    The weights are read by ``top.storage.safeload`` and handed to transformers as a state dict, so it
    never unpickles a file; a head of another size is replaced by a fresh one, base-model key
    prefixes are matched as transformers does.
    """
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING

    state_dict = read_state_dict(directory)
    try:
        # The concrete class: the Auto class wants a path. A classifier head of another task is
        # replaced by a fresh one of this task's size.
        model_class = MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING[type(model_config)]
        model = model_class.from_pretrained(None, config=model_config, state_dict=state_dict,
                                            ignore_mismatched_sizes=True)
    except (OSError, RuntimeError, ValueError, KeyError) as error:
        raise UserError(
            f"--model {config.model} cannot be loaded as a {data.num_labels}-label classifier "
            f"({error_detail(error)}); give a pre-trained encoder."
        ) from None
    model.config.name_or_path = str(config.model)
    return model


def build_optimizer(model, config: FinetuneConfig, steps: int):
    """AdamW over the non-embedding weights, and the linear decay of its learning rate."""
    optimizer = torch.optim.AdamW(optimisers.weight_parameter_groups(model, config.learning_rate, config.weight_decay))
    return optimizer, optimisers.linear_schedule(optimizer, steps)


def finetune_step(model, optimizer, scheduler, batch: Dict[str, torch.Tensor], share: float, max_grad_norm: float,
                  dist: distributed.Distributed) -> float:
    """One optimisation step on this process's ``share`` of the global batch; returns its own loss."""
    output = model(**batching.model_inputs(batch), labels=batch["labels"])
    (output.loss * share).backward()
    dist.sum_gradients(list(model.parameters()))
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    scheduler.step()
    model.zero_grad(set_to_none=True)
    return float(output.loss.detach())


def score_dev(model, dev_set, data: TaskData, batch_size: int, device: torch.device, step: int) -> Dict[str, Any]:
    """The dev record at ``step`` (batches trimmed to their longest member)."""
    model.eval()
    scored = scoring.predict(lambda batch: model(**batching.model_inputs(batch)), dev_set, batch_size, device)
    model.train()
    return {"step": step, **dev_record(data, scored)}


def finetune(config: FinetuneConfig, callback: Optional[Callback] = None) -> FinetuneResult:
    """Run ``top finetune`` with ``config``; ``callback`` is told of every step and evaluation."""
    out = Path(config.output_dir)
    rundir.refuse_reading_into(out, {"--model": config.model})
    dist = distributed.setup_distributed(config.device)
    try:
        # Rank 0 locks OUT, repairs interrupted saves and refuses (or moves aside) another run's
        # best/ and last/ before the run writes anything.
        with rundir.claim(out, dist.is_main), determinism.global_state_restored():
            if dist.is_main:
                rundir.take_over(out, config.overwrite_output_dir, can_resume=False)
            dist.barrier()
            return _finetune(config, dist, callback)
    finally:
        distributed.teardown_distributed(dist)


def _finetune(config: FinetuneConfig, dist: distributed.Distributed, callback: Optional[Callback]) -> FinetuneResult:
    if config.epochs is not None and config.max_steps is not None:
        raise UserError("Give either --epochs or --max-steps, not both.")
    out = Path(config.output_dir)
    given = config
    data = sources.load(config, config.max_seq_length)
    device = resolve_device(config.device, dist.local_rank)
    flags = determinism.set_deterministic()
    determinism.seed_everything(config.seed + dist.rank)

    model_dir = resolve_model(config.model, "--model")
    tokenizer = load_tokenizer(model_dir, "--model", "give a model directory with one")
    model_config = read_config(config, data, model_dir)
    train_set = batching.encode_set(data.train, tokenizer, config.max_seq_length, what="the training data")
    dev_set = batching.encode_set(data.dev, tokenizer, config.max_seq_length, what="the dev set")
    for encoded in (train_set, dev_set):
        batching.check_token_ids(encoded, model_config, f"--model {config.model}")
    order = batch_order.BatchOrder(len(data.train), config.batch_size, config.seed, dist.world_size, dist.rank)
    batch_order.apply_length_grouping(config.group_by_length, order, train_set)
    epochs = config.epochs if config.epochs is not None else default_epochs(data)
    steps = total_steps(config.max_steps, epochs, order.steps_per_epoch)
    config = dataclasses.replace(
        config, epochs=epochs if config.max_steps is None else steps / order.steps_per_epoch, max_steps=steps,
        eval_steps=config.eval_steps or order.steps_per_epoch, device=device.type,
    )

    warning = memory_budget.memory_warning(
        memory_budget.training_estimate(model_config, config.batch_size, config.max_seq_length),
        memory_budget.available_bytes(str(device)), config.batch_size, config.max_seq_length, f"--model {config.model}",
    )
    if warning:
        logger.warning("%s", warning)
    model = load_model(config, data, model_dir, model_config).to(device)
    optimizer, scheduler = build_optimizer(model, config, steps)
    log = run_files.JsonLog(out / "log.jsonl", dist.is_main)
    if dist.is_main:
        run_files.start_run(out, "finetune", config_record(given), config_record(config), {
            "total_steps": steps,
            "steps_per_epoch": order.steps_per_epoch,
            "world_size": dist.world_size,
            "deterministic": flags,
        })
        logger.info("fine-tuning %s on %s: %d steps of %d examples", config.model, data.name, steps,
                    order.global_batch)

    best: Dict[str, Optional[float]] = {"score": None, "step": None}
    reporter = Reporter("finetune", "fine-tune", steps, 0, not config.no_progress and dist.is_main, callback)
    model.train()
    start_time = time.time()
    for step in range(1, steps + 1):
        indices, chunk = order.indices(step - 1)
        batch = batching.step_batch(train_set, indices, chunk, device)
        loss = finetune_step(model, optimizer, scheduler, batch, len(indices) / len(chunk), config.max_grad_norm,
                             dist)
        reporter.step(step, {"loss": loss}, {"loss": f"{loss:.4f}"})
        if step % config.logging_steps == 0 or step == steps:
            epoch, learning_rate = step / order.steps_per_epoch, scheduler.get_last_lr()[0]
            log.write({"step": step, "epoch": epoch, "loss": loss, "learning_rate": learning_rate})
        if step % config.eval_steps == 0 or step == steps:
            if dist.is_main:
                record = score_dev(model, dev_set, data, config.eval_batch_size, device, step)
                score = record["score"]
                # An undefined score (None: see top.evaluation.metrics) is never the best.
                record["is_best"] = score is not None and (best["score"] is None or score > best["score"])
                if record["is_best"]:
                    best = {"score": score, "step": step}
                    write_dense(out / "best", model, tokenizer, {"step": step, "eval": record["eval"]})
                log.write(record)
                line = f"step {step}: {data.metric} {score_text(score)}" + (" (best)" if record["is_best"] else "")
                reporter.evaluation(step, record, line)
            dist.barrier()
    reporter.close()
    summary: Dict[str, Any] = {}
    if dist.is_main:
        write_dense(out / "last", model, tokenizer, {"step": steps, "best": best})
        summary = {"metric": data.metric, "best": best, "steps": steps, "seconds": round(time.time() - start_time, 1)}
        atomic_write_json(out / "summary.json", summary)
    return FinetuneResult(out, out / "best" if best["score"] is not None else None, out / "last", summary, config)
