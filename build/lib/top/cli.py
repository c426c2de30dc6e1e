"""``top`` / ``python -m top``: one sub-command per module.

Each command module exposes ``add_arguments(parser)`` and ``run(args) -> int``.
A :class:`top.errors.UserError` becomes one line on stderr and exit status 2.
"""

import argparse
import importlib
import logging
import sys
from typing import List, Optional

from top import __version__
from top.errors import UserError

# name -> (module, one-line help). Modules are imported lazily so ``top --help`` is quick.
COMMANDS = {
    "eval": ("top.evaluate", "evaluate a pruned checkpoint on a GLUE dev set or a custom file"),
    "reproduce": ("top.reproduce", "re-evaluate the published checkpoints against the paper's table"),
    "finetune": ("top.finetune", "fine-tune the dense teacher (the original's PreFT step)"),
    "train": ("top.train", "learn the token-pruning gates under the FLOPs constraint"),
    "bench": ("top.bench", "time compact inference against dense baselines"),
    "demo": ("top.demo", "run the whole method end to end on a real model and real data"),
    "grid": ("top.grid", "run the paper's hyper-parameter grid search"),
}


def build_parser(argv: Optional[List[str]] = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="top",
        description="ToP: constraint-aware, ranking-distilled token pruning for BERT/RoBERTa (KDD'23).",
    )
    parser.add_argument("--version", action="version", version=f"top {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    wanted = None
    if argv:
        # Import only the requested command's module when it is known.
        wanted = next((a for a in argv if not a.startswith("-")), None)
        if wanted not in COMMANDS:
            wanted = None
    for name, (module_name, help_text) in COMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        if wanted is None or wanted == name:
            try:
                module = importlib.import_module(module_name)
            except ModuleNotFoundError as exc:
                if exc.name != module_name:
                    raise
                continue  # command not built yet
            module.add_arguments(sub_parser)
            sub_parser.set_defaults(_run=module.run)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    run = getattr(args, "_run", None)
    if run is None:
        parser.error(f"the command {args.command!r} is not available in this version")
    try:
        return int(run(args) or 0)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
