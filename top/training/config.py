"""What ``top train`` and ``top finetune`` take: one frozen config each, every flag declared once here.

A field left None is decided when the run starts (the task's preset, the schedule, the model's
depth); ``top.training.plan`` then returns the same config with every such field filled in, which
is what the run uses and ``run.json`` records. The recipe flags (``RECIPE``) are among them: a paper
task takes the paper's values (``PAPER_RECIPE``), a user's own data tasks.toml's ``[custom]``
(``top.data.tasks.CUSTOM_PRESET``), a recipe that lands on the target on short schedules too.

Build one from Python as the command line does::

    top.TrainConfig(model="out/teacher/best", teacher="out/teacher/best", train_file="train.csv",
                    validation_file="dev.csv", output_dir="out/pruned", target_sparsity=0.5)
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Optional, Union

from top.data import sources
from top.data.tasks import CUSTOM_PRESET
from top.method.defaults import ATTENTIONS, CONTROLS, LAYER_GATE_INIT
from top.settings import common, values
from top.settings.fields import check_fields, option

# A MAC sparsity to reach: strictly between 0 and 1.
SPARSITY = values.finite_float(min=0.0, max=1.0, min_inclusive=False, max_inclusive=False)
# A speedup to reach: above 1 (no pruning is 1x at best) and below what any model could give.
SPEEDUP = values.finite_float(min=1.0, max=1000.0, min_inclusive=False)
# Rank bins and ranked tokens: no more than the positions of the longest model top builds.
TOKEN_COUNT = values.int_in_range(1, 8192, " (no model top builds has more positions)")
# --best-rule's choices; the first is the default (the paper's rule).
BEST_RULES = ("score", "nearest-target")
# --eval-steps: the default cadence; `auto` keeps it unless that gives fewer than AUTO_EVALUATIONS
# evaluations after the warm-up.
EVAL_STEPS = 100
AUTO_EVALUATIONS = 10
# What `top train` exits with when the run finished but no evaluation qualified for best/.
NO_BEST_EXIT = 3
# The recipe flags' defaults for the paper's tasks: the original's. A user's own data takes them from
# tasks.toml's [custom] (CUSTOM_PRESET) instead; top.training.plan.resolve_recipe decides.
PAPER_RECIPE = {
    "learning_rate": 1e-5, "reg_learning_rate": 0.02, "sparsity_control": CONTROLS[0], "sparsity_epsilon": 0.01,
    "best_rule": BEST_RULES[0], "layer_gate_init": LAYER_GATE_INIT, "eval_steps": EVAL_STEPS,
}
RECIPE = tuple(PAPER_RECIPE)
# --droprate-init's value in the original's scripts (run_TokenPrune.sh); its L0 module stores it but
# starts the token and layer gates at fixed logits, so it has no effect there, nor here.
DROPRATE_INIT = 0.01


def eval_cadence(value) -> Union[int, str]:
    """``--eval-steps``: a positive whole number of steps, or ``auto``."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    try:
        return values.positive_int(value)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is neither a positive whole number of steps nor auto; give one such as 100, or auto"
        ) from None


def layer_list(value) -> str:
    """``--prune-location``: comma-separated layer indices, e.g. ``2,3,4`` (a list from Python is joined)."""
    if isinstance(value, (list, tuple)):
        value = ",".join(str(v) for v in value)
    if not isinstance(value, str):
        raise argparse.ArgumentTypeError(f"{value!r} is not a comma-separated list of layer indices, e.g. 2,3,4")
    try:
        [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a comma-separated list of layer indices, e.g. 2,3,4"
        ) from None
    return value


