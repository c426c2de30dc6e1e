"""``top train``: learn ToP's token-pruning gates under the FLOPs constraint (a plain PyTorch loop).

The student starts from the fine-tuned dense model, which also serves as the teacher. For the
first ``PREPRUNING_STEPS`` steps the student is only distilled; then every step samples the
hard-concrete gates, prunes tokens in the student's forward pass and adds

* the Lagrangian of the expected MAC sparsity against a target that ramps linearly from 0 over
  the warm-up, with lambda_1/lambda_2 trained by gradient ascent, and
* the ranking distillation of the teacher's last-layer token order into student layers 1..3,
  weighted by alpha * max(0.01, 1 - warm-up progress),

to the logit distillation (KD at T=2; STS-B and other regression data use the task loss).
Every ``--eval-steps`` the dev set is scored in ``faithful`` mode with the deterministic gates;
``best/`` keeps the best score among evaluations whose expected sparsity reached target - eps.
``last/`` holds everything a bit-identical ``--resume`` needs.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
import torch.nn.functional as F

from top import determinism, flops, loop, rundir
from top.argtypes import any_float, finite_float, non_negative_float, positive_float, positive_int
from top.errors import UserError
from top.gates import LAYER_GATE_INIT, check_prune_locations, default_prune_locations
from top.io import atomic_directory, atomic_write_json

logger = logging.getLogger(__name__)

# The original starts pruning after this many steps of plain distillation.
PREPRUNING_STEPS = 2
# Presets for a user's own data (the large GLUE tasks' numbers).
CUSTOM_PRESET = {"bin_num": 50, "topk": 20, "warmup_epochs": 10, "epochs": 40}
# A MAC sparsity to reach: strictly between 0 and 1.
SPARSITY = finite_float(min=0.0, max=1.0, min_inclusive=False, max_inclusive=False)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="the fine-tuned dense student (directory or hub id)")
    parser.add_argument("--teacher", required=True, help="the fine-tuned dense teacher (usually the same model)")
    loop.add_data_arguments(parser)
    parser.add_argument("--target-sparsity", type=SPARSITY, help="MAC sparsity to reach (default: the task preset)")
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=positive_float, help="default: the task preset")
    length.add_argument("--max-steps", type=positive_int, help="stop after this many steps (overrides --epochs)")
    parser.add_argument(
        "--warmup-epochs", type=non_negative_float, help="Lagrangian warm-up (default: the task preset)"
    )
    parser.add_argument(
        "--bin-num", type=positive_int, help="rank bins per prune location (default: the task preset)"
    )
    parser.add_argument(
        "--topk", type=positive_int, help="tokens ranked by the rank distillation (default: the task preset)"
    )
    parser.add_argument("--prune-location", help="comma-separated layer indices (default: 2..L-1)")
    parser.add_argument("--learning-rate", type=non_negative_float, default=1e-5)
    parser.add_argument("--reg-learning-rate", type=positive_float, default=0.02, help="lr of the gates and lambdas")
    parser.add_argument("--rank-loss-alpha", type=non_negative_float, default=0.01)
    parser.add_argument("--sparsity-epsilon", type=non_negative_float, default=0.01)
    parser.add_argument(
        "--layer-gate-init", type=any_float, default=LAYER_GATE_INIT,
        help="initial logit of the layer gates: -10 (off, the paper's) lets the constraint switch locations on; "
        "a positive value starts every location pruning, which suits short schedules",
    )
    parser.add_argument(
        "--droprate-init",
        type=finite_float(min=0.0, max=1.0),
        default=0.01,
        help="recorded for parity with the original, whose token and layer gates start at logits 10 and -10 regardless",
    )
    parser.add_argument("--distill-temperature", type=positive_float, default=2.0)
    parser.add_argument("--eval-steps", type=positive_int, default=100)
    parser.add_argument("--save-steps", type=positive_int, default=500, help="write last/ every this many steps")
    loop.add_run_arguments(parser)
    parser.add_argument("--resume", action="store_true", help="continue from OUT/last")


# ----------------------------------------------------------------------------------------------
# Settings


def resolve_settings(args: argparse.Namespace, task) -> Dict[str, Any]:
    """Flags over the task's preset; bad values are the user's to fix."""
    preset = (
        dict(CUSTOM_PRESET)
        if task is None
        else {
            "bin_num": task.preset.bin_num,
            "topk": task.preset.topk,
            "warmup_epochs": task.preset.warmup_epochs,
            "epochs": task.preset.epochs,
        }
    )
    target = args.target_sparsity
    if target is None:
        if task is None:
            raise UserError("Custom data has no preset target; pass --target-sparsity, e.g. 0.5.")
        target = task.preset.sparsity
    if not 0.0 < target < 1.0:
        raise UserError(f"--target-sparsity is {target}; give a value strictly between 0 and 1.")
    settings = {
        "target_sparsity": float(target),
        "bin_num": args.bin_num if args.bin_num is not None else preset["bin_num"],
        "topk": args.topk if args.topk is not None else preset["topk"],
        "warmup_epochs": args.warmup_epochs if args.warmup_epochs is not None else preset["warmup_epochs"],
        "epochs": args.epochs if args.epochs is not None else preset["epochs"],
    }
    if settings["bin_num"] < 1:
        raise UserError(f"--bin-num is {settings['bin_num']}; give at least 1 rank bin, e.g. 50.")
    if settings["topk"] < 1:
        raise UserError(f"--topk is {settings['topk']}; give a positive number of tokens to rank, e.g. 20.")
    if settings["warmup_epochs"] < 0:
        raise UserError(f"--warmup-epochs is {settings['warmup_epochs']}; give 0 or more.")
    loop.check_positive(
        batch_size=args.batch_size,
        eval_batch_size=args.eval_batch_size,
        max_seq_length=args.max_seq_length,
        eval_steps=args.eval_steps,
        save_steps=args.save_steps,
        logging_steps=args.logging_steps,
    )
    if not args.reg_learning_rate > 0 or not args.learning_rate >= 0:
        raise UserError("--learning-rate must be >= 0 and --reg-learning-rate > 0; fix their values.")
    return settings


def prune_locations(spec: Optional[str], num_layers: int) -> List[int]:
    """``--prune-location`` parsed and checked against the model's depth (default 2..L-1)."""
    if spec is None:
        locations = default_prune_locations(num_layers)
        if not locations:
            raise UserError(f"A {num_layers}-layer model has no layer 2..L-1 to prune at; pass --prune-location 1.")
        return locations
    try:
        locations = [int(part) for part in spec.split(",") if part.strip()]
    except ValueError:
        raise UserError(
            f"--prune-location {spec!r} is not a comma-separated list of layer indices, e.g. 2,3,4."
        ) from None
    return check_prune_locations(
        locations,
        num_layers,
        source=f"--prune-location {spec}",
        fix=f"list distinct layers of 1..{num_layers - 1} in increasing order, e.g. 2,3,4",
        allow_empty=False,
    )


