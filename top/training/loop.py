"""``top.train(config)``: learn ToP's token-pruning gates for a fine-tuned dense model, in a plain loop.

The student starts from the fine-tuned dense model, which also serves as the teacher. For the
first ``PREPRUNING_STEPS`` steps the student is only distilled; then every step samples the
hard-concrete gates, prunes tokens in the student's forward pass and adds the Lagrangian of the
expected MAC sparsity and the ranking distillation to the loss (``top.training.step``).
Every ``eval_steps`` the dev set is scored in ``faithful`` mode with the deterministic gates;
``best/`` keeps the evaluation the ``best_rule`` picks (``top.training.best``). ``last/`` holds
everything a bit-identical ``resume`` needs.

The teacher is frozen and in eval mode, so by default it runs once per training example before the
loop (``top.training.teacher_cache``: ``OUT/teacher-cache/``, reused by a resumed or repeated run);
the only setting of a batch it depends on is the length the batch is cut to, which the cache
handles exactly. ``teacher_cache=False`` runs it at every step instead.

A call from Python leaves the process's random generators, deterministic switches and thread
count as it found them (``determinism.global_state_restored``); it prints nothing to stdout and
never exits: a bad input raises ``top.errors.UserError``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch

from top.data import batching
from top.errors import UserError, error_detail
from top.evaluation import scoring
from top.evaluation.dev import dev_record, score_text
from top.method import flops
from top.method.gates import TokenGates
from top.method.latency import LatencyConstraint
from top.method.modeling import ToPClassifier
from top.runtime import determinism
from top.settings.fields import record as config_record
from top.storage import rundir
from top.storage.io import atomic_write_json
from top.storage.model_files import load_tokenizer
from top.training import batch_order, best, distributed, memory_budget, run_files, teacher_cache
from top.training.checkpoints import restore, save_last, write_pruned
from top.training.config import NO_BEST_EXIT, TrainConfig  # noqa: F401 - NO_BEST_EXIT: the command's
from top.training.plan import Plan, plan_train
from top.training.progress import Callback, Reporter
from top.training.step import PREPRUNING_STEPS, ToPStep, build_optimizers

logger = logging.getLogger(__name__)

# What a checkpoint trained to a target speedup carries of it (top.method.latency.LatencyConstraint.checkpoint_record).
LATENCY_TARGET_FILE = "latency_target.json"


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """Where a run wrote, and what ``summary.json`` says of it."""

    output_dir: Path
    best_dir: Optional[Path]  # None when no evaluation qualified for best/
    last_dir: Path
    summary: Dict[str, Any]
    config: TrainConfig  # as the run resolved it


def train(config: TrainConfig, callback: Optional[Callback] = None) -> TrainResult:
    """Run ``top train`` with ``config``; ``callback`` is told of every step and evaluation."""
    out = Path(config.output_dir)
    if config.resume and config.overwrite_output_dir:
        raise UserError("Give either --resume or --overwrite-output-dir, not both.")
    rundir.refuse_reading_into(out, {"--model": config.model, "--teacher": config.teacher},
                               rundir.RUN_FILES + (teacher_cache.DIRECTORY,))
    dist = distributed.setup_distributed(config.device)
    try:
        # Rank 0 locks OUT, repairs interrupted saves and refuses (or moves aside) another run's
        # best/ and last/ before anyone looks for a saved run.
        saved = rundir.SAVED_DIRECTORIES + (teacher_cache.DIRECTORY,)
        with rundir.claim(out, dist.is_main, saved), determinism.global_state_restored():
            if dist.is_main:
                rundir.take_over(out, config.overwrite_output_dir, config.resume)
            dist.barrier()
            return _train(config, dist, callback)
    finally:
        distributed.teardown_distributed(dist)


def _train(config: TrainConfig, dist: distributed.Distributed, callback: Optional[Callback]) -> TrainResult:
    out = Path(config.output_dir)
    last_dir, best_dir = out / "last", out / "best"
    if config.resume and not run_files.has_state_file(last_dir):
        also = f", with {rundir.OVERWRITE_FLAG} to move aside what it holds" if rundir.held_run(out) else ""
        raise UserError(f"--resume was given but {last_dir} holds no saved run; start without --resume{also}.")
    if config.droprate_init != TrainConfig.droprate_init:
        logger.warning("--droprate-init %g has no effect (deprecated): the token and layer gates start at fixed "
                       "logits, as in the original, which ignores it too.", config.droprate_init)
    given = config
    config, plan = plan_train(given, dist)
    flags = determinism.set_deterministic()
    determinism.seed_everything(config.seed + dist.rank)
    tokenizer = load_tokenizer(plan.student_dir, "--model", "give a model directory with one")
    train_set, dev_set = encode(plan, tokenizer, config.max_seq_length)
    batch_order.apply_length_grouping(config.group_by_length, plan.order, train_set)
    student, teacher = load_models(plan, config.attention)
    gates = TokenGates(list(plan.locations), config.bin_num, layer_init=config.layer_gate_init).to(plan.device)
    warn_if_memory_short(config, plan)
    cache = prepare_teacher_cache(config, plan, teacher, train_set, dist)
    step_fn = ToPStep(student, None if cache else teacher, gates,
                      build_optimizers(student, gates, config, plan.total_steps, pruning=False), config, plan.step,
                      dist)

    # Training state: what last/ saves and --resume restores.
    log = run_files.JsonLog(out / "log.jsonl", dist.is_main)
    step, best_so_far = resume_or_start(given, config, plan, dist, flags, cache, student, gates, step_fn, log)

    reporter = Reporter("train", "ToP", plan.total_steps, step, not config.no_progress and dist.is_main, callback)
    target = plan.step.target(config.target_sparsity)  # of the quantity the Lagrangian holds
    final = None  # the last evaluation's record
    student.train()
    start_time = time.time()
    while step < plan.total_steps:
        if step == PREPRUNING_STEPS and not step_fn.optimizers.pruning:
            step_fn.optimizers = build_optimizers(student, gates, config, plan.total_steps, pruning=True)
            if dist.is_main:
                logger.info("step %d: pruning starts (%d bins at layers %s)", step, gates.bin_num, list(plan.locations))
        pruning = step_fn.optimizers.pruning
        indices, chunk = plan.order.indices(step)
        batch = batching.step_batch(train_set, indices, chunk, plan.device)
        cached = cache.teacher_outputs(indices, batch["input_ids"].shape[1], plan.device) if cache else None
        values = step_fn(batch, step, len(indices) / len(chunk), len(chunk), cached)
        step += 1
        reporter.step(step, values, progress_fields(values))
        if step == plan.step.first_full_target_step and step < plan.total_steps and dist.is_main:
            best.warn_off_target(f"After the warm-up (step {step}), the training batch's {held_name(plan)}",
                                 values[plan.step.measure], target, config.sparsity_epsilon,
                                 config.sparsity_control)
        if step % config.logging_steps == 0 or step == plan.total_steps:
            learning_rate = step_fn.optimizers.scheduler.get_last_lr()[0]
            log.write({"step": step, "epoch": step / plan.order.steps_per_epoch, "learning_rate": learning_rate,
                       **values})

        if step % config.eval_steps == 0 or step == plan.total_steps:
            if dist.is_main:
                final = evaluate_student(student, gates, dev_set, plan, config, step, pruning)
                best_so_far = keep_if_best(final, best_so_far, target, best_dir, student, gates, tokenizer, plan,
                                           config)
                log.write(final)
                reporter.evaluation(step, final, eval_line(final, plan.data.metric, config.target_sparsity))
            dist.barrier()
        if step % config.save_steps == 0 or step == plan.total_steps:
            save_last(last_dir, step, plan.total_steps, best_so_far, student, gates, tokenizer, step_fn.optimizers,
                      config, dist)
            dist.barrier()
    reporter.close()

    summary: Dict[str, Any] = {}
    if dist.is_main:
        if final is None:  # a finished run resumed: its last evaluation is in the log
            final = log.last_record_with("eval")
        summary = finish_summary(out, final, best_so_far, step, target, time.time() - start_time, plan, config)
    has_best = best_so_far["score"] is not None
    return TrainResult(out, best_dir if has_best else None, last_dir, summary, config)


def resume_or_start(given: TrainConfig, config: TrainConfig, plan: Plan, dist: distributed.Distributed, flags,
                    cache, student, gates, step_fn: ToPStep, log: run_files.JsonLog) -> Tuple[int, Dict[str, Any]]:
    """``(step, best so far)``: restored from last/ with ``--resume`` (the optimisers into ``step_fn``, the log cut
    back to that step), else ``(0, no best)`` with run.json written for a new run."""
    out = Path(config.output_dir)
    if not config.resume:
        if dist.is_main:
            run_files.start_run(out, "train", config_record(given), config_record(config),
                                run_record(plan, dist, flags, cache))
        return 0, dict(best.NO_BEST)
    check_same_latency_model(out, plan)
    step, best_so_far, step_fn.optimizers = restore(out / "last", student, gates, config, plan.total_steps, dist)
    log.truncate_after(step)
    if dist.is_main:
        logger.info("resumed from %s at step %d", out / "last", step)
    return step, best_so_far


def keep_if_best(record: Dict[str, Any], best_so_far: Dict[str, Any], target: float, best_dir: Path, student, gates,
                 tokenizer, plan: Plan, config: TrainConfig) -> Dict[str, Any]:
    """The best-so-far after the evaluation ``record`` (``target``: of the quantity the Lagrangian holds), with
    ``best_dir`` rewritten when it qualifies (rank 0)."""
    best_so_far = best.apply_best_rule(record, best_so_far, target, config.sparsity_epsilon, config.best_rule,
                                       plan.step.measure)
    if record["is_best"]:
        extra = None
        if plan.step.latency is not None:
            extra = {LATENCY_TARGET_FILE: plan.step.latency.checkpoint_record(record)}
        write_pruned(best_dir, student, gates, tokenizer, {"step": record["step"], "eval": record}, extra)
    return best_so_far


def finish_summary(out: Path, final: Dict[str, Any], best_so_far: Dict[str, Any], step: int, target: float,
                   seconds: float, plan: Plan, config: TrainConfig) -> Dict[str, Any]:
    """``summary.json`` of a finished run, written, from its last evaluation ``final`` (rank 0)."""
    sparsity = best.final_sparsity(final, step, target, config.sparsity_epsilon, config.sparsity_control,
                                   PREPRUNING_STEPS, plan.step.measure)
    return write_summary(out, plan.data.metric, best_so_far, config, step, seconds, sparsity, plan.step.latency,
                         final)


def check_same_latency_model(out: Path, plan: Plan) -> None:
    """A resumed run keeps the latency model it started with (``run.json`` records its sha256)."""
    if plan.step.latency is None:
        return
    try:
        started = json.loads((out / "run.json").read_text(encoding="utf-8"))["latency_constraint"]["latency_model"]
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError(f"{out / 'run.json'} records no latency model, so the run did not start with --target-speedup; "
                        "resume it with the flags it started with.") from None
    now = plan.step.latency.model
    if started.get("sha256") != now.fingerprint:
        raise UserError(f"--latency-model {now.path} is not the file the run started with (sha256 "
                        f"{str(started.get('sha256'))[:12]} then, {now.fingerprint[:12]} now); resume with that file.")


def encode(plan: Plan, tokenizer, max_seq_length: int):
    """The train and dev sets tokenised at ``max_seq_length``, their ids checked against the model."""
    train_set = batching.encode_set(plan.data.train, tokenizer, max_seq_length, what="the training data")
    dev_set = batching.encode_set(plan.data.dev, tokenizer, max_seq_length, what="the dev set")
    for encoded in (train_set, dev_set):
        batching.check_token_ids(encoded, plan.student_config, f"--model {plan.student_dir}")
    return train_set, dev_set


def load_models(plan: Plan, attention: str = "eager"):
    """The student (pruning at the plan's locations) and the teacher (in eval mode, never pruned) on its device.

    Both are built with ``attention`` ("sdpa": the fused kernel wherever nothing reads a layer's
    attention probabilities; see ``top.method.modeling.set_attention``).
    """
    try:
        # Read by top.storage.safeload and loaded strictly: a hostile or incomplete file stops the run.
        student = ToPClassifier.from_pretrained(plan.student_dir, prune_locations=list(plan.locations),
                                                flag="--model", attention=attention, config=plan.student_config)
        teacher = ToPClassifier.from_pretrained(plan.teacher_dir, prune_locations=[], flag="--teacher",
                                                attention=attention, config=plan.teacher_config)
    except (OSError, RuntimeError, ValueError) as error:
        raise UserError(
            f"The student or teacher weights cannot be loaded ({error_detail(error)}); "
            "give fine-tuned model directories."
        ) from None
    student.config.finetuning_task = plan.data.name
    student.to(plan.device)
    teacher.to(plan.device).eval()
    return student, teacher


def warn_if_memory_short(config: TrainConfig, plan: Plan) -> None:
    """One sentence before the run starts when a step at this batch and length will not fit the memory free here
    (the teacher counts only when it runs every step; with sdpa on a GPU only the ranking layers materialise
    their attention)."""
    materialised = None
    if plan.device.type == "cuda" and config.attention == "sdpa":
        materialised = len(set(plan.locations) | set(plan.step.rank_layers))
    estimate = memory_budget.training_estimate(
        plan.student_config, config.batch_size, config.max_seq_length,
        teacher_config=None if config.teacher_cache else plan.teacher_config, materialised_layers=materialised,
    )
    warning = memory_budget.memory_warning(estimate, memory_budget.available_bytes(str(plan.device)),
                                           config.batch_size, config.max_seq_length, f"--model {config.model}")
    if warning:
        logger.warning("%s", warning)


def prepare_teacher_cache(config: TrainConfig, plan: Plan, teacher, train_set: Dict[str, torch.Tensor],
                          dist: distributed.Distributed) -> Optional[teacher_cache.TeacherCache]:
    """The teacher's outputs for the run's whole schedule (``OUT/teacher-cache/``, built or reused;
    see ``top.training.teacher_cache``), or None without the cache: then the teacher runs every step."""
    if not config.teacher_cache:
        return None
    return teacher_cache.prepare(
        Path(config.output_dir) / teacher_cache.DIRECTORY, teacher, plan.teacher_dir, train_set, plan.order,
        plan.total_steps, config.eval_batch_size, dist, progress=not config.no_progress,
    )


def evaluate_student(student, gates, dev_set, plan: Plan, config: TrainConfig, step: int,
                     pruning: bool) -> Dict[str, Any]:
    """The dev score in faithful mode with the deterministic gates (dense before pruning starts)."""
    token_z, pruner_z = gates.deterministic() if pruning else (None, None)

    def sparsities(batch, output):
        s, seq = flops.expected_sparsities(
            token_z, pruner_z, gates.prune_locations, student.config, batch["attention_mask"], plan.data.task_length
        )
        return float(s), float(seq)

    student.eval()
    scored = scoring.predict(
        lambda batch: student(
            **batching.model_inputs(batch), mode="faithful", token_z=token_z, pruner_z=pruner_z, probability_layers=()
        ),
        dev_set,
        config.eval_batch_size,
        plan.device,
        trim=not pruning,  # faithful: padded to max_seq_length, as `top eval` scores it
        measure=sparsities if pruning else None,
    )
    student.train()
    record = {"step": step, **dev_record(plan.data, scored, scored.per_batch if pruning else None)}
    if pruning:
        record["kept_bins"] = token_z.sum(dim=1).tolist()
        record["layer_gates"] = pruner_z.tolist()
        if plan.step.latency is not None:
            lengths = dev_set.lengths.tolist()
            record.update(plan.step.latency.figures(lengths, token_z, pruner_z, gates.prune_locations))
    return record


def held_name(plan: Plan) -> str:
    """What the Lagrangian holds, in words."""
    return "expected sparsity" if plan.step.latency is None else "expected latency sparsity"


def progress_fields(values: Dict[str, float]) -> Dict[str, str]:
    """The progress bar's fields: the losses and multipliers, then what the constraint holds."""
    fields = {
        "loss": f"{values['loss']:.4f}",
        "task": f"{values['task_loss']:.4f}",
        "lag": f"{values['lagrangian']:.4f}",
        "l1": f"{values['lambda_1']:.3f}",
        "l2": f"{values['lambda_2']:.3f}",
    }
    if "expected_latency_sparsity" in values:
        fields["latency"] = f"{values['expected_latency_sparsity']:.3f}/{values['target']:.3f}"
        fields["speedup"] = f"{values['predicted_speedup']:.2f}x"
    else:
        fields["sparsity"] = f"{values['expected_sparsity']:.3f}/{values['target']:.3f}"
    return fields


def eval_line(record: Dict[str, Any], metric: str, target: float) -> str:
    line = f"step {record['step']}: {metric} {score_text(record['score'])}"
    if "expected_sparsity" in record:
        line += f", expected sparsity {record['expected_sparsity']:.4f} (target {target})"
    if "predicted_speedup" in record:
        line += f", predicted speedup {record['predicted_speedup']:.2f}x"
    return line


def run_record(plan: Plan, dist: distributed.Distributed, flags: Dict[str, Any], cache=None) -> Dict[str, Any]:
    """What ``run.json`` records besides the command line and the resolved config: what the run derived."""
    return {
        "prune_locations": list(plan.locations),
        "total_steps": plan.total_steps,
        "warmup_steps": plan.step.warmup_steps,
        "steps_per_epoch": plan.order.steps_per_epoch,
        "world_size": dist.world_size,
        "deterministic": flags,
        "teacher_cache": {"used": cache is not None, "key": cache.key if cache is not None else None},
        **({} if plan.step.latency is None else {"latency_constraint": plan.step.latency.record()}),
    }


def write_summary(out: Path, metric: str, best_so_far: Dict[str, Any], config: TrainConfig, steps: int,
                  seconds: float, final_sparsity: Optional[float] = None, latency: Optional[LatencyConstraint] = None,
                  final: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """``summary.json``: the best evaluation, the last one's expected sparsity and whether it is within
    target +- epsilon (``reached_target``); returned as written.

    With a ``latency`` constraint, ``final_sparsity`` is the last evaluation's latency sparsity, which
    ``reached_target`` judges; the summary adds the target speedup, the latency model's sha256, the
    sparsity and FLOPs reduction the target implies, and the last evaluation's predicted speedup
    (the best one's is in ``best``)."""
    target, epsilon = config.target_sparsity, config.sparsity_epsilon
    summary = {
        "metric": metric, "best": best_so_far, "target_sparsity": target, "steps": steps, "seconds": round(seconds, 1),
        "final_expected_sparsity": final_sparsity,
        "reached_target": final_sparsity is not None and best.within_band(final_sparsity, target, epsilon),
        "sparsity_epsilon": epsilon,
    }
    if latency is not None:
        final = final or {}
        summary.update(latency.record())
        summary.update(
            final_expected_sparsity=final.get("expected_sparsity"),
            final_expected_latency_sparsity=final_sparsity,
            final_predicted_speedup=final.get("predicted_speedup"),
            reached_target=final_sparsity is not None and best.within_band(final_sparsity, latency.target, epsilon),
        )
    atomic_write_json(out / "summary.json", summary)
    return summary
