"""``top finetune``: fine-tune the dense teacher (the original's PreFT step) in a plain PyTorch loop.

Defaults follow the original's ``run_PreFT.sh``: learning rate 2e-5, batch 32, ``max_seq_length``
256, seed 57, 10 epochs for the small tasks (MRPC, RTE, STS-B, CoLA) and 3 for the large ones,
a linear learning-rate decay, gradient clipping at 1.0 and, as the original's optimiser does for
every stage, frozen embeddings. The dev set is scored every ``--eval-steps`` (default: once per
epoch); ``OUT/best`` keeps the best score and ``OUT/last`` the final model, both in Hugging Face
layout (config, weights, tokenizer; no gates), ready to be ``top train``'s student and teacher.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

import torch

from top.commands import options
from top.commands.argtypes import epoch_count, non_negative_float, positive_int, step_count
from top.data import batching
from top.data.batching import check_max_seq_length
from top.data.loading import TaskData
from top.errors import UserError
from top.evaluation import scoring
from top.evaluation.metrics import compute_metrics
from top.method.checkpoint import check_config, check_config_file
from top.storage import rundir
from top.storage.hub import resolve_model
from top.storage.io import atomic_directory, atomic_write_json
from top.storage.manifest import write_manifest
from top.storage.safeload import SAFETENSORS_FILE, read_state_dict, write_safetensors
from top.training import batch_order, determinism, distributed, listeners, optimisers, run_files

logger = logging.getLogger(__name__)

SMALL_TASKS = ("mrpc", "rte", "stsb", "cola")
SMALL_EPOCHS, LARGE_EPOCHS = 10, 3
# A user's own data counts as small below this many training examples (MRPC..CoLA have < 10k).
SMALL_CUSTOM_EXAMPLES = 10_000


@dataclasses.dataclass(frozen=True)
class FinetuneOptions:
    """`top finetune`'s flags, built once in ``run``."""

    model: str
    data: options.DataSource
    run: options.RunOptions
    schedule: options.Schedule  # no --epochs: 10 for the small tasks, else 3 (default_epochs)
    learning_rate: float = 2e-5
    eval_steps: Optional[int] = None  # None: every epoch
    # The command line as parsed, for run.json's "args".
    arguments: Mapping[str, Any] = dataclasses.field(default_factory=dict, compare=False, repr=False)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="pre-trained model directory or hub id, e.g. bert-base-uncased")
    options.add_data_arguments(parser)
    parser.add_argument(
        "--epochs", type=epoch_count, help="default: 10 for MRPC, RTE, STS-B, CoLA (and small custom data), else 3"
    )
    parser.add_argument("--max-steps", type=step_count, help="stop after this many steps (overrides --epochs)")
    parser.add_argument("--learning-rate", type=non_negative_float, default=FinetuneOptions.learning_rate)
    parser.add_argument(
        "--eval-steps", type=positive_int, help="score the dev set every this many steps (default: every epoch)"
    )
    options.add_run_arguments(parser)


def default_epochs(data: TaskData) -> int:
    if not data.is_custom:
        return SMALL_EPOCHS if data.task.name in SMALL_TASKS else LARGE_EPOCHS
    return SMALL_EPOCHS if len(data.train) < SMALL_CUSTOM_EXAMPLES else LARGE_EPOCHS


def finetune_options(args: argparse.Namespace) -> FinetuneOptions:
    """`top finetune`'s flags as one frozen object: the edge past which no Namespace travels."""
    return options.settings_from(
        FinetuneOptions, args, data=options.data_source(args), run=options.run_options(args),
        schedule=options.schedule(args), arguments=options.arguments_record(args),
    )


def run(args: argparse.Namespace) -> int:
    opts = finetune_options(args)
    dist = distributed.setup_distributed(opts.run.device)
    try:
        # Rank 0 locks OUT and repairs interrupted saves before anyone looks for a saved run.
        with rundir.claim(opts.run.output_dir, dist.is_main):
            dist.barrier()
            return finetune(opts, dist)
    finally:
        distributed.teardown_distributed(dist)


