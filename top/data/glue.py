"""GLUE's own files: the TSVs under ``--data-dir`` in GLUE's layout, read and written."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import List, Sequence, Union

from top.data.files import Example, Label, TaskLike, as_task, read_rows
from top.data.tasks import Task
from top.errors import UserError, brief
from top.storage.io import atomic_write_text

PREPARE_HINT = "pass --data-dir pointing at GLUE's layout (e.g. glue_data/CoLA/dev.tsv) or run scripts/prepare_glue.py"


def glue_file(task: TaskLike, data_dir: Union[str, Path], split: str = "dev") -> Path:
    """The TSV of `split`: `data_dir/<GLUE dir>/<file>`, or `data_dir/<file>` if data_dir is the task's own."""
    task = as_task(task)
    data_dir = Path(data_dir)
    name = task.file_name(split)
    if not data_dir.is_dir():
        raise UserError(f"GLUE data directory {data_dir} does not exist; {PREPARE_HINT}.")
    for candidate in (data_dir / task.glue_dir / name, data_dir / name):
        if candidate.is_file():
            return candidate
    raise UserError(f"{data_dir / task.glue_dir / name} does not exist; {PREPARE_HINT}.")


def _parse_label(task: Task, value: str, where: str) -> Label:
    try:
        if task.label_encoding == "float":
            number = float(value)
            if not math.isfinite(number):
                raise UserError(f"{where}: label {brief(value)} is not a finite number; fix or remove that row.")
            return number
        if task.label_encoding == "name":
            return task.labels.index(value)
        label = int(value)
    except ValueError:
        expected = "a number" if task.label_encoding != "name" else "one of " + ", ".join(task.labels)
        raise UserError(f"{where}: label {brief(value)} is not {expected}; fix or remove that row.") from None
    if not 0 <= label < task.num_labels:
        raise UserError(f"{where}: label {brief(label)} is outside 0..{task.num_labels - 1}; fix or remove that row.")
    return label


def load_glue_split(task: TaskLike, data_dir: Union[str, Path], split: str = "dev") -> List[Example]:
    """Read GLUE's own TSV for `split` ("dev" or "train") the way the `datasets` glue builder does.

    Quoting is off (GLUE's sentences contain bare quote characters); rows too short to hold
    every needed column, or with an empty label, are dropped as the builder drops them.
    """
    task = as_task(task)
    path = glue_file(task, data_dir, split)
    rows = read_rows(path, delimiter="\t", quoting=csv.QUOTE_NONE)
    if task.has_header:
        if not rows:
            raise UserError(f"{path} is empty; {PREPARE_HINT}.")
        header, rows = rows[0], rows[1:]
        first_line = 2
    else:
        header, first_line = list(task.split_columns(split)), 1
    wanted = [task.text_a, task.label_column] + ([task.text_b] if task.text_b else [])
    missing = [name for name in wanted if name not in header]
    if missing:
        raise UserError(
            f"{path} has no column {', '.join(repr(m) for m in missing)} in its header; "
            f"give it GLUE's header ({', '.join(task.split_columns(split))})."
        )
    i_a = header.index(task.text_a)
    i_b = header.index(task.text_b) if task.text_b else None
    i_label = header.index(task.label_column)
    width = max(i_a, i_label, i_b if i_b is not None else 0) + 1
    examples = []
    for line, row in enumerate(rows, start=first_line):
        if len(row) < width or row[i_label] == "":
            continue
        label = _parse_label(task, row[i_label], f"{path} line {line}")
        examples.append(Example(row[i_a], row[i_b] if i_b is not None else None, label))
    return examples


def _label_text(task: Task, label: Label) -> str:
    if task.label_encoding == "float":
        return repr(float(label))
    if task.label_encoding == "name":
        return task.labels[int(label)]
    return str(int(label))


def write_glue_tsv(task: TaskLike, examples: Sequence[Example], path: Union[str, Path], split: str = "dev") -> None:
    """Write `examples` as GLUE's file for `split`; columns we have no value for stay empty."""
    task = as_task(task)
    columns = task.split_columns(split)
    out = io.StringIO()
    if task.has_header:
        out.write("\t".join(columns) + "\n")
    for n, example in enumerate(examples):
        values = {"index": str(n), task.label_column: _label_text(task, example.label), task.text_a: example.text_a}
        if task.text_b:
            values[task.text_b] = example.text_b or ""
        cells = [values.get(column, "") for column in columns]
        if any(("\t" in cell or "\n" in cell or "\r" in cell) for cell in cells):
            raise UserError(
                f"Example {n} for {path} holds a tab or line break, which a GLUE TSV cannot hold; clean its text."
            )
        out.write("\t".join(cells) + "\n")
    atomic_write_text(path, out.getvalue())
