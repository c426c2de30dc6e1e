"""A user's own csv, tsv or json file of sentences and labels, and the ``Task`` it stands for."""

from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from top.data.files import MAX_LABEL_DIGITS, Example, Label, read_json_document, read_json_lines, read_rows, read_text
from top.data.tasks import Task
from top.errors import UserError, brief

logger = logging.getLogger(__name__)

LABEL_COLUMN = "label"
CUSTOM_COLUMNS = (
    "a 'label' column and the text in 'text', 'sentence' or 'sentence1' (with 'sentence2' for pairs), "
    "or else in the first other columns"
)
# A record: where it is in the file ("line 5", or "example 5" in a JSON list) and its values by column.
Record = Tuple[str, Dict[str, Any]]


def _read_table(path: Path, delimiter: str) -> Tuple[List[str], List[Record]]:
    """A csv/tsv file's header and rows; a header naming a column twice, or a row with more non-empty
    fields than the header, is the user's to fix (a .tsv is read unquoted, as GLUE's files are)."""
    quoting = csv.QUOTE_MINIMAL if delimiter == "," else csv.QUOTE_NONE
    rows = read_rows(path, delimiter=delimiter, quoting=quoting)
    if not rows:
        return [], []
    (_, header), rows = rows[0], rows[1:]
    seen = set()
    for name in header:
        if name in seen and name.strip():  # unnamed columns (a spreadsheet's trailing separators) are never read
            raise UserError(f"{path} names the column {brief(name)} twice in its header; rename or remove one of them.")
        seen.add(name)
    records = []
    for line, row in rows:
        if len(row) > len(header) and any(cell.strip() for cell in row[len(header):]):
            what = "tab-separated " if delimiter == "\t" else ""
            why = (
                "; a .tsv is read without quotes, so a tab inside a quoted sentence splits it: remove the tab or "
                "save the file as .csv" if delimiter == "\t" else "; quote every field that holds a comma"
            )
            raise UserError(
                f"{path} line {line} has {len(row)} {what}fields but its header has {len(header)}{why}."
            )
        records.append((f"line {line}", dict(zip(header, row))))
    return header, records


def _read_json(path: Path) -> Tuple[List[str], List[Record]]:
    """A JSON list (or dict of columns) of examples, or JSON lines, which `datasets` also takes as .json."""
    text = read_text(path)
    if not text.strip():
        return [], []
    try:
        data = read_json_document(path, text)
        if isinstance(data, dict) and data and all(isinstance(v, list) for v in data.values()):
            keys = list(data)
            data = [dict(zip(keys, values)) for values in zip(*data.values())]
        data = [data] if isinstance(data, dict) else data
        if not isinstance(data, list):
            raise UserError(f"{path} must hold a list of objects, one per example; rewrite it so.")
        numbered = [(f"example {n}", record) for n, record in enumerate(data, start=1)]
    except json.JSONDecodeError:
        numbered = [(f"line {line}", record) for line, record in read_json_lines(path, text)]
    for where, record in numbered:
        if not isinstance(record, dict):
            raise UserError(f"{path} {where} holds {brief(record)}, not an object; give one object per example.")
    columns = list(dict.fromkeys(key for _, record in numbered for key in record))
    return columns, numbered


def _read_records(path: Path) -> Tuple[List[str], List[Record]]:
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        return _read_table(path, "," if suffix == ".csv" else "\t")
    if suffix in (".json", ".jsonl"):
        return _read_json(path)
    raise UserError(f"{path} has an unknown extension; use .csv, .tsv, .json or .jsonl.")


def text_columns(path: Path, columns: Sequence[str]) -> Tuple[str, Optional[str]]:
    """The columns the text comes from, as Hugging Face's run_glue picks them for a file of one's own.

    'sentence1' and 'sentence2' make pairs; else 'sentence' (with 'sentence2' for pairs), a lone
    'sentence1', or 'text'; else, as run_glue does, the first two columns other than 'label' make
    pairs, or the only one single sentences.
    """
    others = [name for name in columns if name != LABEL_COLUMN]
    if "sentence1" in others and "sentence2" in others:
        return "sentence1", "sentence2"
    for name in ("sentence", "sentence1", "text"):
        if name in others:
            return name, ("sentence2" if name == "sentence" and "sentence2" in others else None)
    if not others:
        raise UserError(f"{path} has no column besides 'label' to read text from; it needs {CUSTOM_COLUMNS}.")
    return others[0], (others[1] if len(others) > 1 else None)


