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
import logging
import time
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from top import determinism, loop, rundir
from top.argtypes import epoch_count, non_negative_float, positive_int, step_count
from top.data import TaskData
from top.errors import UserError
from top.io import atomic_directory, atomic_write_json

logger = logging.getLogger(__name__)

SMALL_TASKS = ("mrpc", "rte", "stsb", "cola")
SMALL_EPOCHS, LARGE_EPOCHS = 10, 3
# A user's own data counts as small below this many training examples (MRPC..CoLA have < 10k).
SMALL_CUSTOM_EXAMPLES = 10_000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="pre-trained model directory or hub id, e.g. bert-base-uncased")
    loop.add_data_arguments(parser)
    parser.add_argument(
        "--epochs", type=epoch_count, help="default: 10 for MRPC, RTE, STS-B, CoLA (and small custom data), else 3"
    )
    parser.add_argument("--max-steps", type=step_count, help="stop after this many steps (overrides --epochs)")
    parser.add_argument("--learning-rate", type=non_negative_float, default=2e-5)
    parser.add_argument(
        "--eval-steps", type=positive_int, help="score the dev set every this many steps (default: every epoch)"
    )
    loop.add_run_arguments(parser)


def default_epochs(data: TaskData) -> int:
    if not data.is_custom:
        return SMALL_EPOCHS if data.task.name in SMALL_TASKS else LARGE_EPOCHS
    return SMALL_EPOCHS if len(data.train) < SMALL_CUSTOM_EXAMPLES else LARGE_EPOCHS


def run(args: argparse.Namespace) -> int:
    dist = loop.setup_distributed(args.device)
    try:
        # Rank 0 locks OUT and repairs interrupted saves before anyone looks for a saved run.
        with rundir.claim(Path(args.output_dir), dist.is_main):
            dist.barrier()
            return finetune(args, dist)
    finally:
        loop.teardown_distributed(dist)


def load_model(args: argparse.Namespace, data: TaskData, directory: Path):
    """The pre-trained encoder in ``directory`` (``--model`` resolved) with this task's classifier head.

    The weights are read by ``top.safeload`` and handed to transformers as a state dict, so it
    never unpickles a file; a head of another size is replaced by a fresh one, base-model key
    prefixes are matched as transformers does.
    """
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING

    from top.checkpoint import check_config, check_config_file
    from top.data import check_max_seq_length
    from top.safeload import read_state_dict

    check_config_file(directory, f"The config.json of --model {args.model}")
    try:
        config = AutoConfig.from_pretrained(str(directory), num_labels=data.num_labels, finetuning_task=data.name)
    except Exception as error:
        raise UserError(
            f"--model {args.model} is not a model directory or hub id ({type(error).__name__}); fix it."
        ) from None
    check_config(config, f"The config.json of --model {args.model}")
    check_max_seq_length(args.max_seq_length, config, f"--model {args.model}")
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
            f"--model {args.model} cannot be loaded as a {data.num_labels}-label classifier "
            f"({str(error).splitlines()[0][:200]}); give a pre-trained encoder."
        ) from None
    model.config.name_or_path = str(args.model)
    return model


def save_model(path: Path, model, tokenizer, extra: Dict[str, Any]) -> None:
    """Hugging Face layout (config, ``model.safetensors``, tokenizer), swapped in whole."""
    from top.manifest import write_manifest
    from top.safeload import SAFETENSORS_FILE, write_safetensors

    with atomic_directory(path) as tmp:
        model.config.save_pretrained(str(tmp))
        write_safetensors(tmp / SAFETENSORS_FILE, model.state_dict())
        tokenizer.save_pretrained(str(tmp))
        atomic_write_json(tmp / "trainer_state.json", extra)
        write_manifest(tmp)  # last: it vouches for every file above


def build_optimizer(model, args: argparse.Namespace, total_steps: int):
    """AdamW over the non-embedding weights, and the linear decay of its learning rate."""
    optimizer = torch.optim.AdamW(loop.weight_parameter_groups(model, args.learning_rate, args.weight_decay))
    return optimizer, loop.linear_schedule(optimizer, total_steps)


