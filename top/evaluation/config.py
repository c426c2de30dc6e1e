"""What ``top eval``, ``top bench`` and ``top reproduce`` take: one frozen config each, every flag declared once.

Light on purpose (no torch): ``top --help``, ``import top`` and the command line's parsers read these.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any, Optional

from top.data import sources
from top.deploy.config import QUANTIZE
from top.method.defaults import RUN_MODES
from top.settings import common, values
from top.settings.fields import check_fields, option


def checkpoint_option(help: str = "a checkpoint in the published layout: a directory or a Hugging Face id") -> Any:
    return option(check=values.name_text, required=True, group="model and data", metavar="DIR_OR_HUB_ID", help=help)


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """``top eval``: score a checkpoint on a dev set, in the paper's faithful mode or compact."""

    checkpoint: str = checkpoint_option()
    output_dir: str = common.output_dir("where <task>.json and <task>.predictions.jsonl are written")
    task: Optional[str] = sources.task()
    data_dir: Optional[str] = sources.data_dir()
    validation_file: Optional[str] = sources.validation_file()
    mode: str = option(
        RUN_MODES[0], choices=RUN_MODES, group="evaluation",
        help="faithful: the paper's evaluation (pruned tokens masked, every position computed); compact: the pruned "
        "tokens removed, as the speedup needs (same predictions)",
    )
    max_seq_length: int = common.max_seq_length(help="every example is padded to this many tokens, as the original "
                                                      "evaluates (its run_Evaluation.sh: 256)")
    batch_size: int = common.batch_size(help="examples per batch")
    device: str = common.device()
    tokenizer: Optional[str] = option(None, check=values.name_text, group="model and data", metavar="DIR_OR_HUB_ID",
                                      help="a tokenizer directory or hub id, when the checkpoint has none")
    no_progress: bool = common.no_progress()

    def __post_init__(self):
        check_fields(self)


RUNTIMES = ("torch", "onnxruntime")
# Threads torch can start (100,000 exhaust memory) and passes that end within a day.
MAX_THREADS = 1024
MAX_PASSES = 10_000


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """``top bench``: time compact inference against dense baselines on a dev set."""

    checkpoint: str = checkpoint_option("a pruned checkpoint in the published layout: a directory or a Hugging Face id")
    task: Optional[str] = sources.task("a task of the paper's table: sets the task length (the padded baseline's) "
                                       "and, without --validation-file, the dev set")
    data_dir: Optional[str] = sources.data_dir()
    validation_file: Optional[str] = sources.validation_file()
    max_seq_length: Optional[int] = option(
        None, check=values.int_at_least(2), group="model and data", default_text="the task's length",
        help="the padded baseline's length, and where longer inputs are cut; needed with --validation-file "
        "and no --task",
    )
    batch_size: int = common.batch_size(help="examples per timed batch")
    device: str = common.device("cpu", help="where to time: cpu (the default), cuda, or auto")
    threads: Optional[int] = option(None, check=values.int_in_range(1, MAX_THREADS), group="run",
                                    default_text="torch's choice", help=f"torch threads, 1..{MAX_THREADS}")
    passes: int = option(5, check=values.int_in_range(5, MAX_PASSES), group="run",
                         help=f"timed passes over the dev set, 5..{MAX_PASSES}")
    warmup_passes: int = option(1, check=values.int_in_range(0, MAX_PASSES), group="run", help="untimed passes first")
    max_examples: Optional[int] = option(None, check=values.positive_int, group="model and data",
                                         default_text="all", help="use only the first N dev examples")
    no_memory: bool = option(False, switch=True, group="run", help="skip the peak-memory measurement")
    output: str = option("bench.json", check=values.path_text, group="output", metavar="FILE",
                         help="where to write the results")
    runtime: str = option(RUNTIMES[0], choices=RUNTIMES, group="run",
                          help="torch, or onnxruntime: time the exported pruned graph against the same weights "
                          "exported dense and the optimized stock export")
    quantize: Optional[str] = option(None, choices=QUANTIZE, group="run",
                                     help="with --runtime onnxruntime: also time the int8 pruned graph (top export "
                                     "--quantize int8) against the stock export, optimized and quantized the same way")

    def __post_init__(self):
        check_fields(self)


# ----------------------------------------------------------------------------------------------
# Loading