def load_config(directory: Path, flag: str, name: str):
    from transformers import AutoConfig

    from top.checkpoint import check_config

    try:
        config = AutoConfig.from_pretrained(str(directory))
    except Exception as error:
        raise UserError(
            f"{flag} {name} is not a model directory or hub id ({type(error).__name__}); fix the path."
        ) from None
    return check_config(config, f"The config.json of {flag} {name}")


def check_teacher(student_config, teacher_config, num_labels: int, args) -> None:
    if teacher_config.num_labels != student_config.num_labels:
        raise UserError(
            f"The teacher {args.teacher} has {teacher_config.num_labels} labels but the student {args.model} has "
            f"{student_config.num_labels}; give a teacher fine-tuned on the same task."
        )
    if teacher_config.vocab_size != student_config.vocab_size:
        raise UserError(
            f"The teacher {args.teacher} has a vocabulary of {teacher_config.vocab_size} but the student has "
            f"{student_config.vocab_size}; give a teacher with the student's tokenizer."
        )
    if student_config.num_labels != num_labels:
        raise UserError(
            f"The student {args.model} has {student_config.num_labels} labels but the data has {num_labels}; "
            "fine-tune it on this data first (`top finetune`)."
        )


# ----------------------------------------------------------------------------------------------
# The run


