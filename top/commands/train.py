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
``best/`` keeps the best score among evaluations whose expected sparsity reached target - eps
(``--best-rule``). After the warm-up and at the end, a sparsity outside target +- eps is a warning.
``--sparsity-control adaptive`` sets the lambdas by a controller (``top.method.sparsity_control``) instead.
``last/`` holds everything a bit-identical ``--resume`` needs.

The teacher is frozen and in eval mode, so by default it runs once per training example before the
loop (``top.training.teacher_cache``: ``OUT/teacher-cache/``, reused by a resumed or repeated run); the only
setting of a batch it depends on is the length the batch is cut to, which the cache handles exactly.
``--no-teacher-cache`` runs it at every step instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import torch
import torch.nn.functional as F

from top.commands import options
from top.commands.argtypes import (
    any_float,
    epoch_count,
    finite_float,
    int_in_range,
    non_negative_float,
    positive_float,
    positive_int,
    step_count,
    warmup_epoch_count,
)
from top.data import batching
from top.data.batching import check_max_seq_length
from top.data.loading import TaskData
from top.errors import UserError
from top.evaluation import scoring
from top.evaluation.metrics import compute_metrics
from top.method import flops, sparsity_control
from top.method.checkpoint import check_config, check_config_file, load_checkpoint, save_checkpoint
from top.method.gates import (
    LAYER_GATE_INIT,
    TOKEN_GATE_INIT,
    TokenGates,
    check_prune_locations,
    default_prune_locations,
)
from top.method.losses import default_rank_layers, lagrangian_loss, logit_distillation_loss, rank_distillation_loss
from top.method.modeling import ATTENTIONS, ToPForSequenceClassification
from top.storage import rundir
from top.storage.hub import resolve_model
from top.storage.io import atomic_directory, atomic_write_json
from top.training import batch_order, determinism, distributed, listeners, optimisers, run_files, teacher_cache

logger = logging.getLogger(__name__)

# The original starts pruning after this many steps of plain distillation.
PREPRUNING_STEPS = 2
# Presets for a user's own data (the large GLUE tasks' numbers).
CUSTOM_PRESET = {"bin_num": 50, "topk": 20, "warmup_epochs": 10, "epochs": 40}
# A MAC sparsity to reach: strictly between 0 and 1.
SPARSITY = finite_float(min=0.0, max=1.0, min_inclusive=False, max_inclusive=False)
# --best-rule's choices; the first is the default (the paper's rule).
BEST_RULES = ("score", "nearest-target")
# --eval-steps: the default cadence; `auto` keeps it unless that gives fewer than AUTO_EVALUATIONS
# evaluations after the warm-up; fewer than FEW_EVALUATIONS there is a warning.
EVAL_STEPS = 100
AUTO_EVALUATIONS = 10
FEW_EVALUATIONS = 5


def eval_cadence(text: str):
    """``--eval-steps``: a positive whole number of steps, or ``auto``."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither a positive whole number of steps nor auto; give one such as 100, or auto"
        ) from None
# --droprate-init's value in the original's scripts (run_TokenPrune.sh); its L0 module stores it but
# starts the token and layer gates at fixed logits, so it has no effect there, nor here.
DROPRATE_INIT = 0.01
# Rank bins and ranked tokens: no more than the positions of the longest model top builds.
TOKEN_COUNT = int_in_range(1, 8192, " (no model top builds has more positions)")


@dataclasses.dataclass(frozen=True)
class TrainOptions:
    """`top train`'s flags, built once in ``run``; None where the task preset decides (``ToPSettings``)."""

    model: str
    teacher: str
    data: options.DataSource
    run: options.RunOptions
    schedule: options.Schedule
    target_sparsity: Optional[float] = None
    warmup_epochs: Optional[float] = None
    bin_num: Optional[int] = None
    topk: Optional[int] = None
    prune_location: Optional[str] = None  # comma-separated; None: 2..L-1
    learning_rate: float = 1e-5
    reg_learning_rate: float = 0.02
    rank_loss_alpha: float = 0.01
    sparsity_control: str = sparsity_control.CONTROLS[0]
    sparsity_epsilon: float = 0.01
    best_rule: str = BEST_RULES[0]
    layer_gate_init: float = LAYER_GATE_INIT
    distill_temperature: float = 2.0
    attention: str = "sdpa"
    teacher_cache: bool = True
    eval_steps: Union[int, str] = EVAL_STEPS  # or "auto"
    save_steps: int = 500
    resume: bool = False
    # The command line as parsed, for run.json's "args" (not a setting: two equal runs may differ here).
    arguments: Mapping[str, Any] = dataclasses.field(default_factory=dict, compare=False, repr=False)