def task_list(value) -> str:
    """``--tasks``: comma-separated task names (a list from Python is joined)."""
    if isinstance(value, (list, tuple)):
        value = ",".join(str(v) for v in value)
    return values.name_text(value)


@dataclasses.dataclass(frozen=True)
class ReproduceConfig:
    """``top reproduce``: re-evaluate the published checkpoints and assert the paper's table."""

    tasks: Optional[str] = option(None, check=task_list, group="model and data", metavar="TASKS",
                                  default_text="every row of the results table with a published checkpoint",
                                  help="comma-separated tasks, e.g. cola,mrpc")
    checkpoint_dir: Optional[str] = option(None, check=values.path_text, group="model and data", metavar="DIR",
                                           help="a directory holding checkpoints as DIR/<repo name>")
    data_dir: Optional[str] = option(None, check=values.path_text, group="model and data", metavar="DIR",
                                     help="GLUE_DIR in GLUE's own layout (without it, the hub copy through `datasets`)")
    results_table: Optional[str] = option(None, check=values.path_text, group="evaluation", metavar="FILE",
                                          default_text="top/data/published.toml",
                                          help="a results table of your own")
    device: str = common.device()
    batch_size: int = common.batch_size(help="examples per batch")
    output_dir: str = option("outputs/reproduce", check=values.path_text, group="output", metavar="DIR",
                             help="where report.json, report.md and each evaluation's record go")
    no_assert: bool = option(False, switch=True, group="evaluation",
                             help="evaluate what can be evaluated and report, without asserting the table (eval-all)")
    seed: int = common.seed()
    no_progress: bool = common.no_progress()

    def __post_init__(self):
        check_fields(self)


# ----------------------------------------------------------------------------------------------
# Calibration


def layer_indices(value) -> str:
    """``--prune-location``: comma-separated layer indices, e.g. ``2,3,4`` (a list from Python is joined)."""
    if isinstance(value, (list, tuple)):
        value = ",".join(str(v) for v in value)
    text = values.name_text(value)
    if not all(part.strip().isdigit() for part in text.split(",")):
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of layer indices, e.g. 2,3,4")
    return text


@dataclasses.dataclass(frozen=True)
class CalibrateConfig:
    """``top calibrate``: time compact inference on this machine and fit the latency model that
    ``top train --latency-model`` and ``top bench`` read."""

    model: str = option(check=values.name_text, required=True, group="model and data", metavar="DIR_OR_HUB_ID",
                        help="a fine-tuned dense model or a pruned checkpoint (a directory or hub id): its "
                        "architecture is what is timed, its gates are not used")
    validation_file: str = option(check=values.path_text, required=True, group="model and data", metavar="FILE",
                                  help="the inputs to time, with the columns of --train-file (their lengths matter)")
    task: Optional[str] = sources.task("a task of the paper's table: its length is the default --max-seq-length")
    max_seq_length: Optional[int] = option(
        None, check=values.int_at_least(2), group="model and data", default_text="the task's length",
        help="where longer inputs are cut; needed without --task",
    )
    batch_size: int = common.batch_size(help="examples per batch, as `top bench --batch-size` will time them")
    device: str = common.device("cpu", help="where to time: cpu (the default), cuda, or auto")
    runtime: str = option(RUNTIMES[0], choices=RUNTIMES, group="run",
                          help="torch (compact_forward), or onnxruntime: the exported pruned graph")
    threads: Optional[int] = option(None, check=values.int_in_range(1, MAX_THREADS), group="run",
                                    default_text="torch's choice", help=f"torch threads, 1..{MAX_THREADS}")
    prune_location: Optional[str] = option(
        None, check=layer_indices, group="model and data", metavar="LAYERS",
        default_text="the checkpoint's, else 2..L-1", help="the layers whose prune steps are timed",
    )
    profiles: int = option(8, check=values.int_in_range(4, 64), group="run",
                           help="gate settings timed: no pruning, even keep ratios and random ones, 4..64")
    max_batches: int = option(4, check=values.int_in_range(1, 1000), group="run",
                              help="length-sorted batches of the file timed, spread over its lengths")
    repeats: int = option(5, check=values.int_in_range(3, 1000), group="run",
                          help="timed rounds (each point's time is its median over them), 3..1000")
    seed: int = common.seed()
    output: str = option("latency.json", check=values.path_text, group="output", metavar="FILE",
                         help="where to write the latency model")

    def __post_init__(self):
        check_fields(self)
