"""Argument types for argparse: a bad value becomes one line and exit 2 before any work starts.

Each type is a callable that turns the flag's text into a value or raises
``argparse.ArgumentTypeError`` with the fix; argparse names the flag.
"""

from __future__ import annotations

import argparse
import math
from typing import Callable, Optional

from top.errors import brief


def _integer(text: str) -> int:
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

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{brief(text)} is not a number; give one such as 0.5") from None
        text = brief(text)[1:-1]
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


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line, ``error: PROG: MESSAGE``, and exit 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"error: {self.prog}: {message} (see `{self.prog} --help`)\n")
