"""A ``top train`` run planned before any weights load: its inputs checked, its config resolved.

:func:`plan_train` reads the data and both models' configs (once each), checks that they fit
together, and returns the config with every field that was left to the run decided (the task
preset's target, bins, top-k, warm-up and epochs; the recipe flags; the schedule's length; the prune
locations; the evaluation cadence; the device), beside the :class:`Plan`: what the run derived from them.

A user's own data has no paper preset: it takes tasks.toml's ``[custom]`` (``CUSTOM_PRESET``), whose
warm-up is a share of the run and whose recipe (adaptive control, nearest-target best/, layer gates
on, ...) lands on the target on short schedules too. The paper's tasks keep the paper's recipe
(``PAPER_RECIPE``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch

from top.data import batching, sources
from top.data.batching import check_max_seq_length
from top.data.loading import TaskData
from top.data.tasks import CUSTOM_PRESET
from top.errors import UserError
from top.method import latency
from top.method.gates import check_prune_locations, default_prune_locations
from top.method.losses import default_rank_layers
from top.runtime import machine
from top.runtime.devices import resolve_device
from top.settings.values import MAX_STEPS
from top.storage.hub import resolve_model
from top.storage.model_files import load_tokenizer, read_model_config
from top.training import batch_order, distributed
from top.training.config import AUTO_EVALUATIONS, EVAL_STEPS, PAPER_RECIPE, RECIPE, TrainConfig
from top.training.step import StepPlan

logger = logging.getLogger(__name__)

# Fewer evaluations than this after the warm-up is a warning (best/ has little to choose from).
FEW_EVALUATIONS = 5


@dataclasses.dataclass(frozen=True)
class Plan:
    """What a run derived from its config and inputs, before any weights load."""

    data: TaskData
    student_dir: Path  # --model and --teacher, resolved to local directories
    teacher_dir: Path
    student_config: Any  # their config.json, each read once
    teacher_config: Any
    locations: Tuple[int, ...]
    device: torch.device
    order: batch_order.BatchOrder
    total_steps: int
    step: StepPlan


def total_steps(max_steps: Optional[int], epochs: float, steps_per_epoch: int) -> int:
    """A run's length: ``max_steps`` when given, else ``epochs`` of ``steps_per_epoch``."""
    if max_steps is not None:
        return int(max_steps)
    total = max(1, int(math.ceil(epochs * steps_per_epoch)))
    if total > MAX_STEPS:
        # Checked before anything plans the steps: the teacher cache lists every one of them.
        raise UserError(
            f"--epochs {epochs:g} at {steps_per_epoch} steps per epoch plans {total:.3g} steps, more than the "
            f"{MAX_STEPS:.0e} a run may take; give fewer epochs, a larger --batch-size or --max-steps."
        )
    return total


def preset_of(config: TrainConfig, data: TaskData) -> Dict[str, Any]:
    """The task's preset (a user's own data: ``CUSTOM_PRESET``'s, with no target, and its warm-up left
    None: a share of the run, decided once the run's length is known)."""
    if data.is_custom:
        return {"bin_num": CUSTOM_PRESET.bin_num, "topk": CUSTOM_PRESET.topk, "warmup_epochs": None,
                "epochs": CUSTOM_PRESET.epochs, "target_sparsity": None}
    preset = data.task.preset
    return {"bin_num": preset.bin_num, "topk": preset.topk, "warmup_epochs": preset.warmup_epochs,
            "epochs": preset.epochs, "target_sparsity": preset.sparsity}


def resolve_presets(config: TrainConfig, preset: Dict[str, Any]) -> Dict[str, Any]:
    """The ToP settings a config leaves to the task's preset, decided: each flag, else the preset's value.

    With ``--target-speedup`` the target sparsity is left None here: the latency constraint decides it
    (:func:`latency_constraint`)."""
    resolved = {name: getattr(config, name) if getattr(config, name) is not None else preset[name]
                for name in ("target_sparsity", "bin_num", "topk", "warmup_epochs", "epochs")}
    if config.target_speedup is not None:
        resolved["target_sparsity"] = None
        return resolved
    if resolved["target_sparsity"] is None:
        raise UserError("Custom data has no preset target; pass --target-sparsity, e.g. 0.5.")
    resolved["target_sparsity"] = float(resolved["target_sparsity"])
    return resolved


def resolve_recipe(config: TrainConfig, custom: bool, warmup_steps: int) -> Dict[str, Any]:
    """The recipe flags (``RECIPE``), each as given, else decided: the paper's values for its tasks
    (``PAPER_RECIPE``), tasks.toml's ``[custom]`` for a user's own data (``custom``), whose
    --reg-learning-rate follows the warm-up's ``warmup_steps``."""
    chosen = {}
    for name in RECIPE:
        given = getattr(config, name)
        if given is not None:
            chosen[name] = given
        elif not custom:
            chosen[name] = PAPER_RECIPE[name]
        elif name == "reg_learning_rate":
            chosen[name] = CUSTOM_PRESET.reg_learning_rate(warmup_steps)
        else:
            chosen[name] = getattr(CUSTOM_PRESET, name)
    return chosen


