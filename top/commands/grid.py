"""``top grid``: the paper's hyper-parameter grid, one ``top train`` run per point (``top.grid``).

Exit status 1 when a run failed (rerun to retry), 2 for bad input.
"""

from __future__ import annotations

import argparse
import sys

import top
from top.commands.flags import add_config_arguments, config_from_args
from top.training.grid import GridConfig, summary_lines


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, GridConfig)


def run(args: argparse.Namespace) -> int:
    config = config_from_args(GridConfig, args)
    result = top.grid(config)
    if config.dry_run:
        for row in result.rows:
            print(row["command"])
        return 0
    for line in summary_lines(result):
        print(line)
    if result.failed:
        print(f"{len(result.failed)} run(s) failed: {', '.join(result.failed)} (see their train.log; rerun to retry)",
              file=sys.stderr)
        return 1
    return 0