def _shown(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def recipe_default(name: str) -> str:
    """``--help``'s default of a recipe flag: the paper's tasks', and own data's where it differs."""
    paper = PAPER_RECIPE[name]
    if name == "reg_learning_rate":
        custom = (f"{CUSTOM_PRESET.gate_travel:g} / the warm-up's steps, within {CUSTOM_PRESET.min_reg_learning_rate:g}"
                  f"..{CUSTOM_PRESET.max_reg_learning_rate:g}")
    else:
        custom = _shown(getattr(CUSTOM_PRESET, name))
    if custom == _shown(paper):
        return custom
    return f"{_shown(paper)} for the paper's tasks; for your own data {custom}"


def _model(help: str):
    return option(check=values.name_text, required=True, group="model and data", metavar="DIR_OR_HUB_ID", help=help)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """``top train``: learn ToP's gates for a fine-tuned dense model under the FLOPs constraint."""

    model: str = _model("the fine-tuned dense student (a directory or hub id)")
    teacher: str = _model("the fine-tuned dense teacher (usually the same model)")
    output_dir: str = common.output_dir()
    task: Optional[str] = sources.task()
    data_dir: Optional[str] = sources.data_dir()
    train_file: Optional[str] = sources.train_file()
    validation_file: Optional[str] = sources.validation_file()
    target_sparsity: Optional[float] = option(
        None, check=SPARSITY, group="pruning", default_text="the task preset",
        help="the MAC sparsity to reach, between 0 and 1",
    )
    target_speedup: Optional[float] = option(
        None, check=SPEEDUP, group="pruning",
        help="instead of --target-sparsity: the speedup of compact inference over the dense model on dynamic "
        "padding to reach, on the machine, batch size and runtime --latency-model was calibrated on",
    )
    latency_model: Optional[str] = option(
        None, check=values.path_text, group="pruning", metavar="FILE",
        help="latency.json of `top calibrate`: with --target-speedup, the Lagrangian holds the expected latency "
        "under the gates to the target instead of the expected MACs",
    )
    epochs: Optional[float] = option(
        None, check=values.epoch_count, group="optimisation", exclusive="length",
        default_text=f"the task preset; {CUSTOM_PRESET.epochs:g} for your own data", help="training epochs",
    )
    max_steps: Optional[int] = common.max_steps()
    warmup_epochs: Optional[float] = option(
        None, check=values.warmup_epoch_count, group="pruning",
        default_text=f"the task preset; {CUSTOM_PRESET.warmup_fraction:g} of the run for your own data",
        help="epochs over which the target sparsity ramps up from 0",
    )
    bin_num: Optional[int] = option(
        None, check=TOKEN_COUNT, group="pruning", default_text="the task preset",
        help="rank bins per prune location, 1..8192",
    )
    topk: Optional[int] = option(
        None, check=TOKEN_COUNT, group="pruning", default_text="the task preset",
        help="tokens ranked by the rank distillation",
    )
    prune_location: Optional[str] = option(
        None, check=layer_list, group="pruning", metavar="LAYERS", default_text="2..L-1",
        help="comma-separated layer indices to prune at",
    )
    learning_rate: Optional[float] = option(None, check=values.non_negative_float, group="optimisation",
                                            default_text=recipe_default("learning_rate"),
                                            help="AdamW's learning rate for the weights")
    reg_learning_rate: Optional[float] = option(
        None, check=values.positive_float, group="pruning", default_text=recipe_default("reg_learning_rate"),
        help="learning rate of the gates and, with --sparsity-control paper, the lambdas",
    )
    rank_loss_alpha: float = option(0.01, check=values.non_negative_float, group="pruning",
                                    help="weight of the ranking distillation at the start of the warm-up")
    sparsity_control: Optional[str] = option(
        None, choices=CONTROLS, group="pruning", default_text=recipe_default("sparsity_control"),
        help="how the Lagrange multipliers move. paper: AdamW ascent at --reg-learning-rate, as the original, "
        "which settles on long schedules and can overshoot short ones; adaptive: a proportional-integral-"
        "derivative controller that steers the sparsity evaluations report onto the target once the gates can move",
    )
    sparsity_epsilon: Optional[float] = option(
        None, check=values.non_negative_float, group="pruning", default_text=recipe_default("sparsity_epsilon"),
        help="the band around the target: best/ needs target - eps, and a sparsity outside target +- eps after "
        "the warm-up or at the end is a warning",
    )
    best_rule: Optional[str] = option(
        None, choices=BEST_RULES, group="evaluation", default_text=recipe_default("best_rule"),
        help="which evaluation best/ keeps. score (the paper's): the best score among those whose expected "
        "sparsity reached target - eps; nearest-target: among those within target +- eps, the one nearest the "
        "target (the better score of equally near ones)",
    )
    layer_gate_init: Optional[float] = option(
        None, check=values.any_float, group="pruning", default_text=recipe_default("layer_gate_init"),
        help="initial logit of the layer gates: -10 (off, the paper's) lets the constraint switch locations on; a "
        "positive value starts every location pruning, which suits short schedules",
    )
    droprate_init: float = option(
        DROPRATE_INIT, check=values.fraction, group="pruning", hidden=True,
        help="deprecated and ignored, as the original ignores it (its gates start at logits 10 and -10 whatever "
        "this is); accepted, and recorded in run.json, for the original's scripts",
    )
    distill_temperature: float = option(2.0, check=values.positive_float, group="optimisation",
                                        help="the temperature of the logit distillation")
    attention: str = option(
        ATTENTIONS[0], choices=ATTENTIONS, group="run",
        help="sdpa: the fused kernel in every layer whose attention probabilities nothing reads (where this torch "
        "and transformers have it); eager: every layer materialises them, as the original (bit-identical to it)",
    )
    teacher_cache: bool = option(
        True, group="run", negative="--no-teacher-cache",
        help="run the teacher once per training example before the loop and read its outputs from "
        "OUT/teacher-cache/ (reused while the teacher, data and schedule are unchanged)",
        negative_help="run the teacher at every step instead (with --attention eager, bit-identical to training "
        "before the cache and the fused kernel)",
    )
    eval_steps: Union[int, str, None] = option(
        None, check=eval_cadence, group="evaluation", default_text=recipe_default("eval_steps"),
        help=f"score the dev set every this many steps (and after the last); auto: every {EVAL_STEPS}, or more "
        f"often where that gives fewer than {AUTO_EVALUATIONS} evaluations after the warm-up",
    )
    save_steps: int = option(500, check=values.positive_int, group="output", help="write last/ every this many steps")
    batch_size: int = common.batch_size()
    eval_batch_size: int = common.eval_batch_size()
    max_seq_length: int = common.max_seq_length()
    weight_decay: float = common.weight_decay()
    max_grad_norm: float = common.max_grad_norm()
    seed: int = common.seed()
    device: str = common.device()
    logging_steps: int = common.logging_steps()
    no_progress: bool = common.no_progress()
    group_by_length: bool = common.group_by_length()
    resume: bool = option(False, switch=True, group="output", exclusive="start",
                          help="continue the run in --output-dir from its last/")
    overwrite_output_dir: bool = common.overwrite_output_dir(exclusive="start")

    def __post_init__(self):
        check_fields(self)


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """``top finetune``: fine-tune the dense teacher (the original's PreFT step)."""

    model: str = _model("the pre-trained model (a directory or hub id), e.g. bert-base-uncased")
    output_dir: str = common.output_dir()
    task: Optional[str] = sources.task()
    data_dir: Optional[str] = sources.data_dir()
    train_file: Optional[str] = sources.train_file()
    validation_file: Optional[str] = sources.validation_file()
    epochs: Optional[float] = option(
        None, check=values.epoch_count, group="optimisation", exclusive="length",
        default_text="10 for MRPC, RTE, STS-B, CoLA and small data of your own, else 3", help="training epochs",
    )
    max_steps: Optional[int] = common.max_steps()
    learning_rate: float = option(2e-5, check=values.non_negative_float, group="optimisation",
                                  help="AdamW's learning rate")
    eval_steps: Optional[int] = option(None, check=values.positive_int, group="evaluation", default_text="every epoch",
                                       help="score the dev set every this many steps")
    batch_size: int = common.batch_size()
    eval_batch_size: int = common.eval_batch_size()
    max_seq_length: int = common.max_seq_length()
    weight_decay: float = common.weight_decay()
    max_grad_norm: float = common.max_grad_norm()
    seed: int = common.seed()
    device: str = common.device()
    logging_steps: int = common.logging_steps()
    no_progress: bool = common.no_progress()
    group_by_length: bool = common.group_by_length()
    overwrite_output_dir: bool = common.overwrite_output_dir()

    def __post_init__(self):
        check_fields(self)
