"""``top calibrate``: time compact inference on this machine and write its latency model (``top.calibrate``)."""

from __future__ import annotations

import argparse

import top
from top.commands.flags import add_config_arguments, config_from_args
from top.evaluation.config import CalibrateConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, CalibrateConfig)


def run(args: argparse.Namespace) -> int:
    print(top.calibrate(config_from_args(CalibrateConfig, args)).summary)
    return 0
