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
        help=help or f"a known task: {', '.join(TASKS)} (the seed's spellings, such as CoLA, work too)",
    )


def data_dir() -> Any:
    return option(
        None, check=values.path_text, group="model and data", metavar="DIR",
        help="the task's files: GLUE_DIR in GLUE's own layout, or DIR/20news/train.jsonl and dev.jsonl for the "
        "long-document tasks (without it, the hub copy through `datasets`)",
    )


def train_file() -> Any:
    return option(
        None, check=values.path_text, group="model and data", metavar="FILE",
        help="your own training data: a csv, tsv or json(-lines) file with a label column and text, read as "
        "Hugging Face's run_glue reads it (sentence1[, sentence2], sentence, text, else the first other columns)",
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