def load_model(opts: FinetuneOptions, data: TaskData, directory: Path):
    """The pre-trained encoder in ``directory`` (``--model`` resolved) with this task's classifier head.

    The weights are read by ``top.storage.safeload`` and handed to transformers as a state dict, so it
    never unpickles a file; a head of another size is replaced by a fresh one, base-model key
    prefixes are matched as transformers does.
    """
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING

    check_config_file(directory, f"The config.json of --model {opts.model}")
    try:
        config = AutoConfig.from_pretrained(str(directory), num_labels=data.num_labels, finetuning_task=data.name)
    except Exception as error:
        raise UserError(
            f"--model {opts.model} is not a model directory or hub id ({type(error).__name__}); fix it."
        ) from None
    check_config(config, f"The config.json of --model {opts.model}")
    check_max_seq_length(opts.run.max_seq_length, config, f"--model {opts.model}")
    if not data.is_custom and not data.is_regression:
        config.id2label = dict(enumerate(data.task.labels))
        config.label2id = {label: i for i, label in enumerate(data.task.labels)}
    state_dict = read_state_dict(directory)
    try:
        # The concrete class: the Auto class wants a path. A classifier head of another task is
        # replaced by a fresh one of this task's size.
        model_class = MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING[type(config)]
        model = model_class.from_pretrained(None, config=config, state_dict=state_dict, ignore_mismatched_sizes=True)
    except (OSError, RuntimeError, ValueError, KeyError) as error:
        raise UserError(
            f"--model {opts.model} cannot be loaded as a {data.num_labels}-label classifier "
            f"({str(error).splitlines()[0][:200]}); give a pre-trained encoder."
        ) from None
    model.config.name_or_path = str(opts.model)
    return model


def save_model(path: Path, model, tokenizer, extra: Dict[str, Any]) -> None:
    """Hugging Face layout (config, ``model.safetensors``, tokenizer), swapped in whole."""
    with atomic_directory(path) as tmp:
        model.config.save_pretrained(str(tmp))
        write_safetensors(tmp / SAFETENSORS_FILE, model.state_dict())
        tokenizer.save_pretrained(str(tmp))
        atomic_write_json(tmp / "trainer_state.json", extra)
        write_manifest(tmp)  # last: it vouches for every file above


def build_optimizer(model, opts: FinetuneOptions, total_steps: int):
    """AdamW over the non-embedding weights, and the linear decay of its learning rate."""
    optimizer = torch.optim.AdamW(optimisers.weight_parameter_groups(model, opts.learning_rate, opts.run.weight_decay))
    return optimizer, optimisers.linear_schedule(optimizer, total_steps)


def finetune_step(
    model, optimizer, scheduler, batch: Dict[str, torch.Tensor], share: float, max_grad_norm: float,
    dist: distributed.Distributed,
) -> float:
    """One optimisation step on this process's ``share`` of the global batch; returns its own loss."""
    output = model(**batching.model_inputs(batch), labels=batch["labels"])
    (output.loss * share).backward()
    dist.sum_gradients(list(model.parameters()))
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    scheduler.step()
    model.zero_grad(set_to_none=True)
    return float(output.loss.detach())


def score_dev(model, dev_set, data: TaskData, batch_size: int, device: torch.device) -> Dict[str, float]:
    """Every metric of the task on the dev set (batches trimmed to their longest member)."""
    model.eval()
    scored = scoring.predict(lambda batch: model(**batching.model_inputs(batch)), dev_set, batch_size, device)
    model.train()
    return compute_metrics(data.task, scored.logits.numpy(), scored.labels.numpy())