def _is_int(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    if isinstance(value, str):
        try:
            int(value)
            return True
        except ValueError:
            return False
    return False


def _is_float(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):
        return True
    if isinstance(value, str):
        try:
            return math.isfinite(float(value))
        except ValueError:
            return False
    return False


def _is_non_finite(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return False
    try:
        return not math.isfinite(float(value))
    except (ValueError, OverflowError):
        return False


def _check_label(path: Path, where: str, label: Any) -> None:
    if isinstance(label, (dict, list)):
        kind = "a JSON object" if isinstance(label, dict) else "a JSON list"
        raise UserError(f"{path} {where} has a label that is {kind}, not a class or a number; fix that example.")
    if isinstance(label, str) and len(label.strip().lstrip("+-")) > MAX_LABEL_DIGITS and (
        label.strip().lstrip("+-").isdigit()
    ):
        raise UserError(
            f"{path} {where} has a label of {len(label.strip())} digits; a label is a class "
            f"number or a score of at most {MAX_LABEL_DIGITS} digits, so fix that value."
        )
    if _is_non_finite(label):
        raise UserError(
            f"{path} {where} has the label {brief(label)}, which is not a finite number; fix or remove the example."
        )


def _text(path: Path, where: str, key: str, value: Any) -> str:
    """A sentence as read; one that is missing, empty or not text (a JSON object, list or number) is the
    user's to fix."""
    if value is None or value == "":
        raise UserError(f"{path} {where} has no {key!r}; fill it in or remove the example.")
    if not isinstance(value, str):
        kind = {dict: "a JSON object", list: "a JSON list"}.get(
            type(value), f"the {type(value).__name__} {brief(value)}")
        raise UserError(f"{path} {where} gives {key!r} as {kind}, not text; write the sentence as a JSON string.")
    return value


def load_custom_file(path: Union[str, Path]) -> Tuple[List[Example], bool, List[str]]:
    """Read a csv/tsv/json(l) file of texts and a 'label' column, as Hugging Face's run_glue reads it.

    The text columns are :func:`text_columns`' choice, said in one log line. Returns (examples,
    is_regression, label_list). As in HF run_glue: labels that are all integers or strings make a
    classification task whose label list is sorted (numerically for integers) and each label
    becomes its index; any non-integer number makes a regression task with float labels and an
    empty label list.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist; pass an existing .csv, .tsv, .json or .jsonl file.")
    columns, records = _read_records(path)
    if not records:
        raise UserError(f"{path} holds no examples; give it a header and at least one row with {CUSTOM_COLUMNS}.")
    if LABEL_COLUMN not in columns:
        raise UserError(f"{path} lacks the column 'label'; it needs {CUSTOM_COLUMNS}.")
    text_a_key, text_b_key = text_columns(path, columns)
    logger.info(
        "%s: text from %s, labels from 'label' (of the columns %s)", path,
        f"the columns {text_a_key!r} and {text_b_key!r} as pairs" if text_b_key else f"the column {text_a_key!r}",
        ", ".join(repr(c) for c in columns),
    )
    raw_labels, texts = [], []
    for where, record in records:
        text_a = _text(path, where, text_a_key, record.get(text_a_key))
        text_b = _text(path, where, text_b_key, record.get(text_b_key)) if text_b_key else None
        label = record.get(LABEL_COLUMN)
        if label is None or label == "":
            raise UserError(f"{path} {where} has no 'label'; fill it in or remove the example.")
        _check_label(path, where, label)
        raw_labels.append(label)
        texts.append((text_a, text_b))

    if all(_is_int(label) for label in raw_labels):
        label_list = [str(v) for v in sorted({int(label) for label in raw_labels})]
        index = {int(name): n for n, name in enumerate(label_list)}
        labels: List[Label] = [index[int(label)] for label in raw_labels]
        is_regression = False
    elif all(_is_float(label) for label in raw_labels):
        label_list, labels, is_regression = [], [float(label) for label in raw_labels], True
    else:
        names = [str(label) for label in raw_labels]
        label_list = sorted(set(names))
        index = {name: n for n, name in enumerate(label_list)}
        labels, is_regression = [index[name] for name in names], False
    examples = [Example(text_a, text_b, label) for (text_a, text_b), label in zip(texts, labels)]
    return examples, is_regression, label_list


CUSTOM_TASK = "custom"


def custom_task(is_regression: bool, labels: Sequence[str], max_seq_length: int, is_pair: bool,
                train_size: int = 0, dev_size: int = 0) -> Task:
    """A user's own data as a Task: accuracy for classes, pearson and spearmanr for numbers.

    Its sparsity is counted at ``max_seq_length``, and it has no training preset.
    """
    metrics = ("pearson", "spearmanr") if is_regression else ("accuracy",)
    columns = ("sentence", "sentence2", "label") if is_pair else ("sentence", "label")
    return Task(
        name=CUSTOM_TASK, glue_dir="", train_file="", dev_file="", has_header=True,
        columns=columns, train_columns=columns, text_a="sentence", text_b="sentence2" if is_pair else None,
        label_column="label", label_encoding="float" if is_regression else "index", labels=tuple(labels),
        num_labels=1 if is_regression else len(labels), metric=metrics[0], metrics=metrics,
        task_length=max_seq_length, hub_path="", hub_config="", hub_text_a="", hub_text_b=None, hub_dev_split="",
        train_size=train_size, dev_size=dev_size, preset=None, benchmark="",
    )