def finetune_step(
    model, optimizer, scheduler, batch: Dict[str, torch.Tensor], share: float, max_grad_norm: float,
    dist: loop.Distributed,
) -> float:
    """One optimisation step on this process's ``share`` of the global batch; returns its own loss."""
    output = model(**loop.model_inputs(batch), labels=batch["labels"])
    (output.loss * share).backward()
    dist.sum_gradients(list(model.parameters()))
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    scheduler.step()
    model.zero_grad(set_to_none=True)
    return float(output.loss.detach())


def score_dev(model, dev_set, data: TaskData, batch_size: int, device: torch.device) -> Dict[str, float]:
    """Every metric of the task on the dev set (batches trimmed to their longest member)."""
    from top import scoring
    from top.metrics import compute_metrics

    model.eval()
    scored = scoring.predict(lambda batch: model(**loop.model_inputs(batch)), dev_set, batch_size, device)
    model.train()
    return compute_metrics(data.task, scored.logits.numpy(), scored.labels.numpy())


def finetune(args: argparse.Namespace, dist: loop.Distributed) -> int:
    from tqdm import tqdm

    from top.data import load_task_data
    from top.hub import resolve_model

    out = Path(args.output_dir)
    data = load_task_data(
        args.task, args.data_dir, args.train_file, args.validation_file, max_seq_length=args.max_seq_length
    )
    device = loop.resolve_device(args.device, dist)
    flags = determinism.set_deterministic()
    determinism.seed_everything(args.seed + dist.rank)

    model_dir = resolve_model(args.model, "--model")
    tokenizer, train_set, dev_set = loop.encode_data(args, data, model_dir, "--model", args.model)
    order = loop.BatchOrder(len(data.train), args.batch_size, args.seed, dist.world_size, dist.rank)
    loop.apply_length_grouping(args, order, train_set)
    total_steps = loop.training_length(args, order.steps_per_epoch, default_epochs(data))
    eval_steps = args.eval_steps or order.steps_per_epoch

    model = load_model(args, data, model_dir).to(device)
    optimizer, scheduler = build_optimizer(model, args, total_steps)
    log = loop.JsonLog(out / "log.jsonl", dist.is_main)
    if dist.is_main:
        loop.start_run(out, "finetune", args, {
            "total_steps": total_steps,
            "steps_per_epoch": order.steps_per_epoch,
            "eval_steps": eval_steps,
            "world_size": dist.world_size,
            "deterministic": flags,
        })
        logger.info(
            "fine-tuning %s on %s: %d steps of %d examples", args.model, data.name, total_steps, order.global_batch
        )

    best: Dict[str, Optional[float]] = {"score": None, "step": None}
    bar = tqdm(total=total_steps, desc="fine-tune", disable=args.no_progress or not dist.is_main, dynamic_ncols=True)
    model.train()
    start_time = time.time()
    for step in range(1, total_steps + 1):
        indices, chunk = order.indices(step - 1)
        batch = loop.step_batch(train_set, indices, chunk, device)
        loss = finetune_step(model, optimizer, scheduler, batch, len(indices) / len(chunk), args.max_grad_norm, dist)
        bar.set_postfix({"loss": f"{loss:.4f}"}, refresh=False)
        bar.update(1)
        loop.step_finished("finetune", step, total_steps)
        if step % args.logging_steps == 0 or step == total_steps:
            epoch, learning_rate = step / order.steps_per_epoch, scheduler.get_last_lr()[0]
            log.write({"step": step, "epoch": epoch, "loss": loss, "learning_rate": learning_rate})
        if step % eval_steps == 0 or step == total_steps:
            if dist.is_main:
                metrics = score_dev(model, dev_set, data, args.eval_batch_size, device)
                score = metrics[data.metric]
                # An undefined score (None: see top.metrics) is never the best.
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
