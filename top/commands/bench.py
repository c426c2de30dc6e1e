"""``top bench``: time compact inference against dense baselines and write ``bench.json`` (``top.bench``)."""

from __future__ import annotations

import argparse

import top
from top.commands.flags import add_config_arguments, config_from_args
from top.evaluation.config import BenchConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, BenchConfig)


def run(args: argparse.Namespace) -> int:
    print(top.bench(config_from_args(BenchConfig, args)).summary)
    return 0
