"""``top eval``: score a checkpoint on a dev set in one mode (``top.evaluate``)."""

from __future__ import annotations

import argparse

import top
from top.commands.flags import add_config_arguments, config_from_args
from top.evaluation.config import EvalConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, EvalConfig)


def run(args: argparse.Namespace) -> int:
    result = top.evaluate(config_from_args(EvalConfig, args))
    print(result.summary)
    print(f"wrote {result.path}")
    return 0
