"""A user's own csv, tsv or json file of sentences and labels, and the ``Task`` it stands for."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple, Union

from top.data.files import Example, Label, read_rows, read_text
from top.data.tasks import Task
from top.errors import UserError, brief

CUSTOM_COLUMNS = "'sentence' (or 'sentence1'), optional 'sentence2', and 'label'"


# Longer whole numbers are no label (and Python 3.11 refuses to read those over 4,300 digits).
MAX_LABEL_DIGITS = 100


def _read_records(path: Path) -> List[Dict[str, Any]]:
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        options = {} if suffix == ".csv" else {"delimiter": "\t", "quoting": csv.QUOTE_NONE}
        return read_rows(path, as_dicts=True, **options)
    if suffix in (".json", ".jsonl"):
        text = read_text(path)
        if not text.strip():
            return []

        def whole_number(digits: str) -> int:
            if len(digits.lstrip("-")) > MAX_LABEL_DIGITS:
                raise UserError(
                    f"{path} holds a number of {len(digits.lstrip('-'))} digits; a label is a class number or a score "
                    f"of at most {MAX_LABEL_DIGITS} digits, so fix that value."
                )
            return int(digits)

        try:
            try:
                data = json.loads(text, parse_int=whole_number)
            except json.JSONDecodeError:
                # JSON lines, which `datasets` also accepts under .json
                data = [json.loads(line, parse_int=whole_number) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as exc:
            raise UserError(f"{path} is neither JSON nor JSON lines ({exc}); fix its syntax.") from None
        except RecursionError:
            raise UserError(
                f"{path} nests its JSON deeper than it can be read; give a flat list of objects, one per example."
            ) from None
        if isinstance(data, dict) and data and all(isinstance(v, list) for v in data.values()):
            keys = list(data)
            data = [dict(zip(keys, values)) for values in zip(*data.values())]
        if isinstance(data, dict):
            data = [data]
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise UserError(f"{path} must hold a list of objects, one per example; rewrite it so.")
        return data
    raise UserError(f"{path} has an unknown extension; use .csv, .tsv, .json or .jsonl.")


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


def load_custom_file(path: Union[str, Path]) -> Tuple[List[Example], bool, List[str]]:
    """Read a csv/tsv/json(l) file with columns 'sentence', optional 'sentence2', 'label'.

    Returns (examples, is_regression, label_list). As in HF run_glue: labels that are
    all integers or strings make a classification task whose label list is sorted
    (numerically for integers) and each label becomes its index; any non-integer
    number makes a regression task with float labels and an empty label list.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist; pass an existing .csv, .tsv, .json or .jsonl file.")
    records = _read_records(path)
    if not records:
        raise UserError(f"{path} holds no examples; give it a header and at least one row with {CUSTOM_COLUMNS}.")
    columns = set().union(*(record.keys() for record in records))
    text_a_key = "sentence" if "sentence" in columns else "sentence1"
    missing = [key for key in (text_a_key, "label") if key not in columns]
    if missing:
        raise UserError(f"{path} lacks the column(s) {', '.join(missing)}; it needs {CUSTOM_COLUMNS}.")
    text_b_key = "sentence2" if "sentence2" in columns else None
    raw_labels = []
    for n, record in enumerate(records):
        for key in (text_a_key, "label") + ((text_b_key,) if text_b_key else ()):
            value = record.get(key)
            if value is None or value == "":
                raise UserError(f"{path}: example {n + 1} has no {key!r}; fill it in or remove the example.")
        raw_labels.append(record["label"])
        if isinstance(record["label"], str) and len(record["label"].strip().lstrip("+-")) > MAX_LABEL_DIGITS and (
            record["label"].strip().lstrip("+-").isdigit()
        ):
            raise UserError(
                f"{path}: example {n + 1} has a label of {len(record['label'].strip())} digits; a label is a class "
                f"number or a score of at most {MAX_LABEL_DIGITS} digits, so fix that value."
            )
        if _is_non_finite(record["label"]):
            raise UserError(
                f"{path}: example {n + 1} has the label {brief(record['label'])}, which is not a finite number; "
                "fix or remove the example."
            )

    if all(_is_int(label) for label in raw_labels):
        label_list = [str(v) for v in sorted({int(label) for label in raw_labels})]
        labels: List[Label] = [label_list.index(str(int(label))) for label in raw_labels]
        is_regression = False
    elif all(_is_float(label) for label in raw_labels):
        label_list, labels, is_regression = [], [float(label) for label in raw_labels], True
    else:
        names = [str(label) for label in raw_labels]
        label_list = sorted(set(names))
        labels, is_regression = [label_list.index(name) for name in names], False
    examples = [
        Example(str(record[text_a_key]), str(record[text_b_key]) if text_b_key else None, label)
        for record, label in zip(records, labels)
    ]
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
        train_size=train_size, dev_size=dev_size, preset=None,
    )
