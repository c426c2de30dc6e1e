"""``top finetune``: fine-tune the dense teacher, the original's PreFT step (``top.finetune``)."""

from __future__ import annotations

import argparse

import top
from top.commands.flags import add_config_arguments, config_from_args
from top.training.config import FinetuneConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, FinetuneConfig)


def run(args: argparse.Namespace) -> int:
    result = top.finetune(config_from_args(FinetuneConfig, args))
    summary = result.summary
    if not summary:  # not the main process of a distributed run
        return 0
    if result.best_dir is None:
        print(f"No evaluation gave a defined {summary['metric']}, so best/ was not written "
              f"(see {result.output_dir / 'log.jsonl'}).")
    else:
        print(f"best {summary['metric']} {summary['best']['score']:.4f} at step {summary['best']['step']} "
              f"-> {result.best_dir}")
    return 0
