"""Argument types for argparse: a bad value becomes one line and exit 2 before any work starts.

Each type is a callable that turns the flag's text into a value or raises
``argparse.ArgumentTypeError`` with the fix; argparse names the flag.
"""

from __future__ import annotations

import argparse
import math
from typing import Callable, Optional


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number; give one such as 8") from None


def int_at_least(low: int) -> Callable[[str], int]:
    """Whole numbers >= ``low``."""

    def parse(text: str) -> int:
        value = _integer(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} is below {low}; give a whole number of at least {low}")
        return value

    return parse


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)


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
            raise argparse.ArgumentTypeError(f"{text!r} is not a number; give one such as 0.5") from None
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


any_float = finite_float()
positive_float = finite_float(min=0.0, min_inclusive=False)
non_negative_float = finite_float(min=0.0)
fraction = finite_float(min=0.0, max=1.0)


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line, ``error: PROG: MESSAGE``, and exit 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"error: {self.prog}: {message} (see `{self.prog} --help`)\n")
