"""What the commands share: the data and run flags, ``--device`` and its one resolver, and the
settings objects those flags become once, at the command's edge.

A command's ``run(args)`` is the only code that reads the argparse ``Namespace``: it builds these
frozen objects (``DataSource``, ``RunOptions``, ``Schedule``, and the command's own) and hands them
down. The flags' defaults are the objects' field defaults, so scripts and tests read them there.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Type, TypeVar

import torch
from transformers import AutoConfig, AutoTokenizer

from top.commands.argtypes import (
    MAX_STEPS,
    batch_size_count,
    int_at_least,
    non_negative_float,
    positive_float,
    positive_int,
    seed_number,
)
from top.data.batching import check_token_ids, encode_set
from top.data.loading import TaskData, load_task_data
from top.data.tasks import TASKS
from top.data.tokenizer_failures import is_tokenizer_failure, rust_panics_quiet
from top.errors import UserError
from top.method.checkpoint import check_config_file
from top.training.determinism import SEED

Settings = TypeVar("Settings")


def settings_from(cls: Type[Settings], args, **given: Any) -> Settings:
    """A settings object from the parsed flags of its fields' names (``given`` for the others)."""
    names = [field.name for field in dataclasses.fields(cls) if field.name not in given]
    return cls(**{name: getattr(args, name) for name in names}, **given)


def arguments_record(args) -> Dict[str, Any]:
    """The command line as parsed, for ``run.json``'s ``args`` (argparse's private entries left out)."""
    return {k: v for k, v in vars(args).items() if not k.startswith("_")}


def settings_record(settings) -> Dict[str, Any]:
    """A settings object as plain JSON values, for ``run.json`` (the parsed command line left out)."""
    record = dataclasses.asdict(settings)
    record.pop("arguments", None)

    def plain(value):
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return str(value) if isinstance(value, Path) else value

    return plain(record)


@dataclasses.dataclass(frozen=True)
class DataSource:
    """Where the examples come from: ``--task`` (GLUE's folder under ``--data-dir``, else the hub
    copy) or the user's own ``--train-file``/``--validation-file``."""

    task: Optional[str] = None
    data_dir: Optional[str] = None
    train_file: Optional[str] = None
    validation_file: Optional[str] = None

    def load(self, max_seq_length: int, splits: Tuple[str, ...] = ("train", "dev")) -> TaskData:
        return load_task_data(self.task, self.data_dir, self.train_file, self.validation_file,
                              max_seq_length=max_seq_length, splits=splits)


# ``--device``'s default policies: each command keeps the one it has always had.
AUTO_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # train, finetune, eval, demo
DEVICES = ("cpu", "cuda")


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """How a training command runs: batches, lengths, clipping, seed, device, logging, output."""

    output_dir: Path
    batch_size: int = 32  # per process and step
    eval_batch_size: int = 32
    max_seq_length: int = 256
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = SEED
    device: str = AUTO_DEVICE
    logging_steps: int = 25
    no_progress: bool = False
    group_by_length: bool = False


@dataclasses.dataclass(frozen=True)
class Schedule:
    """How long a training run is: ``--max-steps``, else ``--epochs``, else the command's default epochs."""

    epochs: Optional[float] = None
    max_steps: Optional[int] = None

    def total_steps(self, steps_per_epoch: int, default_epochs: float) -> int:
        if self.max_steps is not None:
            return int(self.max_steps)
        epochs = self.epochs if self.epochs is not None else default_epochs
        total = max(1, int(math.ceil(epochs * steps_per_epoch)))
        if total > MAX_STEPS:
            # Checked before anything plans the steps: the teacher cache lists every one of them.
            raise UserError(
                f"--epochs {epochs:g} at {steps_per_epoch} steps per epoch plans {total:.3g} steps, more than the "
                f"{MAX_STEPS:.0e} a run may take; give fewer epochs, a larger --batch-size or --max-steps."
            )
        return total


def data_source(args) -> DataSource:
    return settings_from(DataSource, args)


def run_options(args) -> RunOptions:
    return settings_from(RunOptions, args, output_dir=Path(args.output_dir))


def schedule(args) -> Schedule:
    return settings_from(Schedule, args)


def add_data_arguments(parser) -> None:
    parser.add_argument("--task", help=f"GLUE task: {', '.join(TASKS)}")
    parser.add_argument("--data-dir", help="GLUE_DIR in GLUE's layout (else the `datasets` hub copy)")
    parser.add_argument("--train-file", help="a csv/tsv/json file with sentence[, sentence2], label")
    parser.add_argument("--validation-file", help="the dev file, same columns as --train-file")


def add_run_arguments(parser) -> None:
    defaults = RunOptions
    parser.add_argument("--batch-size", type=batch_size_count, default=defaults.batch_size,
                        help="examples per process and step")
    parser.add_argument("--eval-batch-size", type=batch_size_count, default=defaults.eval_batch_size)
    parser.add_argument("--max-seq-length", type=int_at_least(2), default=defaults.max_seq_length)
    parser.add_argument("--weight-decay", type=non_negative_float, default=defaults.weight_decay)
    parser.add_argument("--max-grad-norm", type=positive_float, default=defaults.max_grad_norm)
    parser.add_argument("--seed", type=seed_number, default=defaults.seed, help=f"0..2**32-1 (default {SEED})")
    add_device_argument(parser)
    parser.add_argument("--logging-steps", type=positive_int, default=defaults.logging_steps)
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument(
        "--group-by-length", action="store_true",
        help="batch examples of similar length (Hugging Face's group_by_length): less padding, so faster steps; "
        "off by default, as in the paper's runs",
    )


def add_device_argument(parser, default: Optional[str] = AUTO_DEVICE, help: Optional[str] = None) -> None:
    """The one definition of ``--device``; ``default`` is the command's policy (None: decided later)."""
    parser.add_argument("--device", choices=DEVICES, default=default, help=help)


def resolve_device(name: str, local_rank: Optional[int] = None) -> torch.device:
    """The torch device a ``--device`` value names (under torchrun, this process's GPU); no GPU is an error."""
    if name not in DEVICES:
        raise UserError(f"Unknown device {name!r}; pass --device cpu or --device cuda.")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise UserError("--device cuda was given but no CUDA GPU is visible; pass --device cpu or expose a GPU.")
        return torch.device("cuda") if local_rank is None else torch.device("cuda", local_rank)
    return torch.device("cpu")


def encode_data(data: TaskData, model_dir: Path, flag: str, name: str, max_seq_length: int):
    """The tokenizer of the model in ``model_dir`` (``flag name`` resolved), and the train and dev
    sets tokenised by it at ``max_seq_length``."""
    try:
        with rust_panics_quiet():
            tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    except BaseException as error:  # noqa: BLE001 - a tokenizers panic is a BaseException
        if not is_tokenizer_failure(error):
            raise
        raise UserError(
            f"{flag} {name} has no tokenizer ({type(error).__name__}); give a model directory with one."
        ) from None
    check_config_file(model_dir, f"The config.json of {flag} {name}")  # before transformers reads it
    config = AutoConfig.from_pretrained(str(model_dir))
    train_set = encode_set(data.train, tokenizer, max_seq_length, what="the training data")
    dev_set = encode_set(data.dev, tokenizer, max_seq_length, what="the dev set")
    for encoded in (train_set, dev_set):
        check_token_ids(encoded, config, f"{flag} {name}")
    return tokenizer, train_set, dev_set