def prune_locations(spec: str, num_layers: int) -> List[int]:
    """``--prune-location`` checked against the model's depth."""
    locations = [int(part) for part in spec.split(",") if part.strip()]
    return check_prune_locations(
        locations, num_layers, source=f"--prune-location {spec}",
        fix=f"list distinct layers of 1..{num_layers - 1} in increasing order, e.g. 2,3,4", allow_empty=False,
    )


def default_locations(num_layers: int) -> List[int]:
    locations = default_prune_locations(num_layers)
    if not locations:
        raise UserError(f"A {num_layers}-layer model has no layer 2..L-1 to prune at; pass --prune-location 1.")
    return locations


def check_teacher(student_config, teacher_config, num_labels: int, config: TrainConfig) -> None:
    if teacher_config.num_labels != student_config.num_labels:
        raise UserError(
            f"The teacher {config.teacher} has {teacher_config.num_labels} labels but the student {config.model} has "
            f"{student_config.num_labels}; give a teacher fine-tuned on the same task."
        )
    if teacher_config.vocab_size != student_config.vocab_size:
        raise UserError(
            f"The teacher {config.teacher} has a vocabulary of {teacher_config.vocab_size} but the student has "
            f"{student_config.vocab_size}; give a teacher with the student's tokenizer."
        )
    if student_config.num_labels != num_labels:
        raise UserError(
            f"The student {config.model} has {student_config.num_labels} labels but the data has {num_labels}; "
            "fine-tune it on this data first (`top finetune`)."
        )


def check_latency_flags(config: TrainConfig) -> None:
    """``--target-speedup`` goes with ``--latency-model`` and instead of ``--target-sparsity``."""
    if config.target_speedup is not None and config.target_sparsity is not None:
        raise UserError("Give either --target-sparsity or --target-speedup, not both.")
    if (config.target_speedup is None) != (config.latency_model is None):
        given, missing = (("--target-speedup", "--latency-model FILE (from `top calibrate`)")
                          if config.target_speedup is not None else ("--latency-model", "--target-speedup, e.g. 1.6"))
        raise UserError(f"{given} needs {missing}; give both or neither.")


def latency_constraint(config: TrainConfig, data: TaskData, student_dir: Path, student_config,
                       locations: List[int]) -> latency.LatencyConstraint:
    """``--target-speedup`` on the dev set, as a constraint on the latency sparsity (see ``top.method.latency``).

    A latency model of another architecture is refused; one measured on another machine (processor, GPU,
    cores, torch or runtime version) or on other kernels of top's (an older top) is used with a warning
    that names the differences.
    """
    model = latency.read_latency_model(config.latency_model)
    latency.check_shape(model, student_config, f"--model {config.model}")
    here = latency.timing_conditions(machine.timing_machine(model.machine.get("device", "cpu"),
                                                            model.machine.get("runtime", "torch")))
    here.pop("threads")  # the threads training runs on say nothing of the threads inference will run on
    different = latency.machine_differences(model, here)
    if different:
        logger.warning("--latency-model %s was calibrated on another machine or other kernels than here: %s. The "
                       "target speedup is %gx there, at batch %d; `top calibrate` here for one that holds here.",
                       config.latency_model, "; ".join(different), config.target_speedup, model.batch_size)
    tokenizer = load_tokenizer(student_dir, "--model", "give a model directory with one")
    mask = batching.encode(data.dev, tokenizer, config.max_seq_length)["attention_mask"]
    return latency.constraint_for(model, config.target_speedup, locations, student_config, mask, data.task_length)


