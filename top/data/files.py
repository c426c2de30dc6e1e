"""Reading a data file: its text (UTF-8, named by line when it is not), its rows and its JSON
records; the ``Example``.

Every reader returns a list of ``Example`` in file order: text_a, text_b (None for
single-sentence tasks) and the label as a label id (classification) or a float (regression).
"""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

from top.data.tasks import Task, get_task
from top.errors import UserError, brief

Label = Union[int, float]


TaskLike = Union[str, Task]


@dataclasses.dataclass(frozen=True)
class Example:
    text_a: str
    text_b: Optional[str]
    label: Label


def as_task(task: TaskLike) -> Task:
    return task if isinstance(task, Task) else get_task(task)


def read_text(path: Path) -> str:
    """A data file's text; bytes that are not UTF-8 are the user's to fix, named by line."""
    raw = Path(path).read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise UserError(
            f"{path} line {line} holds bytes that are not UTF-8 ({raw[exc.start:exc.start + 4]!r}); "
            "save the file as UTF-8."
        ) from None


def read_rows(path: Path, **reader_options: Any) -> List[Tuple[int, List[str]]]:
    """Every non-blank row of a csv/tsv data file with the line it starts on, in file order.

    The file is read as it is parsed, so no copy of its whole text is held besides the rows.
    Bytes that are not UTF-8, or a malformed or oversized field, are the user's to fix, named by line.
    """
    rows = []
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            reader = csv.reader(handle, **reader_options)
            try:
                start = 1
                for row in reader:
                    if row:
                        rows.append((start, row))
                    start = reader.line_num + 1
            except csv.Error as exc:
                raise UserError(
                    f"{path} line {reader.line_num} cannot be read ({exc}); fix that row "
                    f"(a field holds at most {csv.field_size_limit()} characters)."
                ) from None
    except UnicodeDecodeError:
        read_text(path)  # names the line of the first bytes that are not UTF-8
        raise
    return rows


# Longer whole numbers are no label (and Python 3.11 refuses to read those over 4,300 digits).
MAX_LABEL_DIGITS = 100


def _json_hooks(path: Path, where: Callable[[], str]):
    """``json.loads`` hooks: a number of over MAX_LABEL_DIGITS digits, or a key given twice in one
    object (which JSON readers settle silently, each its own way), is the user's to fix."""

    def whole_number(digits: str) -> int:
        if len(digits.lstrip("-")) > MAX_LABEL_DIGITS:
            raise UserError(
                f"{path}{where()} holds a number of {len(digits.lstrip('-'))} digits; a label is a class number or "
                f"a score of at most {MAX_LABEL_DIGITS} digits, so fix that value."
            )
        return int(digits)

    def one_value_per_key(pairs: List[Tuple[str, Any]]) -> Dict[str, Any]:
        record: Dict[str, Any] = {}
        for key, value in pairs:
            if key in record:
                raise UserError(
                    f"{path}{where()} gives the key {brief(key)} twice in one object; keep one of them."
                )
            record[key] = value
        return record

    return {"parse_int": whole_number, "object_pairs_hook": one_value_per_key}


def read_json_lines(path: Path, text: Optional[str] = None) -> List[Tuple[int, Any]]:
    """(line number, value) of every non-blank line of a JSON-lines file, in file order.

    A line that is not JSON, nests deeper than Python reads, repeats a key or holds an overlong
    number is the user's to fix, named by line.
    """
    text = read_text(path) if text is None else text
    values = []
    line_number = 0
    hooks = _json_hooks(path, lambda: f" line {line_number}")
    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            values.append((line_number, json.loads(line, **hooks)))
        except json.JSONDecodeError as exc:
            raise UserError(f"{path} line {line_number} is not JSON ({exc}); fix its syntax.") from None
        except RecursionError:
            raise UserError(
                f"{path} line {line_number} nests its JSON deeper than it can be read; give one flat object per line."
            ) from None
    return values


def read_json_document(path: Path, text: str) -> Any:
    """The one JSON value of a whole file (``json.JSONDecodeError`` where it is not one), with the
    checks of :func:`read_json_lines`."""
    try:
        return json.loads(text, **_json_hooks(path, lambda: ""))
    except RecursionError:
        raise UserError(
            f"{path} nests its JSON deeper than it can be read; give a flat list of objects, one per example."
        ) from None