def finetune(opts: FinetuneOptions, dist: distributed.Distributed) -> int:
    from tqdm import tqdm

    out = opts.run.output_dir
    data = opts.data.load(opts.run.max_seq_length)
    device = options.resolve_device(opts.run.device, dist.local_rank)
    flags = determinism.set_deterministic()
    determinism.seed_everything(opts.run.seed + dist.rank)

    model_dir = resolve_model(opts.model, "--model")
    tokenizer, train_set, dev_set = options.encode_data(data, model_dir, "--model", opts.model, opts.run.max_seq_length)
    order = batch_order.BatchOrder(len(data.train), opts.run.batch_size, opts.run.seed, dist.world_size, dist.rank)
    batch_order.apply_length_grouping(opts.run.group_by_length, order, train_set)
    total_steps = opts.schedule.total_steps(order.steps_per_epoch, default_epochs(data))
    eval_steps = opts.eval_steps or order.steps_per_epoch

    model = load_model(opts, data, model_dir).to(device)
    optimizer, scheduler = build_optimizer(model, opts, total_steps)
    log = run_files.JsonLog(out / "log.jsonl", dist.is_main)
    if dist.is_main:
        run_files.start_run(out, "finetune", opts.arguments, {
            "options": options.settings_record(opts),  # every flag resolved, as the run used it
            "total_steps": total_steps,
            "steps_per_epoch": order.steps_per_epoch,
            "eval_steps": eval_steps,
            "world_size": dist.world_size,
            "deterministic": flags,
        })
        logger.info(
            "fine-tuning %s on %s: %d steps of %d examples", opts.model, data.name, total_steps, order.global_batch
        )

    best: Dict[str, Optional[float]] = {"score": None, "step": None}
    bar = tqdm(total=total_steps, desc="fine-tune", disable=opts.run.no_progress or not dist.is_main,
               dynamic_ncols=True)
    model.train()
    start_time = time.time()
    for step in range(1, total_steps + 1):
        indices, chunk = order.indices(step - 1)
        batch = batching.step_batch(train_set, indices, chunk, device)
        share = len(indices) / len(chunk)
        loss = finetune_step(model, optimizer, scheduler, batch, share, opts.run.max_grad_norm, dist)
        bar.set_postfix({"loss": f"{loss:.4f}"}, refresh=False)
        bar.update(1)
        listeners.step_finished("finetune", step, total_steps)
        if step % opts.run.logging_steps == 0 or step == total_steps:
            epoch, learning_rate = step / order.steps_per_epoch, scheduler.get_last_lr()[0]
            log.write({"step": step, "epoch": epoch, "loss": loss, "learning_rate": learning_rate})
        if step % eval_steps == 0 or step == total_steps:
            if dist.is_main:
                metrics = score_dev(model, dev_set, data, opts.run.eval_batch_size, device)
                score = metrics[data.metric]
                # An undefined score (None: see top.evaluation.metrics) is never the best.
                is_best = score is not None and (best["score"] is None or score > best["score"])
                if is_best:
                    best = {"score": score, "step": step}
                    save_model(out / "best", model, tokenizer, {"step": step, "eval": metrics})
                log.write({"step": step, "eval": metrics, "score": score, "is_best": is_best})
                shown = "undefined" if score is None else f"{score:.4f}"
                bar.write(f"step {step}: {data.metric} {shown}" + (" (best)" if is_best else ""))
            dist.barrier()
    bar.close()
    if dist.is_main:
        save_model(out / "last", model, tokenizer, {"step": total_steps, "best": best})
        write_summary(out, data.metric, best, total_steps, time.time() - start_time)
    return 0


def write_summary(out: Path, metric: str, best: Dict[str, Optional[float]], steps: int, seconds: float) -> None:
    """``summary.json``, and one line on the best evaluation (or why there is none)."""
    summary = {"metric": metric, "best": best, "steps": steps, "seconds": round(seconds, 1)}
    atomic_write_json(out / "summary.json", summary)
    if best["score"] is None:
        print(f"No evaluation gave a defined {metric}, so best/ was not written (see {out / 'log.jsonl'}).")
    else:
        print(f"best {metric} {best['score']:.4f} at step {best['step']} -> {out / 'best'}")
