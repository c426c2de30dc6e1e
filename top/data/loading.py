"""The one lookup of a task's examples: ``load_task_data -> TaskData``, from GLUE's files, the
``datasets`` hub copy or a user's own files."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import List, Optional, Sequence, Union

from top.data.budget import check_data_memory
from top.data.custom import CUSTOM_TASK, custom_task, load_custom_file
from top.data.files import Example, TaskLike, as_task
from top.data.glue import glue_file, load_glue_split
from top.data.hub_copy import hub_name, load_hub_split
from top.data.tasks import Task
from top.errors import UserError

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------- the datasets hub




# --------------------------------------------------------------------------- a user's own file













# --------------------------------------------------------------------------- the one lookup

SPLITS = ("train", "dev")




@dataclasses.dataclass(frozen=True)
class TaskData:
    """One task's examples and what scoring them needs: a GLUE task, or a user's file as a Task."""

    task: Task
    train: List[Example]  # empty when only the dev set was asked for
    dev: List[Example]
    source: str  # where the dev examples came from, as eval records name it

    @property
    def name(self) -> str:
        return self.task.name

    @property
    def is_custom(self) -> bool:
        return self.task.name == CUSTOM_TASK

    @property
    def num_labels(self) -> int:
        return self.task.num_labels

    @property
    def is_regression(self) -> bool:
        return self.task.is_regression

    @property
    def task_length(self) -> int:
        """The length the sequence sparsity is counted at."""
        return self.task.task_length

    @property
    def metric(self) -> str:
        return self.task.metric


def load_task_data(
    task: Optional[TaskLike] = None,
    data_dir: Optional[Union[str, Path]] = None,
    train_file: Optional[Union[str, Path]] = None,
    validation_file: Optional[Union[str, Path]] = None,
    *,
    max_seq_length: int,
    splits: Sequence[str] = SPLITS,
) -> TaskData:
    """A known ``task`` from its folder under ``data_dir`` (else the hub copy), or the user's own files.

    ``splits`` is ``("train", "dev")`` for training or ``("dev",)`` for scoring only; a user's
    dev set is then ``validation_file`` alone, and for training its labels are numbered by the
    train file's label list. A known task whose FLOPs are counted at more tokens than
    ``max_seq_length`` (the long-document tasks at 512, under the default 256) is cut shorter
    than the paper reads it: one warning says so.
    """
    if tuple(splits) not in (SPLITS, ("dev",)):
        raise ValueError(f"splits must be ('train', 'dev') or ('dev',), not {tuple(splits)}")
    with_train = "train" in splits
    files = "both --train-file and --validation-file" if with_train else "--validation-file"
    if task and (train_file or validation_file):
        raise UserError(f"Give either --task (a known task) or {files} (your own data), not both.")
    if task:
        data = _glue_data(as_task(task), data_dir, with_train)
        if data.task_length > max_seq_length:
            logger.warning(
                "%s is read at %d tokens, but --max-seq-length %d cuts its inputs shorter; pass --max-seq-length %d "
                "to read them as the paper does.", data.name, data.task_length, max_seq_length, data.task_length,
            )
    elif validation_file and (train_file or not with_train):
        data = _custom_data(train_file if with_train else None, validation_file, max_seq_length)
    else:
        raise UserError(f"Say which data to use: pass --task (with --data-dir), or {files}.")
    if not data.dev:
        raise UserError(f"The {data.name} dev set at {data.source} has no examples; check the file.")
    return data


def _glue_data(task: Task, data_dir: Optional[Union[str, Path]], with_train: bool) -> TaskData:
    if data_dir:
        check_data_memory([glue_file(task, data_dir, split) for split in (SPLITS if with_train else ("dev",))])
        train = load_glue_split(task, data_dir, "train") if with_train else []
        dev = load_glue_split(task, data_dir, "dev")
        source = str(glue_file(task, data_dir, "dev"))
    else:
        train = load_hub_split(task, "train") if with_train else []
        dev = load_hub_split(task, "dev")
        source = hub_name(task, "dev")
    return TaskData(task, train, dev, source)


def _custom_data(train_file: Optional[Union[str, Path]], validation_file: Union[str, Path],
                 max_seq_length: int) -> TaskData:
    train: List[Example] = []
    check_data_memory([Path(path) for path in (train_file, validation_file) if path is not None])
    if train_file is not None:
        train, train_regression, train_labels = load_custom_file(train_file)
    dev, dev_regression, dev_labels = load_custom_file(validation_file)
    if train_file is None:
        train_regression, train_labels = dev_regression, dev_labels
    elif train_regression != dev_regression:
        raise UserError(
            f"{train_file} and {validation_file} disagree on whether labels are numbers or classes; "
            "use the same kind of label in both."
        )
    elif not train_regression:
        unknown = sorted(set(dev_labels) - set(train_labels))
        if unknown:
            raise UserError(
                f"{validation_file} has labels {unknown} that {train_file} never uses; give the train file every label."
            )
        # Each file numbers its own sorted labels; renumber the dev labels by the train file's list.
        dev = [dataclasses.replace(e, label=train_labels.index(dev_labels[e.label])) for e in dev]
    is_pair = dev[0].text_b is not None
    task = custom_task(train_regression, train_labels, max_seq_length, is_pair, len(train), len(dev))
    return TaskData(task, train, dev, str(validation_file))


# --------------------------------------------------------------------------- tokenising








