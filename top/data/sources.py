"""The data settings every job shares, declared once: ``--task`` (with ``--data-dir``) or the user's
own ``--train-file``/``--validation-file``, and the one function that loads what a config names."""

from __future__ import annotations

from typing import Any, Sequence

from top.data.loading import SPLITS, TaskData, load_task_data
from top.data.tasks import TASKS
from top.settings import values
from top.settings.fields import option


def task(help: str = "") -> Any:
    return option(
        None, check=values.name_text, group="model and data", metavar="TASK",
        help=help or f"a task of the paper's table: {', '.join(TASKS)} (the seed's spellings, such as CoLA, work too)",
    )


def data_dir() -> Any:
    return option(
        None, check=values.path_text, group="model and data", metavar="DIR",
        help="GLUE_DIR in GLUE's own layout (without it, the hub copy through `datasets`)",
    )


def train_file() -> Any:
    return option(
        None, check=values.path_text, group="model and data", metavar="FILE",
        help="your own training data: a csv, tsv or json(-lines) file with a text column (text, sentence or "
        "sentence1[, sentence2]) and a label column",
    )


def validation_file() -> Any:
    return option(
        None, check=values.path_text, group="model and data", metavar="FILE",
        help="your own dev data, with the columns of --train-file",
    )


def load(config: Any, max_seq_length: int, splits: Sequence[str] = SPLITS) -> TaskData:
    """The examples ``config`` names (its ``task``, ``data_dir``, ``train_file``, ``validation_file``)."""
    return load_task_data(
        config.task, getattr(config, "data_dir", None), getattr(config, "train_file", None),
        config.validation_file, max_seq_length=max_seq_length, splits=splits,
    )
