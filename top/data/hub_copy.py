"""The ``datasets`` hub copy of a known task, for runs without ``--data-dir``."""

from __future__ import annotations

from typing import List, Optional

from top.data.files import Example, TaskLike, as_task
from top.data.glue import prepare_hint
from top.data.tasks import Task
from top.errors import UserError, error_detail, install_hint
from top.storage.hub import quiet_network_logs


def hub_name(task: Task, split: str = "dev") -> str:
    """The copy's address as eval records name it: ``datasets:path/config/split`` (no config: ``path/split``)."""
    hub_split = {"dev": task.hub_dev_split, "train": "train"}[split]
    return "datasets:" + "/".join(part for part in (task.hub_path, task.hub_config, hub_split) if part)


def load_hub_split(task: TaskLike, split: str = "dev", otherwise: Optional[str] = None) -> List[Example]:
    """The same split from the task's `datasets` hub copy (downloaded once, then cached).

    ``otherwise`` is the way round a failure that a message offers (by default the task's own files
    with ``--data-dir``, or ``scripts/prepare_glue.py``, which itself passes another)."""
    task = as_task(task)
    otherwise = otherwise or prepare_hint(task)
    hub_split = {"dev": task.hub_dev_split, "train": "train"}.get(split)
    if hub_split is None:
        raise UserError(f"Unknown split {split!r}; use 'dev' or 'train'.")
    try:
        import datasets
    except ImportError:
        raise UserError(
            f"The `datasets` package is not installed, so {task.name} cannot come from the hub; "
            f"{install_hint('data')} or {otherwise}."
        ) from None
    try:
        with quiet_network_logs():
            rows = datasets.load_dataset(task.hub_path, task.hub_config or None, split=hub_split)
    except Exception as exc:  # offline, not cached, hub down: all mean "provide the files yourself"
        raise UserError(
            f"Could not load {hub_name(task, split)[len('datasets:'):]} ({error_detail(exc)}); "
            f"connect once to cache it, or {otherwise}."
        ) from None
    examples = []
    for row in rows:
        label = row["label"]
        if task.is_regression:
            label = float(label)
        elif label < 0:  # unlabelled test rows
            continue
        examples.append(Example(row[task.hub_text_a], row[task.hub_text_b] if task.hub_text_b else None, label))
    return examples
