"""``top export``: a pruned checkpoint as an ONNX graph that drops the pruned tokens itself (``top.export``)."""

from __future__ import annotations

import argparse

import top
from top.commands.flags import add_config_arguments, config_from_args
from top.deploy.config import ExportConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, ExportConfig)


def run(args: argparse.Namespace) -> int:
    print(top.export(config_from_args(ExportConfig, args)).summary)
    return 0
