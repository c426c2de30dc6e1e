"""Reading a data file: its text (UTF-8, named by line when it is not) and its rows; the ``Example``.

Every reader returns a list of ``Example`` in file order: text_a, text_b (None for
single-sentence tasks) and the label as a label id (classification) or a float (regression).
"""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path
from typing import Any, List, Optional, Union

from top.data.tasks import Task, get_task
from top.errors import UserError

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


def read_rows(path: Path, as_dicts: bool = False, **reader_options: Any) -> List[Any]:
    """Every row of a csv/tsv data file (as dicts keyed by the header with ``as_dicts``).

    The file is read as it is parsed, so no copy of its whole text is held besides the rows.
    Bytes that are not UTF-8, or a malformed or oversized field, are the user's to fix, named by line.
    """
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            reader = csv.DictReader(handle, **reader_options) if as_dicts else csv.reader(handle, **reader_options)
            try:
                return [dict(row) for row in reader] if as_dicts else list(reader)
            except csv.Error as exc:
                line = (reader.reader if as_dicts else reader).line_num  # DictReader's own count lags by a row
                raise UserError(
                    f"{path} line {line} cannot be read ({exc}); fix that row "
                    f"(a field holds at most {csv.field_size_limit()} characters)."
                ) from None
    except UnicodeDecodeError:
        read_text(path)  # names the line of the first bytes that are not UTF-8
        raise