@dataclasses.dataclass(frozen=True)
class ToPSettings:
    """The ToP settings of a run, the flags resolved against the task's preset (run.json's "settings")."""

    target_sparsity: float
    bin_num: int
    topk: int
    warmup_epochs: float
    epochs: float


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="the fine-tuned dense student (directory or hub id)")
    parser.add_argument("--teacher", required=True, help="the fine-tuned dense teacher (usually the same model)")
    options.add_data_arguments(parser)
    parser.add_argument("--target-sparsity", type=SPARSITY, help="MAC sparsity to reach (default: the task preset)")
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=epoch_count, help="default: the task preset")
    length.add_argument("--max-steps", type=step_count, help="stop after this many steps (overrides --epochs)")
    parser.add_argument(
        "--warmup-epochs", type=warmup_epoch_count, help="Lagrangian warm-up (default: the task preset)"
    )
    parser.add_argument(
        "--bin-num", type=TOKEN_COUNT, help="rank bins per prune location, 1..8192 (default: the task preset)"
    )
    parser.add_argument(
        "--topk", type=TOKEN_COUNT, help="tokens ranked by the rank distillation (default: the task preset)"
    )
    parser.add_argument("--prune-location", help="comma-separated layer indices (default: 2..L-1)")
    defaults = TrainOptions
    parser.add_argument("--learning-rate", type=non_negative_float, default=defaults.learning_rate)
    parser.add_argument("--reg-learning-rate", type=positive_float, default=defaults.reg_learning_rate,
                        help="lr of the gates and lambdas")
    parser.add_argument("--rank-loss-alpha", type=non_negative_float, default=defaults.rank_loss_alpha)
    parser.add_argument(
        "--sparsity-control", choices=sparsity_control.CONTROLS, default=defaults.sparsity_control,
        help="how the Lagrange multipliers move. paper (the default): AdamW ascent at --reg-learning-rate, as the "
        "original, which settles on long schedules and can overshoot short ones; adaptive: a proportional-derivative "
        "controller on the gap to the target, which settles within tens of steps once the gates can move",
    )
    parser.add_argument(
        "--sparsity-epsilon", type=non_negative_float, default=defaults.sparsity_epsilon,
        help="the band around the target: best/ needs target - eps, and a sparsity outside target +- eps after the "
        "warm-up or at the end is a warning",
    )
    parser.add_argument(
        "--best-rule", choices=BEST_RULES, default=defaults.best_rule,
        help="which evaluation best/ keeps. score (the default, the paper's): the best score among those whose "
        "expected sparsity reached target - eps; nearest-target: among those within target +- eps, the one nearest "
        "the target (the better score of equally near ones)",
    )
    parser.add_argument(
        "--layer-gate-init", type=any_float, default=defaults.layer_gate_init,
        help="initial logit of the layer gates: -10 (off, the paper's) lets the constraint switch locations on; "
        "a positive value starts every location pruning, which suits short schedules",
    )
    parser.add_argument(
        "--droprate-init", type=finite_float(min=0.0, max=1.0), default=DROPRATE_INIT,
        help="deprecated, and ignored as the original ignores it: its token and layer gates start at logits 10 "
        "and -10 whatever this is; accepted (and recorded in run.json) for the original's scripts",
    )
    parser.add_argument("--distill-temperature", type=positive_float, default=defaults.distill_temperature)
    parser.add_argument(
        "--attention", choices=ATTENTIONS, default=defaults.attention,
        help="sdpa: the fused kernel in every layer whose attention probabilities nothing reads (where this "
        "torch and transformers have it); eager: every layer materialises them, as the original (bit-identical "
        "to it)",
    )
    parser.add_argument(
        "--teacher-cache", dest="teacher_cache", action="store_true", default=defaults.teacher_cache,
        help="run the teacher once per training example before the loop and read its outputs from "
        "OUT/teacher-cache/ (the default; reused while the teacher, data and schedule are unchanged)",
    )
    parser.add_argument(
        "--no-teacher-cache", dest="teacher_cache", action="store_false",
        help="run the teacher at every step instead (with --attention eager, bit-identical to training before "
        "the cache and the fused kernel)",
    )
    parser.add_argument(
        "--eval-steps", type=eval_cadence, default=defaults.eval_steps,
        help=f"score the dev set every this many steps (and after the last); auto: every {EVAL_STEPS}, or more "
        f"often where that gives fewer than {AUTO_EVALUATIONS} evaluations after the warm-up (for short runs)",
    )
    parser.add_argument("--save-steps", type=positive_int, default=defaults.save_steps,
                        help="write last/ every this many steps")
    options.add_run_arguments(parser)
    parser.add_argument("--resume", action="store_true", help="continue from OUT/last")


# ----------------------------------------------------------------------------------------------
# Settings


def resolve_settings(opts: TrainOptions, task) -> ToPSettings:
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
    target = opts.target_sparsity
    if target is None:
        if task is None:
            raise UserError("Custom data has no preset target; pass --target-sparsity, e.g. 0.5.")
        target = task.preset.sparsity
    return ToPSettings(
        target_sparsity=float(target),
        bin_num=opts.bin_num if opts.bin_num is not None else preset["bin_num"],
        topk=opts.topk if opts.topk is not None else preset["topk"],
        warmup_epochs=opts.warmup_epochs if opts.warmup_epochs is not None else preset["warmup_epochs"],
        epochs=opts.schedule.epochs if opts.schedule.epochs is not None else preset["epochs"],
    )


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

    check_config_file(directory, f"The config.json of {flag} {name}")
    try:
        config = AutoConfig.from_pretrained(str(directory))
    except Exception as error:
        raise UserError(
            f"{flag} {name} is not a model directory or hub id ({type(error).__name__}); fix the path."
        ) from None
    return check_config(config, f"The config.json of {flag} {name}")


