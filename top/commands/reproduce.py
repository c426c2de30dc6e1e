"""``top reproduce``: every published checkpoint re-evaluated against the paper's table (``top.reproduce``).

``--report OUT/report.json`` re-prints an earlier run's table instead. Exit status 1 when a task
fails the table (or none could be evaluated), 2 for bad input.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import top
from top.commands.flags import add_config_arguments, config_from_args
from top.evaluation.config import ReproduceConfig
from top.evaluation.report import exit_code, failure_text, read_report, render_markdown


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, ReproduceConfig)
    parser.add_argument("--report", metavar="REPORT_JSON", help="re-print the table of an earlier run's report.json")


def run(args: argparse.Namespace) -> int:
    if args.report:
        report = read_report(args.report)
        print(render_markdown(report))
        return exit_code(report)
    config = config_from_args(ReproduceConfig, args)
    report = top.reproduce(config)
    print(render_markdown(report))
    print(f"wrote {Path(config.output_dir) / 'report.json'} and report.md")
    failure = failure_text(report)
    if failure:
        print(failure, file=sys.stderr)
    return exit_code(report)