def run(args: argparse.Namespace) -> int:
    dist = loop.setup_distributed(args.device)
    try:
        # Rank 0 locks OUT and repairs interrupted saves before anyone looks for a saved run.
        with rundir.claim(Path(args.output_dir), dist.is_main):
            dist.barrier()
            return train(args, dist)
    finally:
        loop.teardown_distributed(dist)


def train(args: argparse.Namespace, dist: loop.Distributed) -> int:
    from transformers import AutoTokenizer

    from top.data import check_max_seq_length, encode, load_task_data
    from top.gates import TokenGates
    from top.hub import resolve_model
    from top.losses import lagrangian_loss, logit_distillation_loss, rank_distillation_loss
    from top.metrics import compute_metrics
    from top.modeling import ToPForSequenceClassification

    out = Path(args.output_dir)
    last_dir, best_dir = out / "last", out / "best"
    if args.resume and not loop.has_state_file(last_dir):
        raise UserError(f"--resume was given but {last_dir} holds no saved run; start without --resume.")

    # Everything that can be wrong with the input is checked before any weights load.
    data = load_task_data(
        args.task, args.data_dir, args.train_file, args.validation_file, max_seq_length=args.max_seq_length
    )
    settings = resolve_settings(args, None if data.is_custom else data.task)
    student_dir = resolve_model(args.model, "--model")
    teacher_dir = resolve_model(args.teacher, "--teacher")
    student_config = load_config(student_dir, "--model", args.model)
    teacher_config = load_config(teacher_dir, "--teacher", args.teacher)
    check_teacher(student_config, teacher_config, data.num_labels, args)
    for config, flag, name in ((student_config, "--model", args.model), (teacher_config, "--teacher", args.teacher)):
        check_max_seq_length(args.max_seq_length, config, f"{flag} {name}")
    locations = prune_locations(args.prune_location, student_config.num_hidden_layers)
    device = loop.resolve_device(args.device, dist)
    flags = determinism.set_deterministic()
    determinism.seed_everything(args.seed + dist.rank)
    if dist.is_main:
        logger.info(
            "prune locations %s for a %d-layer model%s",
            locations,
            student_config.num_hidden_layers,
            "" if args.prune_location else " (default 2..L-1)",
        )
        logger.info("settings %s", settings)

    tokenizer = AutoTokenizer.from_pretrained(str(student_dir))
    train_set = encode(data.train, tokenizer, args.max_seq_length)
    dev_set = encode(data.dev, tokenizer, args.max_seq_length)
    order = loop.BatchOrder(len(data.train), args.batch_size, args.seed, dist.world_size, dist.rank)
    total_steps = loop.training_length(args, order.steps_per_epoch, settings["epochs"])
    warmup_steps = int(round(settings["warmup_epochs"] * order.steps_per_epoch))

    try:
        # Read by top.safeload and loaded strictly: a hostile or incomplete file stops the run.
        student = ToPForSequenceClassification.from_pretrained(student_dir, prune_locations=locations, flag="--model")
        teacher = ToPForSequenceClassification.from_pretrained(teacher_dir, prune_locations=[], flag="--teacher")
    except (OSError, RuntimeError, ValueError) as error:
        raise UserError(
            f"The student or teacher weights cannot be loaded ({str(error).splitlines()[0][:200]}); "
            "give fine-tuned model directories."
        ) from None
    student.config.finetuning_task = data.name
    gates = TokenGates(locations, settings["bin_num"], layer_init=args.layer_gate_init)
    student.to(device)
    teacher.to(device).eval()
    gates.to(device)
    regression = data.is_regression

    def build_optimizers(pruning: bool):
        # Pruning starts with fresh optimisers whose schedule spans the remaining steps, as in the original.
        weights = torch.optim.AdamW(loop.weight_parameter_groups(student, args.learning_rate, args.weight_decay))
        schedule_steps = total_steps - PREPRUNING_STEPS if pruning else total_steps
        optimizers = {"weights": weights, "scheduler": loop.linear_schedule(weights, schedule_steps)}
        if pruning:
            optimizers["gates"] = torch.optim.AdamW(
                gates.gate_parameters(), lr=args.reg_learning_rate, weight_decay=0.0
            )
            # The multipliers climb the Lagrangian: gradient ascent.
            optimizers["lambdas"] = torch.optim.AdamW(
                gates.lambda_parameters(), lr=args.reg_learning_rate, weight_decay=0.0, maximize=True
            )
        return optimizers

    # Training state: what last/ saves and --resume restores.
    step = 0
    best = {
        "score": None,
        "step": None,
        "expected_sparsity": None,
        "expected_sequence_sparsity": None,
        "flops_reduction": None,
    }
    optimizers = build_optimizers(False)
    log = loop.JsonLog(out / "log.jsonl", dist.is_main)
    if args.resume:
        step, best, optimizers = restore(last_dir, student, gates, build_optimizers, dist)
        log.truncate_after(step)
        if dist.is_main:
            logger.info("resumed from %s at step %d", last_dir, step)
    elif dist.is_main:
        loop.start_run(out, "train", args, {
            "settings": settings,
            "prune_locations": locations,
            "total_steps": total_steps,
            "warmup_steps": warmup_steps,
            "steps_per_epoch": order.steps_per_epoch,
            "world_size": dist.world_size,
            "deterministic": flags,
        })
    target = settings["target_sparsity"]

    def warmup_progress(pruned_steps: int) -> float:
        return 1.0 if warmup_steps <= 0 else min(1.0, pruned_steps / warmup_steps)

    def evaluate(at_step: int) -> Dict[str, Any]:
        """Dev score in faithful mode with the deterministic gates (dense before pruning starts)."""
        student.eval()
        pruning = "gates" in optimizers
        token_z, pruner_z = gates.deterministic() if pruning else (None, None)
        sparsities: List[float] = []
        sequence_sparsities: List[float] = []

        def on_batch(batch, output):
            if pruning:
                s, seq = flops.expected_sparsities(
                    token_z, pruner_z, locations, student.config, batch["attention_mask"], data.task_length
                )
                sparsities.append(float(s))
                sequence_sparsities.append(float(seq))

        logits, labels = loop.predict(
            lambda b: student(**loop.model_inputs(b), mode="faithful", token_z=token_z, pruner_z=pruner_z),
            dev_set,
            args.eval_batch_size,
            device,
            on_batch,
            trim=not pruning,  # faithful: padded to max_seq_length, as `top eval` scores it
        )
        student.train()
        metrics = compute_metrics(data.task, logits, labels)
        record = {"step": at_step, "eval": metrics, "score": metrics[data.metric]}
        if pruning:
            record["expected_sparsity"] = flops.mean_of_batch_means(sparsities)
            record["expected_sequence_sparsity"] = flops.mean_of_batch_means(sequence_sparsities)
            # Against the dense model at the task's length (the paper's figure), and at the same inputs.
            record["flops_reduction"] = float(flops.flops_reduction(record["expected_sequence_sparsity"]))
            record["flops_reduction_same_inputs"] = float(flops.flops_reduction(record["expected_sparsity"]))
            record["kept_bins"] = token_z.sum(dim=1).tolist()
            record["layer_gates"] = pruner_z.tolist()
        return record

    def save_last(at_step: int) -> None:
        rng = dist.gather_objects(determinism.rng_state())
        if not dist.is_main:
            return
        state = {
            "step": at_step,
            "pruning": "gates" in optimizers,
            "best": best,
            "world_size": dist.world_size,
            "rng": rng,
            "optimizers": {name: opt.state_dict() for name, opt in optimizers.items()},
        }
        with atomic_directory(last_dir) as tmp:
            write_checkpoint(
                tmp,
                student,
                gates,
                tokenizer,
                extra={"trainer_state.json": {"step": at_step, "total_steps": total_steps, "best": best}},
            )
            loop.save_state_file(tmp, state)

    from tqdm import tqdm

    bar = tqdm(
        total=total_steps, initial=step, desc="ToP", disable=args.no_progress or not dist.is_main, dynamic_ncols=True
    )
    student.train()
    start_time = time.time()
    while step < total_steps:
        if step == PREPRUNING_STEPS and "gates" not in optimizers:
            optimizers = build_optimizers(True)
            if dist.is_main:
                logger.info("step %d: pruning starts (%d bins at layers %s)", step, gates.bin_num, locations)
        pruning = "gates" in optimizers
        indices, chunk = order.indices(step)
        batch = loop.step_batch(train_set, indices, chunk, device)
        global_batch = len(chunk)
        share = len(indices) / global_batch
        inputs = loop.model_inputs(batch)

        with torch.no_grad():
            teacher_out = teacher(**inputs, mode="faithful")
        token_z = pruner_z = None
        if pruning:
            # The same gate sample on every rank and after a resume: its own seed per step.
            with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
                torch.manual_seed(args.seed * 1_000_003 + step)
                token_z, pruner_z = gates.sample()
        student_out = student(**inputs, mode="train", token_z=token_z, pruner_z=pruner_z)

        if regression:
            task_loss = F.mse_loss(student_out.logits.squeeze(-1), batch["labels"].float())
        else:
            task_loss = logit_distillation_loss(student_out.logits, teacher_out.logits, args.distill_temperature)
        loss = share * task_loss
        lag = rank = expected = torch.zeros((), device=device)
        step_target = rank_weight = 0.0
        if pruning:
            pruned_steps = step - PREPRUNING_STEPS
            progress = warmup_progress(pruned_steps)
            step_target = target * progress
            token_score, pruner_score = gates.keep_probabilities()
            relative, _ = flops.relative_macs(
                token_score, pruner_score, locations, student.config, batch["attention_mask"], data.task_length
            )
            expected = 1 - dist.gather_sum(relative.sum()) / global_batch
            lag = lagrangian_loss(expected, step_target, gates.lambda_1, gates.lambda_2)
            rank = rank_distillation_loss(
                student_out.importance, teacher_out.importance[-1], batch["attention_mask"][:, 1:], settings["topk"]
            )
            rank_weight = args.rank_loss_alpha * max(0.01, 1.0 - progress)
            loss = loss + share * rank_weight * rank + lag
        loss.backward()

        dist.sum_gradients(list(student.parameters()) + gates.gate_parameters())
        torch.nn.utils.clip_grad_norm_(student.parameters(), args.max_grad_norm)
        optimizers["weights"].step()
        if pruning:
            optimizers["gates"].step()
            optimizers["lambdas"].step()
        optimizers["scheduler"].step()
        gates.constrain_()
        student.zero_grad(set_to_none=True)
        gates.zero_grad(set_to_none=True)
        step += 1

        values = {
            "loss": _number(task_loss) + rank_weight * _number(rank) + _number(lag),
            "task_loss": _number(task_loss),
            "lagrangian": _number(lag),
            "rank_loss": _number(rank),
            "lambda_1": _number(gates.lambda_1),
            "lambda_2": _number(gates.lambda_2),
            "expected_sparsity": _number(expected),
            "target": step_target,
        }
        bar.set_postfix(
            {
                "loss": f"{values['loss']:.4f}",
                "task": f"{values['task_loss']:.4f}",
                "lag": f"{values['lagrangian']:.4f}",
                "l1": f"{values['lambda_1']:.3f}",
                "l2": f"{values['lambda_2']:.3f}",
                "sparsity": f"{values['expected_sparsity']:.3f}/{step_target:.3f}",
            },
            refresh=False,
        )
        bar.update(1)
        if step % args.logging_steps == 0 or step == total_steps:
            log.write(
                {
                    "step": step,
                    "epoch": step / order.steps_per_epoch,
                    "learning_rate": optimizers["scheduler"].get_last_lr()[0],
                    **values,
                }
            )

        if step % args.eval_steps == 0 or step == total_steps:
            if dist.is_main:
                record = evaluate(step)
                # The rule, stricter than the original's: there, once one evaluation reached
                # the target, every later one could become best/ even below it.
                reached = pruning and record["expected_sparsity"] >= target - args.sparsity_epsilon
                record["reached_target"] = bool(reached)
                # An undefined score (None: see top.metrics) is never the best.
                record["is_best"] = bool(
                    reached
                    and record["score"] is not None
                    and (best["score"] is None or record["score"] > best["score"])
                )
                if record["is_best"]:
                    best = {
                        "score": record["score"],
                        "step": step,
                        "expected_sparsity": record["expected_sparsity"],
                        "expected_sequence_sparsity": record["expected_sequence_sparsity"],
                        "flops_reduction": record["flops_reduction"],
                    }
                    write_checkpoint(
                        best_dir,
                        student,
                        gates,
                        tokenizer,
                        extra={"trainer_state.json": {"step": step, "eval": record}},
                    )
                log.write(record)
                bar.write(
                    f"step {step}: {data.metric} {_score_text(record['score'])}"
                    + (f", expected sparsity {record['expected_sparsity']:.4f} (target {target})" if pruning else "")
                )
            dist.barrier()
        if step % args.save_steps == 0 or step == total_steps:
            save_last(step)
            dist.barrier()
    bar.close()

    if dist.is_main:
        summary = {
            "metric": data.metric,
            "best": best,
            "target_sparsity": target,
            "steps": step,
            "seconds": round(time.time() - start_time, 1),
        }
        atomic_write_json(out / "summary.json", summary)
        if best["score"] is None:
            print(
                f"No evaluation reached the target sparsity {target} within {args.sparsity_epsilon}; "
                f"best/ was not written (see {out / 'log.jsonl'})."
            )
        else:
            print(
                f"best {data.metric} {best['score']:.4f} at step {best['step']}: expected sparsity "
                f"{best['expected_sparsity']:.4f}, FLOPs reduction {best['flops_reduction']:.2f}x -> {best_dir}"
            )
    return 0