def check_teacher(student_config, teacher_config, num_labels: int, opts: TrainOptions) -> None:
    if teacher_config.num_labels != student_config.num_labels:
        raise UserError(
            f"The teacher {opts.teacher} has {teacher_config.num_labels} labels but the student {opts.model} has "
            f"{student_config.num_labels}; give a teacher fine-tuned on the same task."
        )
    if teacher_config.vocab_size != student_config.vocab_size:
        raise UserError(
            f"The teacher {opts.teacher} has a vocabulary of {teacher_config.vocab_size} but the student has "
            f"{student_config.vocab_size}; give a teacher with the student's tokenizer."
        )
    if student_config.num_labels != num_labels:
        raise UserError(
            f"The student {opts.model} has {student_config.num_labels} labels but the data has {num_labels}; "
            "fine-tune it on this data first (`top finetune`)."
        )


# ----------------------------------------------------------------------------------------------
# The run


def train_options(args: argparse.Namespace) -> TrainOptions:
    """`top train`'s flags as one frozen object: the edge past which no Namespace travels."""
    return options.settings_from(
        TrainOptions, args, data=options.data_source(args), run=options.run_options(args),
        schedule=options.schedule(args), arguments=options.arguments_record(args),
    )


def run(args: argparse.Namespace) -> int:
    if args.droprate_init != DROPRATE_INIT:
        logger.warning("--droprate-init %g has no effect (deprecated): the token and layer gates start at logits "
                       "%g and %g, as in the original, which ignores it too.", args.droprate_init, TOKEN_GATE_INIT,
                       LAYER_GATE_INIT)
    opts = train_options(args)
    dist = distributed.setup_distributed(opts.run.device)
    try:
        # Rank 0 locks OUT and repairs interrupted saves before anyone looks for a saved run.
        saved = rundir.SAVED_DIRECTORIES + (teacher_cache.DIRECTORY,)
        with rundir.claim(opts.run.output_dir, dist.is_main, saved):
            dist.barrier()
            return train(opts, dist)
    finally:
        distributed.teardown_distributed(dist)


def train(opts: TrainOptions, dist: distributed.Distributed) -> int:
    from tqdm import tqdm

    out = opts.run.output_dir
    last_dir, best_dir = out / "last", out / "best"
    if opts.resume and not run_files.has_state_file(last_dir):
        raise UserError(f"--resume was given but {last_dir} holds no saved run; start without --resume.")
    plan = plan_run(opts, dist)
    flags = determinism.set_deterministic()
    determinism.seed_everything(opts.run.seed + dist.rank)
    tokenizer, train_set, dev_set = options.encode_data(plan.data, plan.student_dir, "--model", opts.model,
                                                         opts.run.max_seq_length)
    batch_order.apply_length_grouping(opts.run.group_by_length, plan.order, train_set)
    order, total_steps, device, hp = plan.order, plan.total_steps, plan.device, plan.step_settings
    eval_steps = plan.eval_steps
    student, teacher = load_models(
        plan.student_dir, plan.teacher_dir, plan.locations, plan.data.name, device, opts.attention
    )
    gates = TokenGates(plan.locations, plan.settings.bin_num, layer_init=opts.layer_gate_init).to(device)
    cache = prepare_teacher_cache(opts, plan, teacher, train_set, dist)
    if cache is not None:
        teacher = None  # every step reads its outputs from the cache

    # Training state: what last/ saves and --resume restores.
    step, best = 0, dict(NO_BEST)
    optimizers = build_optimizers(student, gates, opts, total_steps, pruning=False)
    log = run_files.JsonLog(out / "log.jsonl", dist.is_main)
    if opts.resume:
        step, best, optimizers = restore(last_dir, student, gates, opts, total_steps, dist)
        log.truncate_after(step)
        if dist.is_main:
            logger.info("resumed from %s at step %d", last_dir, step)
    elif dist.is_main:
        run_files.start_run(out, "train", opts.arguments, run_record(plan, opts, dist, flags, cache))

    bar = tqdm(total=total_steps, initial=step, desc="ToP", disable=opts.run.no_progress or not dist.is_main,
               dynamic_ncols=True)
    final = None  # the last evaluation's record
    student.train()
    start_time = time.time()
    while step < total_steps:
        if step == PREPRUNING_STEPS and "gates" not in optimizers:
            optimizers = build_optimizers(student, gates, opts, total_steps, pruning=True)
            if dist.is_main:
                logger.info("step %d: pruning starts (%d bins at layers %s)", step, gates.bin_num, plan.locations)
        pruning = "gates" in optimizers
        indices, chunk = order.indices(step)
        batch = batching.step_batch(train_set, indices, chunk, device)
        cached = cache.teacher_outputs(indices, batch["input_ids"].shape[1], device) if cache else None
        values = train_step(
            student, teacher, gates, optimizers, batch, step, len(indices) / len(chunk), len(chunk), hp, dist, cached
        )
        step += 1
        show_progress(bar, values)
        listeners.step_finished("train", step, total_steps)
        if step == first_full_target_step(hp) and step < total_steps and dist.is_main:
            check_warmup_sparsity(values, step, hp.target_sparsity, opts)
        if step % opts.run.logging_steps == 0 or step == total_steps:
            learning_rate = optimizers["scheduler"].get_last_lr()[0]
            log.write({"step": step, "epoch": step / order.steps_per_epoch, "learning_rate": learning_rate, **values})

        if step % eval_steps == 0 or step == total_steps:
            if dist.is_main:
                final, best = evaluate_and_keep_best(student, gates, tokenizer, dev_set, plan, opts, step, pruning,
                                                     best, best_dir, log, bar)
            dist.barrier()
        if step % opts.save_steps == 0 or step == total_steps:
            save_last(last_dir, opts, step, total_steps, best, student, gates, tokenizer, optimizers, dist)
            dist.barrier()
    bar.close()

    if dist.is_main:
        final_sparsity = check_final_sparsity(final, log, step, hp.target_sparsity, opts)
        write_summary(out, plan.data.metric, best, hp.target_sparsity, opts.sparsity_epsilon, step,
                      time.time() - start_time, final_sparsity)
    return 0


