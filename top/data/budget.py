"""The memory a data file will take once read and tokenised, estimated from its size and its rows
before it is read, and the refusal of files over the bound.

Reading a file holds every row's text and label (about 550 bytes a row of Python objects for a
short row, plus the text itself); tokenising holds about 6 bytes a token (``top.data.batching``).
The estimate charges ``BYTES_PER_ROW`` a row and ``BYTES_PER_BYTE`` a byte of the file, which
covers what was measured (``tests/test_data_budget.py``): on the 2-vCPU EPYC of the developers,
a csv of 10**6 two-word rows (12.8 MB) peaked at 0.62 GB over the process's 0.29 GB (estimate
1.10 GB), and one of 100,000 sixty-word rows (32.6 MB) at 0.34 GB (estimate 0.36 GB). With the
default bound of 3.5 GB, ``top finetune`` and ``top train`` of a tiny model stay under 4 GB, and
a file of MNLI's 393,000 training rows passes up to 420 MB.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import List, Sequence, Tuple

from top.errors import UserError

DATA_MEMORY_ENV = "TOP_DATA_MEMORY_GB"
DEFAULT_BOUND_GB = 3.5
BYTES_PER_ROW = 1000
BYTES_PER_BYTE = 8
_GB = 10**9
_BLOCK = 1 << 20


def memory_bound() -> int:
    """The bound in bytes: ``TOP_DATA_MEMORY_GB`` gigabytes, else the default."""
    text = os.environ.get(DATA_MEMORY_ENV, "").strip()
    if not text:
        return int(DEFAULT_BOUND_GB * _GB)
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise UserError(
            f"{DATA_MEMORY_ENV}={text[:40]!r} is not a positive number of gigabytes; set it to e.g. 8, or unset it."
        )
    return int(min(value, 2.0**50) * _GB)


def count_rows(path: Path, stop_after: int) -> int:
    """The rows of ``path``, counted a megabyte at a time: its lines (a json file: its objects, ``{``).

    Counting stops past ``stop_after`` rows: the file is too large whatever the rest holds.
    """
    mark = b"{" if path.suffix.lower() == ".json" else b"\n"
    rows, last = 0, b""
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_BLOCK), b""):
            rows += block.count(mark)
            last = block[-1:]
            if rows > stop_after:
                return rows
    if mark == b"\n" and last not in (b"", b"\n"):
        rows += 1  # a last line without its line break
    return rows


def estimate(path: Path, bound: int) -> Tuple[int, str, int]:
    """``(bytes, rows as words, estimated bytes of memory)`` of one data file; rows are counted only
    as far as the bound needs ("" when its size alone is over the bound)."""
    size = path.stat().st_size
    if size * BYTES_PER_BYTE > bound:
        return size, "", size * BYTES_PER_BYTE
    most = (bound - size * BYTES_PER_BYTE) // BYTES_PER_ROW
    rows = count_rows(path, most)
    words = f"over {most:,} rows" if rows > most else f"{rows:,} rows"
    return size, words, size * BYTES_PER_BYTE + rows * BYTES_PER_ROW


def check_data_memory(paths: Sequence[Path]) -> None:
    """A ``UserError`` when the data files ``paths`` (those that exist) would take more memory than the bound."""
    bound = memory_bound()
    found: List[Tuple[Path, int, str, int]] = []
    for path in paths:
        path = Path(path)
        if path.is_file():
            found.append((path, *estimate(path, bound)))
    total = sum(need for _, _, _, need in found)
    if total <= bound:
        return
    described = " and ".join(
        f"{path} ({_megabytes(size)}{f', {rows}' if rows else ''})" for path, size, rows, _ in found
    )
    counted = all(rows and not rows.startswith("over") for _, _, rows, _ in found)
    raise UserError(
        f"{described} would take {'about' if counted else 'more than'} {total / _GB:.3g} GB of memory to read "
        f"and tokenise, over the {bound / _GB:.3g} GB bound; train on a part of the data, or on a machine with "
        "more memory set "
        f"{DATA_MEMORY_ENV} to a larger number of gigabytes."
    )


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB" if size >= 100_000 else f"{size:,} bytes"