def _score_text(score: Optional[float]) -> str:
    return "undefined" if score is None else f"{score:.4f}"


def _number(value) -> float:
    return float(value.detach()) if torch.is_tensor(value) else float(value)


def write_checkpoint(path: Path, student, gates, tokenizer, extra: Optional[Dict[str, Any]] = None) -> None:
    """The published layout (config, weights, zs.pt, l0_module.pt, tokenizer), written atomically."""
    from top.checkpoint import save_checkpoint

    save_checkpoint(
        path,
        model_state_dict=student.hf_model.state_dict(),
        config=student.config,
        gate_state=gates.state_for_checkpoint(),
        tokenizer=tokenizer,
        extra=extra,
    )


def restore(last_dir: Path, student, gates, build_optimizers, dist: loop.Distributed):
    """Weights, gates, lambdas, optimisers, scheduler and RNG states from ``last/``."""
    from top.checkpoint import load_checkpoint
    from top.gates import TokenGates

    state = loop.load_state_file(last_dir)
    checkpoint = load_checkpoint(last_dir)
    student.load_checkpoint_weights(
        checkpoint, fix="resume with the flags of the original run", against="the --model architecture"
    )
    saved = TokenGates.from_state(checkpoint.gate_state)
    if saved.prune_locations != gates.prune_locations or saved.bin_num != gates.bin_num:
        raise UserError(
            f"{last_dir} has gates at {saved.prune_locations} with {saved.bin_num} bins; "
            "resume with the --prune-location and --bin-num of the original run."
        )
    gates.load_state_dict(saved.state_dict())
    step = int(state["step"])
    optimizers = build_optimizers(bool(state["pruning"]))
    for name, optimizer in optimizers.items():
        optimizer.load_state_dict(state["optimizers"][name])
    rng = state["rng"]
    if len(rng) == dist.world_size:
        determinism.set_rng_state(rng[dist.rank])
    else:
        logger.warning(
            "last/ was written by %d processes, not %d; dropout randomness restarts", len(rng), dist.world_size
        )
    return step, dict(state["best"]), optimizers