# ----------------------------------------------------------------------------------------------
# Before the loop


@dataclasses.dataclass(frozen=True)
class StepSettings:
    """What one ToP step needs besides the models, the optimisers and the batch."""

    seed: int  # with the step's index, seeds the step's gate sample
    target_sparsity: float
    warmup_steps: int  # of the target's ramp, counted from the first pruning step
    rank_loss_alpha: float
    topk: int
    distill_temperature: float
    max_grad_norm: float
    regression: bool  # the task loss is the MSE against the labels, not distillation
    task_length: int  # the length the expected sparsity is counted at
    rank_layers: Tuple[int, ...]  # the student layers the rank distillation teaches


@dataclasses.dataclass
class Plan:
    """A run's inputs, checked before any weights load, and its length."""

    data: TaskData
    settings: ToPSettings
    student_dir: Path  # --model and --teacher, resolved to local directories
    teacher_dir: Path
    locations: List[int]
    device: torch.device
    order: batch_order.BatchOrder
    total_steps: int
    step_settings: StepSettings
    eval_steps: int  # --eval-steps, auto resolved


def plan_run(opts: TrainOptions, dist: distributed.Distributed) -> Plan:
    """Everything that can be wrong with the input, checked before any weights load."""
    data = opts.data.load(opts.run.max_seq_length)
    settings = resolve_settings(opts, None if data.is_custom else data.task)
    student_dir = resolve_model(opts.model, "--model")
    teacher_dir = resolve_model(opts.teacher, "--teacher")
    student_config = load_config(student_dir, "--model", opts.model)
    teacher_config = load_config(teacher_dir, "--teacher", opts.teacher)
    check_teacher(student_config, teacher_config, data.num_labels, opts)
    for config, flag, name in ((student_config, "--model", opts.model), (teacher_config, "--teacher", opts.teacher)):
        check_max_seq_length(opts.run.max_seq_length, config, f"{flag} {name}")
    locations = prune_locations(opts.prune_location, student_config.num_hidden_layers)
    device = options.resolve_device(opts.run.device, dist.local_rank)
    if dist.is_main:
        logger.info(
            "prune locations %s for a %d-layer model%s",
            locations,
            student_config.num_hidden_layers,
            "" if opts.prune_location else " (default 2..L-1)",
        )
        logger.info("settings %s", dataclasses.asdict(settings))
    order = batch_order.BatchOrder(len(data.train), opts.run.batch_size, opts.run.seed, dist.world_size, dist.rank)
    total_steps = opts.schedule.total_steps(order.steps_per_epoch, settings.epochs)
    step_settings = StepSettings(
        seed=opts.run.seed,
        target_sparsity=settings.target_sparsity,
        warmup_steps=int(round(settings.warmup_epochs * order.steps_per_epoch)),
        rank_loss_alpha=opts.rank_loss_alpha,
        topk=settings.topk,
        distill_temperature=opts.distill_temperature,
        max_grad_norm=opts.run.max_grad_norm,
        regression=data.is_regression,
        task_length=data.task_length,
        rank_layers=tuple(default_rank_layers(student_config.num_hidden_layers)),
    )
    eval_steps = resolve_eval_steps(opts.eval_steps, total_steps, first_full_target_step(step_settings))
    if dist.is_main:
        warn_few_evaluations(opts.eval_steps, eval_steps, total_steps, first_full_target_step(step_settings))
    return Plan(
        data, settings, student_dir, teacher_dir, locations, device, order, total_steps, step_settings, eval_steps
    )


def evaluations_from(first: int, eval_steps: int, total_steps: int) -> int:
    """How many evaluations (every ``eval_steps`` steps, and after the last) fall at steps ``first..total_steps``."""
    if first > total_steps:
        return 0
    count = total_steps // eval_steps - (first - 1) // eval_steps
    return count + (1 if total_steps % eval_steps else 0)


