"""A known task's own files under ``--data-dir``, read and written: GLUE's TSVs in GLUE's layout, and
the long-document tasks' JSON lines (``DATA_DIR/20news/train.jsonl``, one ``{"text": ..., "label": ...}``
per line, as the original's ``tools/convert_yelp.py`` writes them)."""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from pathlib import Path
from typing import Any, List, Sequence, Union

from top.data.files import Example, Label, TaskLike, as_task, read_json_lines, read_rows
from top.data.tasks import Task
from top.errors import UserError, brief
from top.storage.io import atomic_write_text

logger = logging.getLogger(__name__)

PREPARE_HINT = "pass --data-dir pointing at GLUE's layout (e.g. glue_data/CoLA/dev.tsv) or run scripts/prepare_glue.py"
# How many line numbers a message about dropped rows names before it says "..."
_LINES_NAMED = 5


def prepare_hint(task: Task) -> str:
    """How to give ``task``'s files: GLUE's layout, or the JSON-lines folder of a long-document task."""
    if task.file_format == "jsonl":
        return (
            f"pass --data-dir holding {task.glue_dir}/{task.train_file} and {task.glue_dir}/{task.dev_file} "
            '(JSON lines, one {"' + task.text_a + '": ..., "' + task.label_column + '": ...} per line), '
            f"or run scripts/prepare_glue.py --tasks {task.name}"
        )
    return PREPARE_HINT


def _candidates(task: Task, data_dir: Path, name: str) -> List[Path]:
    """Where ``name`` may sit: ``data_dir/<task folder>/name`` or ``data_dir/name``; JSON lines also
    under ``.json``, the name the original's converter gives them."""
    names = [name]
    if task.file_format == "jsonl" and name.endswith(".jsonl"):
        names.append(name[: -len(".jsonl")] + ".json")
    return [folder / each for folder in (data_dir / task.glue_dir, data_dir) for each in names]


def glue_file(task: TaskLike, data_dir: Union[str, Path], split: str = "dev") -> Path:
    """The file of `split`: `data_dir/<task folder>/<file>`, or `data_dir/<file>` if data_dir is the task's own."""
    task = as_task(task)
    data_dir = Path(data_dir)
    name = task.file_name(split)
    if not data_dir.is_dir():
        raise UserError(f"The data directory {data_dir} for {task.name} does not exist; {prepare_hint(task)}.")
    for candidate in _candidates(task, data_dir, name):
        if candidate.is_file():
            return candidate
    raise UserError(f"{data_dir / task.glue_dir / name} does not exist; {prepare_hint(task)}.")


def _parse_label(task: Task, value: Any, where: str) -> Label:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise UserError(f"{where}: label {brief(value)} is not a class or a number; fix or remove that row.")
    try:
        if task.label_encoding == "float":
            number = float(value)
            if not math.isfinite(number):
                raise UserError(f"{where}: label {brief(value)} is not a finite number; fix or remove that row.")
            return number
        if task.label_encoding == "name":
            return task.file_labels.index(str(value))
        if isinstance(value, float):
            raise ValueError(value)
        label = int(value)
    except ValueError:
        expected = {
            "float": "a number",
            "index": f"a class number 0..{task.num_labels - 1}",
            "name": "one of " + ", ".join(task.file_labels),
        }[task.label_encoding]
        raise UserError(f"{where}: label {brief(value)} is not {expected}; fix or remove that row.") from None
    if not 0 <= label < task.num_labels:
        raise UserError(f"{where}: label {brief(label)} is outside 0..{task.num_labels - 1}; fix or remove that row.")
    return label


def _lines(numbers: Sequence[int]) -> str:
    named = ", ".join(str(n) for n in numbers[:_LINES_NAMED])
    return named + (", ..." if len(numbers) > _LINES_NAMED else "")


def load_glue_split(task: TaskLike, data_dir: Union[str, Path], split: str = "dev") -> List[Example]:
    """Read the task's own file for `split` ("dev" or "train"): GLUE's TSV, or the JSON lines of a
    long-document task."""
    task = as_task(task)
    path = glue_file(task, data_dir, split)
    if task.file_format == "jsonl":
        return _load_json_lines(task, path)
    return _load_tsv(task, path, split)


def _load_tsv(task: Task, path: Path, split: str) -> List[Example]:
    """GLUE's TSV, read the way the `datasets` glue builder reads it.

    Quoting is off (GLUE's sentences contain bare quote characters); rows too short to hold
    every needed column, or with an empty label, are dropped as the builder drops them, and one
    warning names them.
    """
    rows = read_rows(path, delimiter="\t", quoting=csv.QUOTE_NONE)
    if task.has_header:
        if not rows:
            raise UserError(f"{path} is empty; {PREPARE_HINT}.")
        header, rows = rows[0][1], rows[1:]
    else:
        header = list(task.split_columns(split))
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
    examples, dropped = [], []
    for line, row in rows:
        if len(row) < width or row[i_label] == "":
            dropped.append(line)
            continue
        label = _parse_label(task, row[i_label], f"{path} line {line}")
        examples.append(Example(row[i_a], row[i_b] if i_b is not None else None, label))
    if dropped:
        logger.warning(
            "%s: dropped %d row(s) too short to hold every needed column or with an empty label (line %s), as "
            "the datasets glue builder drops them; complete those rows to count them.", path, len(dropped),
            _lines(dropped),
        )
    return examples


def _load_json_lines(task: Task, path: Path) -> List[Example]:
    """One JSON object per line with the task's text and label keys; other keys are ignored."""
    examples = []
    for line, record in read_json_lines(path):
        where = f"{path} line {line}"
        if not isinstance(record, dict):
            raise UserError(f"{where} holds {brief(record)}, not an object; give one object per line.")
        for key in (task.text_a, task.label_column) + ((task.text_b,) if task.text_b else ()):
            if record.get(key) is None:
                raise UserError(f"{where} has no {key!r}; give every line a {key!r}, or remove that line.")
        texts = [record[key] for key in (task.text_a, task.text_b) if key]
        for key, text in zip((task.text_a, task.text_b), texts):
            if not isinstance(text, str):
                raise UserError(f"{where}: {key!r} is {brief(text)}, not text; give it as a JSON string.")
        label = _parse_label(task, record[task.label_column], where)
        examples.append(Example(texts[0], texts[1] if len(texts) > 1 else None, label))
    return examples


def _label_text(task: Task, label: Label) -> str:
    if task.label_encoding == "float":
        return repr(float(label))
    if task.label_encoding == "name":
        return task.file_labels[int(label)]
    return str(int(label))


def write_glue_tsv(task: TaskLike, examples: Sequence[Example], path: Union[str, Path], split: str = "dev") -> None:
    """Write `examples` as the task's own file for `split`: GLUE's TSV (columns we have no value for
    stay empty), or the JSON lines of a long-document task."""
    task = as_task(task)
    if task.file_format == "jsonl":
        _write_json_lines(task, examples, path)
        return
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


def _write_json_lines(task: Task, examples: Sequence[Example], path: Union[str, Path]) -> None:
    lines = []
    for example in examples:
        record = {task.text_a: example.text_a}
        if task.text_b:
            record[task.text_b] = example.text_b or ""
        label = _label_text(task, example.label)
        record[task.label_column] = int(label) if label.lstrip("-").isdigit() else label
        lines.append(json.dumps(record, ensure_ascii=False))
    atomic_write_text(path, "".join(line + "\n" for line in lines))
