"""The checks of setting values: a bad value becomes one sentence before any work starts.

Each check is a callable that turns a flag's text, or a value given from Python, into the value or
raises ``argparse.ArgumentTypeError`` with the fix. argparse names the flag; a config built from
Python names the field (``top.settings.fields.check_fields``).
"""

from __future__ import annotations

import argparse
import math
import os
from typing import Any, Callable, Optional, Sequence

from top.errors import brief


def _integer(text) -> int:
    if isinstance(text, bool) or isinstance(text, float) and not text.is_integer():
        raise argparse.ArgumentTypeError(f"{brief(text)} is not a whole number; give one such as 8")
    if isinstance(text, (int, float)):
        return int(text)
    if not isinstance(text, str):
        raise argparse.ArgumentTypeError(f"{brief(text)} is not a whole number; give one such as 8")
    # Python 3.11 reads at most 4,300 digits; no flag needs more than 20.
    if len(text.strip()) > 40:
        raise argparse.ArgumentTypeError(f"{brief(text)} is not a whole number of a sensible size; give one such as 8")
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{brief(text)} is not a whole number; give one such as 8") from None


def int_in_range(low: int, high: Optional[int] = None, why: str = "") -> Callable[[str], int]:
    """Whole numbers in ``low..high`` (no upper bound with ``high`` None); ``why`` explains the bound."""

    def parse(text: str) -> int:
        value = _integer(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} is below {low}; give a whole number of at least {low}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(
                f"{value} is above {high}{why}; give a whole number in {low}..{high}"
            )
        return value

    return parse


def int_at_least(low: int) -> Callable[[str], int]:
    """Whole numbers >= ``low``."""
    return int_in_range(low)


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)
# Seeds: numpy's generator takes 32 bits, and the step seeds derived from it (seed * 1_000_003 + step,
# seed * 1000 + epoch) stay inside torch's 64 bits for any such seed.
SEED_MAX = 2**32 - 1
seed_number = int_in_range(0, SEED_MAX, " (a seed is a 32-bit number)")
# Examples per batch: far above what fits a GPU, and below what stalls batching code.
BATCH_SIZE_MAX = 65536
batch_size_count = int_in_range(1, BATCH_SIZE_MAX)
# Training steps a run may plan (the teacher cache lists every step before the first).
MAX_STEPS = 10**8
step_count = int_in_range(1, MAX_STEPS, " (the most steps a run may plan)")


def finite_float(
    min: Optional[float] = None,  # noqa: A002 - reads as the call site's keyword
    max: Optional[float] = None,  # noqa: A002
    min_inclusive: bool = True,
    max_inclusive: bool = True,
) -> Callable[[str], float]:
    """Finite numbers (no nan, no inf) within the bounds given."""

    def parse(text) -> float:
        if isinstance(text, bool) or not isinstance(text, (str, int, float)):
            raise argparse.ArgumentTypeError(f"{brief(text)} is not a number; give one such as 0.5")
        try:
            value = float(text)
        except (ValueError, OverflowError):
            raise argparse.ArgumentTypeError(f"{brief(text)} is not a number; give one such as 0.5") from None
        text = brief(text)[1:-1] if isinstance(text, str) else brief(text)
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text} is not a finite number; give a finite one such as 0.5")
        if min is not None and (value < min or (value == min and not min_inclusive)):
            bound = f"at least {min:g}" if min_inclusive else f"above {min:g}"
            raise argparse.ArgumentTypeError(f"{text} is out of range; give a number {bound}")
        if max is not None and (value > max or (value == max and not max_inclusive)):
            bound = f"at most {max:g}" if max_inclusive else f"below {max:g}"
            raise argparse.ArgumentTypeError(f"{text} is out of range; give a number {bound}")
        return value

    return parse


# Epochs (and warm-up epochs): at most a million, so epochs x steps per epoch is a count of steps.
epoch_count = finite_float(min=0.0, max=1e6, min_inclusive=False)
warmup_epoch_count = finite_float(min=0.0, max=1e6)
any_float = finite_float()
positive_float = finite_float(min=0.0, min_inclusive=False)
non_negative_float = finite_float(min=0.0)
fraction = finite_float(min=0.0, max=1.0)


def path_text(value) -> str:
    """A path given as text or as a ``pathlib.Path``: its text (empty is refused)."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value.strip():
        raise argparse.ArgumentTypeError(f"{brief(value)} is not a path; give a file or directory name")
    return value


def name_text(value) -> str:
    """A name (a model directory or hub id, a task): non-empty text; a ``pathlib.Path`` is taken as its text."""
    return path_text(value)


def one_of(choices: Sequence[str]) -> Callable[[Any], str]:
    """One of ``choices``, as a check (argparse's ``choices`` does the same for the command line)."""

    def parse(value) -> str:
        if value not in choices:
            raise argparse.ArgumentTypeError(f"{brief(value)} is not one of {', '.join(choices)}; pick one of those")
        return value

    return parse