def resolve_eval_steps(flag, total_steps: int, first: int) -> int:
    """``--eval-steps``, with ``auto`` made a number: EVAL_STEPS, or the largest cadence that gives
    AUTO_EVALUATIONS evaluations at steps ``first..total_steps`` (every step, if that is too few)."""
    if flag != "auto":
        return int(flag)
    span = total_steps - first + 1
    if span <= 0:  # no step after the warm-up: only the final evaluation counts
        return EVAL_STEPS
    return max(1, min(EVAL_STEPS, span // AUTO_EVALUATIONS))


def warn_few_evaluations(flag, eval_steps: int, total_steps: int, first: int) -> None:
    """A warning before training when best/ will have fewer than FEW_EVALUATIONS after the warm-up to choose from."""
    count = evaluations_from(first, eval_steps, total_steps)
    if count >= FEW_EVALUATIONS:
        return
    if first > total_steps:
        logger.warning(
            "The warm-up lasts past the run's %d steps (the target is full from step %d), so no evaluation comes "
            "after it for best/ to choose from; train for more steps or shorten --warmup-epochs.", total_steps, first,
        )
        return
    if total_steps - first + 1 < FEW_EVALUATIONS:
        advice = "train for more steps or shorten --warmup-epochs"
    else:
        advice = f"pass --eval-steps {resolve_eval_steps('auto', total_steps, first)} or --eval-steps auto"
    logger.warning(
        "--eval-steps %s gives %d evaluation%s after the warm-up (steps %d-%d), fewer than %d for best/ to choose "
        "from; %s.", flag, count, "" if count == 1 else "s", first, total_steps, FEW_EVALUATIONS, advice,
    )


def run_record(
    plan: Plan, opts: TrainOptions, dist: distributed.Distributed, flags: Dict[str, Any], cache=None
) -> Dict[str, Any]:
    """What ``run.json`` records of the run besides its arguments."""
    return {
        "settings": dataclasses.asdict(plan.settings),
        "options": options.settings_record(opts),  # every flag resolved, as the run used it
        "prune_locations": plan.locations,
        "total_steps": plan.total_steps,
        "warmup_steps": plan.step_settings.warmup_steps,
        "sparsity_control": opts.sparsity_control,
        "eval_steps": plan.eval_steps,
        "steps_per_epoch": plan.order.steps_per_epoch,
        "world_size": dist.world_size,
        "deterministic": flags,
        "teacher_cache": {"used": cache is not None, "key": cache.key if cache is not None else None},
    }


def prepare_teacher_cache(opts: TrainOptions, plan: Plan, teacher, train_set: Dict[str, torch.Tensor],
                          dist: distributed.Distributed) -> Optional[teacher_cache.TeacherCache]:
    """The teacher's outputs for the run's whole schedule (``OUT/teacher-cache/``, built or reused;
    see ``top.training.teacher_cache``), or None with ``--no-teacher-cache``: then the teacher runs every step."""
    if not opts.teacher_cache:
        return None
    return teacher_cache.prepare(
        opts.run.output_dir / teacher_cache.DIRECTORY, teacher, plan.teacher_dir, train_set, plan.order,
        plan.total_steps, opts.run.eval_batch_size, dist, progress=not opts.run.no_progress,
    )


def load_models(student_dir: Path, teacher_dir: Path, locations: List[int], task_name: str, device: torch.device,
                attention: str = "eager"):
    """The student (pruning at ``locations``) and the teacher (in eval mode, never pruned) on ``device``.

    Both are built with ``attention`` ("sdpa": the fused kernel wherever nothing reads a layer's
    attention probabilities; see ``top.method.modeling.set_attention``).
    """
    try:
        # Read by top.storage.safeload and loaded strictly: a hostile or incomplete file stops the run.
        student = ToPForSequenceClassification.from_pretrained(
            student_dir, prune_locations=locations, flag="--model", attention=attention
        )
        teacher = ToPForSequenceClassification.from_pretrained(
            teacher_dir, prune_locations=[], flag="--teacher", attention=attention
        )
    except (OSError, RuntimeError, ValueError) as error:
        raise UserError(
            f"The student or teacher weights cannot be loaded ({str(error).splitlines()[0][:200]}); "
            "give fine-tuned model directories."
        ) from None
    student.config.finetuning_task = task_name
    student.to(device)
    teacher.to(device).eval()
    return student, teacher


def build_optimizers(student, gates, opts: TrainOptions, total_steps: int, pruning: bool) -> Dict[str, Any]:
    """AdamW for the weights with its linear schedule; once pruning, AdamW for the gates and, with
    ``--sparsity-control paper``, for the lambdas (``adaptive``: ``top.method.sparsity_control``).

    Pruning starts with fresh optimisers whose schedule spans the remaining steps, as in the original.
    """
    weights = torch.optim.AdamW(optimisers.weight_parameter_groups(student, opts.learning_rate, opts.run.weight_decay))
    schedule_steps = total_steps - PREPRUNING_STEPS if pruning else total_steps
    optimizers = {"weights": weights, "scheduler": optimisers.linear_schedule(weights, schedule_steps)}
    if pruning:
        optimizers["gates"] = torch.optim.AdamW(gates.gate_parameters(), lr=opts.reg_learning_rate, weight_decay=0.0)
        if opts.sparsity_control == "adaptive":
            optimizers["lambdas"] = sparsity_control.AdaptiveMultipliers(gates.lambda_1, gates.lambda_2)
        else:
            # The multipliers climb the Lagrangian: gradient ascent.
            optimizers["lambdas"] = torch.optim.AdamW(
                gates.lambda_parameters(), lr=opts.reg_learning_rate, weight_decay=0.0, maximize=True
            )
    return optimizers


# ----------------------------------------------------------------------------------------------
# One step


def warmup_ramp(pruned_steps: int, warmup_steps: int, target: float, rank_loss_alpha: float) -> Tuple[float, float]:
    """The target sparsity and the rank-loss weight after ``pruned_steps`` steps of pruning.

    The target climbs linearly from 0 over the warm-up; the rank weight falls from alpha to alpha/100.
    """
    progress = 1.0 if warmup_steps <= 0 else min(1.0, pruned_steps / warmup_steps)
    return target * progress, rank_loss_alpha * max(0.01, 1.0 - progress)


def first_full_target_step(hp: StepSettings) -> int:
    """The number of steps done when the first step at the full target (after the warm-up) has run."""
    return PREPRUNING_STEPS + hp.warmup_steps + 1


def sample_gates(gates, seed: int, step: int, device: torch.device):
    """The step's gate sample, the same on every rank and after a resume: its own seed per step."""
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        torch.manual_seed(seed * 1_000_003 + step)
        return gates.sample()


def top_loss(
    student_out,
    teacher_out,
    batch: Dict[str, torch.Tensor],
    gates,
    config,
    pruning: bool,
    step_target: float,
    rank_weight: float,
    share: float,
    global_batch: int,
    hp: StepSettings,
    dist: distributed.Distributed,
) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """This process's part of ToP's loss, and the loss's parts.

    The task loss (KD of the teacher's logits; the MSE for regression) and the rank distillation
    are weighted by the process's ``share`` of the global batch. Once pruning, the Lagrangian of
    the global batch's expected MAC sparsity against ``step_target`` and the rank distillation are added.
    """
    if hp.regression:
        task_loss = F.mse_loss(student_out.logits.squeeze(-1), batch["labels"].float())
    else:
        task_loss = logit_distillation_loss(student_out.logits, teacher_out.logits, hp.distill_temperature)
    loss = share * task_loss
    lag = rank = expected = torch.zeros((), device=task_loss.device)
    if pruning:
        token_score, pruner_score = gates.keep_probabilities()
        relative, _ = flops.relative_macs(
            token_score, pruner_score, gates.prune_locations, config, batch["attention_mask"], hp.task_length
        )
        expected = 1 - dist.gather_sum(relative.sum()) / global_batch
        lag = lagrangian_loss(expected, step_target, gates.lambda_1, gates.lambda_2)
        rank = rank_distillation_loss(
            student_out.importance, teacher_out.importance[-1], batch["attention_mask"][:, 1:], hp.topk,
            layers=hp.rank_layers,
        )
        loss = loss + share * rank_weight * rank + lag
    return loss, {"task_loss": task_loss, "lagrangian": lag, "rank_loss": rank, "expected_sparsity": expected}


def train_step(
    student,
    teacher,
    gates,
    optimizers: Dict[str, Any],
    batch: Dict[str, torch.Tensor],
    step: int,
    share: float,
    global_batch: int,
    hp: StepSettings,
    dist: distributed.Distributed,
    teacher_out=None,
) -> Dict[str, float]:
    """One optimisation step at ``step`` (0-based) on this process's ``share`` of a global batch.

    Teacher (unless ``teacher_out`` brings its outputs from the cache) and student forward passes,
    the loss, the backward pass, the gradients summed over processes and clipped, the optimiser
    and schedule steps, the gate logits clamped. Returns the values ``log.jsonl`` records.
    """
    pruning = "gates" in optimizers
    inputs = batching.model_inputs(batch)
    if teacher_out is None:
        with torch.no_grad():
            # Only the teacher's last layer ranks tokens (for the rank distillation).
            teacher_out = teacher(**inputs, mode="faithful", probability_layers=[teacher.config.num_hidden_layers - 1])
    token_z = pruner_z = None
    step_target = rank_weight = 0.0
    if pruning:
        token_z, pruner_z = sample_gates(gates, hp.seed, step, batch["input_ids"].device)
        step_target, rank_weight = warmup_ramp(
            step - PREPRUNING_STEPS, hp.warmup_steps, hp.target_sparsity, hp.rank_loss_alpha
        )
    # Pruning reads the layers before the prune locations, the rank distillation hp.rank_layers.
    student_out = student(
        **inputs, mode="train", token_z=token_z, pruner_z=pruner_z, probability_layers=hp.rank_layers if pruning else ()
    )
    loss, parts = top_loss(
        student_out, teacher_out, batch, gates, student.config, pruning, step_target, rank_weight, share,
        global_batch, hp, dist,
    )
    loss.backward()

    dist.sum_gradients(list(student.parameters()) + gates.gate_parameters())
    torch.nn.utils.clip_grad_norm_(student.parameters(), hp.max_grad_norm)
    optimizers["weights"].step()
    if pruning:
        optimizers["gates"].step()
        optimizers["lambdas"].step()
    optimizers["scheduler"].step()
    gates.constrain_()
    student.zero_grad(set_to_none=True)
    gates.zero_grad(set_to_none=True)

    task_loss, lag, rank = (_number(parts[k]) for k in ("task_loss", "lagrangian", "rank_loss"))
    return {
        "loss": task_loss + rank_weight * rank + lag,
        "task_loss": task_loss,
        "lagrangian": lag,
        "rank_loss": rank,
        "lambda_1": _number(gates.lambda_1),
        "lambda_2": _number(gates.lambda_2),
        "expected_sparsity": _number(parts["expected_sparsity"]),
        "target": step_target,
    }


def show_progress(bar, values: Dict[str, float]) -> None:
    bar.set_postfix(
        {
            "loss": f"{values['loss']:.4f}",
            "task": f"{values['task_loss']:.4f}",
            "lag": f"{values['lagrangian']:.4f}",
            "l1": f"{values['lambda_1']:.3f}",
            "l2": f"{values['lambda_2']:.3f}",
            "sparsity": f"{values['expected_sparsity']:.3f}/{values['target']:.3f}",
        },
        refresh=False,
    )
    bar.update(1)


def _score_text(score: Optional[float]) -> str:
    return "undefined" if score is None else f"{score:.4f}"


def _number(value) -> float:
    return float(value.detach()) if torch.is_tensor(value) else float(value)


# ----------------------------------------------------------------------------------------------
# Evaluation and best/


def evaluate_dev(
    student, gates, dev_set, data: TaskData, batch_size: int, device: torch.device, step: int, pruning: bool
) -> Dict[str, Any]:
    """The dev score in faithful mode with the deterministic gates (dense before pruning starts)."""
    token_z, pruner_z = gates.deterministic() if pruning else (None, None)

    def sparsities(batch, output):
        s, seq = flops.expected_sparsities(
            token_z, pruner_z, gates.prune_locations, student.config, batch["attention_mask"], data.task_length
        )
        return float(s), float(seq)

    student.eval()
    scored = scoring.predict(
        lambda batch: student(
            **batching.model_inputs(batch), mode="faithful", token_z=token_z, pruner_z=pruner_z, probability_layers=()
        ),
        dev_set,
        batch_size,
        device,
        trim=not pruning,  # faithful: padded to max_seq_length, as `top eval` scores it
        measure=sparsities if pruning else None,
    )
    student.train()
    metrics = compute_metrics(data.task, scored.logits.numpy(), scored.labels.numpy())
    record = {"step": step, "eval": metrics, "score": metrics[data.metric]}
    if pruning:
        per_batch, per_batch_sequence = zip(*scored.per_batch)
        record["expected_sparsity"] = flops.mean_of_batch_means(per_batch)
        record["expected_sequence_sparsity"] = flops.mean_of_batch_means(per_batch_sequence)
        # Against the dense model at the task's length (the paper's figure), and at the same inputs.
        record["flops_reduction"] = float(flops.flops_reduction(record["expected_sequence_sparsity"]))
        record["flops_reduction_same_inputs"] = float(flops.flops_reduction(record["expected_sparsity"]))
        record["kept_bins"] = token_z.sum(dim=1).tolist()
        record["layer_gates"] = pruner_z.tolist()
    return record


# What best/ and summary.json record of the best evaluation.
BEST_KEYS = ("score", "step", "expected_sparsity", "expected_sequence_sparsity", "flops_reduction")
NO_BEST = dict.fromkeys(BEST_KEYS)


def apply_best_rule(
    record: Dict[str, Any], best: Dict[str, Any], target: float, epsilon: float, rule: str = BEST_RULES[0]
) -> Dict[str, Any]:
    """The best so far after the evaluation ``record``, which is marked ``reached_target`` and ``is_best``.

    ``reached_target``: the expected sparsity reached target - epsilon (a dense evaluation, before
    pruning, has none). Rule ``score`` (the default): best/ keeps the best score among evaluations
    that reached the target. The original's rule was looser: once one evaluation reached the target,
    every later one could become best/ even below it. Rule ``nearest-target``: among evaluations
    within target +- epsilon, the one nearest the target, the better score breaking a tie. An
    undefined score (None: see top.evaluation.metrics) is never the best.
    """
    if rule not in BEST_RULES:
        raise ValueError(f"unknown best rule {rule!r}")
    sparsity = record.get("expected_sparsity")
    reached = sparsity is not None and sparsity >= target - epsilon
    record["reached_target"] = bool(reached)
    first = best["score"] is None
    if rule == "score":
        eligible = reached
        better = first or (record["score"] is not None and record["score"] > best["score"])
    else:
        eligible = sparsity is not None and within_band(sparsity, target, epsilon)
        distance = abs(sparsity - target) if sparsity is not None else None
        best_distance = None if first else abs(best["expected_sparsity"] - target)
        better = first or (
            record["score"] is not None
            and (distance < best_distance or (distance == best_distance and record["score"] > best["score"]))
        )
    record["is_best"] = bool(eligible and record["score"] is not None and better)
    return {key: record[key] for key in BEST_KEYS} if record["is_best"] else best


def within_band(sparsity: float, target: float, epsilon: float) -> bool:
    """``|sparsity - target| <= epsilon``, allowing float rounding (0.31 is within 0.01 of 0.3)."""
    return abs(sparsity - target) <= epsilon + 1e-9


def evaluate_and_keep_best(
    student, gates, tokenizer, dev_set, plan, opts: TrainOptions, step: int, pruning: bool,
    best: Dict[str, Any], best_dir: Path, log: run_files.JsonLog, bar,
) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """Score the dev set, apply the --best-rule, write best/ when this evaluation is the best; (record, best)."""
    hp = plan.step_settings
    record = evaluate_dev(student, gates, dev_set, plan.data, opts.run.eval_batch_size, plan.device, step, pruning)
    best = apply_best_rule(record, best, hp.target_sparsity, opts.sparsity_epsilon, opts.best_rule)
    if record["is_best"]:
        write_checkpoint(best_dir, student, gates, tokenizer, {"step": step, "eval": record})
    log.write(record)
    bar.write(eval_line(record, plan.data.metric, hp.target_sparsity))
    return record, best


def check_warmup_sparsity(values: Dict[str, Any], step: int, target: float, opts: TrainOptions) -> None:
    """A warning when the training batch's expected sparsity is off target after the warm-up."""
    warn_off_target(f"After the warm-up (step {step}), the training batch's expected sparsity",
                    values["expected_sparsity"], target, opts.sparsity_epsilon, opts.sparsity_control)


def check_final_sparsity(
    final: Optional[Dict[str, Any]], log: run_files.JsonLog, step: int, target: float, opts: TrainOptions
) -> Optional[float]:
    """The last evaluation's expected sparsity (None before pruning), with a warning when it is off target.

    ``final`` is None when a finished run was resumed: its last evaluation is then read from the log.
    """
    if final is None:
        final = log.last_record_with("eval")
    sparsity = None if final is None else final.get("expected_sparsity")
    if sparsity is None:
        logger.warning("Pruning never started (%d steps); give more than %d steps.", step, PREPRUNING_STEPS)
    else:
        warn_off_target(f"At the end (step {step}), the expected sparsity", sparsity, target,
                        opts.sparsity_epsilon, opts.sparsity_control)
    return sparsity


def warn_off_target(what: str, sparsity: float, target: float, epsilon: float, control: str) -> None:
    """A warning when ``sparsity`` (``what``: when and which) is outside target +- epsilon, naming the levers."""
    if within_band(sparsity, target, epsilon):
        return
    if sparsity > target:
        how, levers = "above", "a longer --warmup-epochs, a lower --reg-learning-rate or more steps"
        if control == "paper":
            levers = "--sparsity-control adaptive, " + levers
    else:
        how, levers = "below", "a higher --reg-learning-rate, more steps or a shorter --warmup-epochs"
    logger.warning(
        "%s is %.4f, %s the target %s by more than --sparsity-epsilon %s; to land nearer, try %s.",
        what, sparsity, how, target, epsilon, levers,
    )


def eval_line(record: Dict[str, Any], metric: str, target: float) -> str:
    line = f"step {record['step']}: {metric} {_score_text(record['score'])}"
    if "expected_sparsity" in record:
        line += f", expected sparsity {record['expected_sparsity']:.4f} (target {target})"
    return line


# ----------------------------------------------------------------------------------------------
# Files


def write_checkpoint(path: Path, student, gates, tokenizer, trainer_state: Dict[str, Any]) -> None:
    """The published layout (config, weights, zs.pt, l0_module.pt, tokenizer) and ``trainer_state.json``,
    written atomically."""
    save_checkpoint(
        path,
        model_state_dict=student.hf_model.state_dict(),
        config=student.config,
        gate_state=gates.state_for_checkpoint(),
        tokenizer=tokenizer,
        extra={"trainer_state.json": trainer_state},
    )


def save_last(
    last_dir: Path,
    opts: TrainOptions,
    step: int,
    total_steps: int,
    best: Dict[str, Any],
    student,
    gates,
    tokenizer,
    optimizers: Dict[str, Any],
    dist: distributed.Distributed,
) -> None:
    """``last/``: the checkpoint and everything a bit-identical ``--resume`` needs, swapped in whole.

    Every process takes part (their RNG states are gathered); only the main process writes.
    """
    rng = dist.gather_objects(determinism.rng_state())
    if not dist.is_main:
        return
    state = {
        "step": step,
        "pruning": "gates" in optimizers,
        "sparsity_control": opts.sparsity_control,
        "best": best,
        "world_size": dist.world_size,
        "rng": rng,
        "optimizers": {name: opt.state_dict() for name, opt in optimizers.items()},
    }
    with atomic_directory(last_dir) as tmp:
        write_checkpoint(tmp, student, gates, tokenizer, {"step": step, "total_steps": total_steps, "best": best})
        run_files.save_state_file(tmp, state)


def restore(
    last_dir: Path, student, gates, opts: TrainOptions, total_steps: int, dist: distributed.Distributed
) -> Tuple[int, Dict[str, Any], Dict[str, Any]]:
    """Weights, gates, lambdas, optimisers, scheduler and RNG states from ``last/``.

    Returns the step to continue from, the best evaluation so far and the optimisers.
    """
    state = run_files.load_state_file(last_dir)
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
    control = state.get("sparsity_control", "paper")  # states written before the flag are the paper's
    if control != opts.sparsity_control:
        raise UserError(
            f"{last_dir} was trained with --sparsity-control {control}; resume with --sparsity-control {control}."
        )
    step = int(state["step"])
    optimizers = build_optimizers(student, gates, opts, total_steps, bool(state["pruning"]))
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


def write_summary(
    out: Path, metric: str, best: Dict[str, Any], target: float, epsilon: float, steps: int, seconds: float,
    final_sparsity: Optional[float] = None,
) -> None:
    """``summary.json``, and one line on the best evaluation (or why there is none).

    ``final_expected_sparsity`` is the last evaluation's (None when pruning never started);
    ``reached_target`` says whether it is within target +- epsilon.
    """
    summary = {
        "metric": metric, "best": best, "target_sparsity": target, "steps": steps, "seconds": round(seconds, 1),
        "final_expected_sparsity": final_sparsity,
        "reached_target": final_sparsity is not None and within_band(final_sparsity, target, epsilon),
        "sparsity_epsilon": epsilon,
    }
    atomic_write_json(out / "summary.json", summary)
    if best["score"] is None:
        print(
            f"No evaluation reached the target sparsity {target} within {epsilon}; "
            f"best/ was not written (see {out / 'log.jsonl'})."
        )
    else:
        print(
            f"best {metric} {best['score']:.4f} at step {best['step']}: expected sparsity "
            f"{best['expected_sparsity']:.4f}, FLOPs reduction {best['flops_reduction']:.2f}x -> {out / 'best'}"
        )