def plan_train(config: TrainConfig, dist: distributed.Distributed) -> Tuple[TrainConfig, Plan]:
    """Everything that can be wrong with the input, checked before any weights load; the config resolved."""
    if config.epochs is not None and config.max_steps is not None:
        raise UserError("Give either --epochs or --max-steps, not both.")
    check_latency_flags(config)
    data = sources.load(config, config.max_seq_length)
    presets = resolve_presets(config, preset_of(config, data))
    student_dir = resolve_model(config.model, "--model")
    teacher_dir = resolve_model(config.teacher, "--teacher")
    student_config = read_model_config(student_dir, f"The config.json of --model {config.model}")
    teacher_config = read_model_config(teacher_dir, f"The config.json of --teacher {config.teacher}")
    check_teacher(student_config, teacher_config, data.num_labels, config)
    for model_config, flag, name in ((student_config, "--model", config.model),
                                     (teacher_config, "--teacher", config.teacher)):
        check_max_seq_length(config.max_seq_length, model_config, f"{flag} {name}")
    num_layers = student_config.num_hidden_layers
    if config.prune_location is None:
        locations = default_locations(num_layers)
    else:
        locations = prune_locations(config.prune_location, num_layers)
    constraint = None
    if config.target_speedup is not None:
        constraint = latency_constraint(config, data, student_dir, student_config, locations)
        presets["target_sparsity"] = round(constraint.implied_sparsity, 4)
    device = resolve_device(config.device, dist.local_rank)
    order = batch_order.BatchOrder(len(data.train), config.batch_size, config.seed, dist.world_size, dist.rank)
    steps = total_steps(config.max_steps, presets["epochs"], order.steps_per_epoch)
    if presets["warmup_epochs"] is None:  # own data: a share of the run
        warmup_steps = CUSTOM_PRESET.warmup_steps(steps)
        presets["warmup_epochs"] = warmup_steps / order.steps_per_epoch
    else:
        warmup_steps = int(round(presets["warmup_epochs"] * order.steps_per_epoch))
    recipe = resolve_recipe(config, data.is_custom, warmup_steps)
    step_plan = StepPlan(
        warmup_steps=warmup_steps,
        regression=data.is_regression,
        task_length=data.task_length,
        rank_layers=tuple(default_rank_layers(num_layers)),
        latency=constraint,
    )
    eval_steps = resolve_eval_steps(recipe["eval_steps"], steps, step_plan.first_full_target_step)
    if config.max_steps is not None:
        presets["epochs"] = steps / order.steps_per_epoch
    resolved = dataclasses.replace(
        config,
        **presets,
        **dict(recipe, eval_steps=eval_steps),
        max_steps=steps,
        prune_location=",".join(str(location) for location in locations),
        device=device.type,
    )
    if dist.is_main:
        logger.info("prune locations %s for a %d-layer model%s", locations, num_layers,
                    "" if config.prune_location else " (default 2..L-1)")
        logger.info("target sparsity %s, %d bins, top-%d, %d steps (warm-up %d), evaluating every %d",
                    resolved.target_sparsity, resolved.bin_num, resolved.topk, steps, step_plan.warmup_steps,
                    eval_steps)
        logger.info("recipe %s%s", ", ".join(f"{name} {getattr(resolved, name)}" for name in RECIPE),
                    " (your own data: tasks.toml's [custom] where a flag is not given)" if data.is_custom else "")
        if constraint is not None:
            logger.info(
                "target speedup %gx at batch %d (latency model %s, sha256 %s): compact inference without pruning is "
                "predicted at %.2fx, so pruning must remove %.1f%% of its time; that is the same keep ratio %.3f at "
                "every location, an expected MAC sparsity of %.4f, a FLOPs reduction of %.2fx",
                constraint.target_speedup, constraint.model.batch_size, config.latency_model,
                constraint.model.fingerprint[:12], constraint.unpruned_speedup, 100 * constraint.target,
                constraint.implied_keep_ratio, constraint.implied_sparsity, constraint.implied_flops_reduction,
            )
        warn_few_evaluations(recipe["eval_steps"], eval_steps, steps, step_plan.first_full_target_step)
    plan = Plan(data, student_dir, teacher_dir, student_config, teacher_config, tuple(locations), device, order,
                steps, step_plan)
    return resolved, plan


def evaluations_from(first: int, eval_steps: int, total: int) -> int:
    """How many evaluations (every ``eval_steps`` steps, and after the last) fall at steps ``first..total``."""
    if first > total:
        return 0
    count = total // eval_steps - (first - 1) // eval_steps
    return count + (1 if total % eval_steps else 0)


def resolve_eval_steps(flag, total: int, first: int) -> int:
    """``--eval-steps``, with ``auto`` made a number: EVAL_STEPS, or the largest cadence that gives
    AUTO_EVALUATIONS evaluations at steps ``first..total`` (every step, if that is too few)."""
    if flag != "auto":
        return int(flag)
    span = total - first + 1
    if span <= 0:  # no step after the warm-up: only the final evaluation counts
        return EVAL_STEPS
    return max(1, min(EVAL_STEPS, span // AUTO_EVALUATIONS))


def warn_few_evaluations(flag, eval_steps: int, total: int, first: int) -> None:
    """A warning before training when best/ will have fewer than FEW_EVALUATIONS after the warm-up to choose from."""
    count = evaluations_from(first, eval_steps, total)
    if count >= FEW_EVALUATIONS:
        return
    if first > total:
        logger.warning(
            "The warm-up lasts past the run's %d steps (the target is full from step %d), so no evaluation comes "
            "after it for best/ to choose from; train for more steps or shorten --warmup-epochs.", total, first,
        )
        return
    if total - first + 1 < FEW_EVALUATIONS:
        advice = "train for more steps or shorten --warmup-epochs"
    else:
        advice = f"pass --eval-steps {resolve_eval_steps('auto', total, first)} or --eval-steps auto"
    logger.warning(
        "--eval-steps %s gives %d evaluation%s after the warm-up (steps %d-%d), fewer than %d for best/ to choose "
        "from; %s.", flag, count, "" if count == 1 else "s", first, total, FEW_EVALUATIONS, advice,
    )
