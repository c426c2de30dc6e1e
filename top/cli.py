"""``top`` / ``python -m top``: one sub-command per module.

Each command module exposes ``add_arguments(parser)`` and ``run(args) -> int``.
A :class:`top.errors.UserError` (bad input) becomes one line on stderr and exit status 2; an
``OSError`` naming a file (a full disk, no permission) becomes one line and exit status 1.
"""

import argparse
import errno
import importlib
import logging
import re
import sys
from typing import List, Optional

from top import __version__
from top.commands.flags import OneLineParser
from top.errors import UserError
from top.storage.io import is_local_write_failure, kill_spec, storage_failure

# What to do about the environment failures a user can fix.
_OS_ADVICE = {
    errno.ENOSPC: "free some space there",
    errno.EDQUOT: "free some space there or raise your quota",
    errno.EACCES: "fix its permissions or choose another path",
    errno.EPERM: "fix its permissions or choose another path",
    errno.EROFS: "choose a path on a writable file system",
    errno.ENOTDIR: "a part of that path is a file; choose another path",
    errno.EISDIR: "it is a directory; choose another path",
    errno.EMFILE: "raise the open-file limit (ulimit -n)",
}

# name -> (module, one-line help). Modules are imported lazily so ``top --help`` is quick.
COMMANDS = {
    "eval": ("top.commands.evaluate", "evaluate a checkpoint on a task's dev set or a file of your own"),
    "reproduce": ("top.commands.reproduce", "re-evaluate the published checkpoints against the paper's table"),
    "finetune": ("top.commands.finetune", "fine-tune the dense teacher (the original's PreFT step)"),
    "train": ("top.commands.train", "learn the token-pruning gates under the FLOPs constraint"),
    "bench": ("top.commands.bench", "time compact inference against dense baselines"),
    "calibrate": ("top.commands.calibrate", "time compact inference on this machine and fit its latency model"),
    "export": ("top.commands.export", "write a pruned checkpoint as an ONNX model that drops the pruned tokens itself"),
    "demo": ("top.commands.demo", "run the whole method end to end on a real model and real data"),
    "grid": ("top.commands.grid", "run the paper's hyper-parameter grid search"),
}


def build_parser(argv: Optional[List[str]] = None) -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="top",
        description="ToP: constraint-aware, ranking-distilled token pruning for BERT/RoBERTa (KDD'23).",
    )
    parser.add_argument("--version", action="version", version=f"top {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    # Import only the requested command's module (none for `top --help` or `top --version`, which stay quick).
    wanted = next((a for a in argv or [] if not a.startswith("-")), None)
    for name, (module_name, help_text) in COMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        if wanted == name:
            module = importlib.import_module(module_name)
            module.add_arguments(sub_parser)
            sub_parser.set_defaults(_run=module.run)
    return parser


def installed_version(distribution: str) -> Optional[str]:
    """The installed version of `distribution` from its metadata (no import), or None when absent."""
    from importlib import metadata

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def unsupported_stack() -> Optional[str]:
    """One sentence when the installed transformers is one `top` cannot run with (5.x or later), else None."""
    version = installed_version("transformers")
    match = re.match(r"\d+", version or "")
    if match is None or int(match.group()) < 5:
        return None
    return (
        f"top needs transformers 4.x but transformers {version} is installed (5.x changed the model code that top "
        "patches); install a 4.x release with `pip install 'transformers>=4.16,<5'`, in a virtual environment of its "
        "own if another package wants transformers 5."
    )


def main(argv: Optional[List[str]] = None) -> int:
    stack_error = unsupported_stack()
    if stack_error:
        print(f"error: {stack_error}", file=sys.stderr)
        return 2
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error already printed as one line
        return exc.code if isinstance(exc.code, int) else 2
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        kill_spec()  # a test hook's value, checked before any work
        return int(args._run(args) or 0)
    except UserError as exc:
        print(f"error: {one_line(str(exc))}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.filename is None and not is_local_write_failure(exc):
            raise  # not about a path the user can fix: a bug, so keep the traceback
        print(f"error: {one_line(environment_message(exc))}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - a full disk that a library below reported in its own words
        failure = storage_failure(exc, None)
        if failure is None:
            raise
        print(f"error: {one_line(environment_message(failure))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def one_line(message: str) -> str:
    """``message`` on one line: a line break or other control character taken from a file is escaped."""
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in message)


def environment_message(exc: OSError) -> str:
    """One sentence for an ``OSError`` on a path: which path, what failed, what to do."""
    verb = "write" if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS) else "use"
    reason = exc.strerror or type(exc).__name__
    advice = _OS_ADVICE.get(exc.errno, "check that path")
    if exc.filename is None:  # the library did not say which file
        import tempfile

        return (f"cannot {verb} a file: {reason}; {advice} (on the disk of the output or of the temporary "
                f"directory {tempfile.gettempdir()}).")
    return f"cannot {verb} {exc.filename}: {reason}; {advice}."
