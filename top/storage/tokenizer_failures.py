"""What a tokenizer's failure looks like: an exception from its files (or its Rust core), told apart from
an interrupt, and the Rust panic message kept off the terminal.

A tokenizer is built from files the user gave (``vocab.txt``, ``tokenizer.json``), so its failure
while loading or encoding is bad input. The ``tokenizers`` library raises plain ``Exception`` for
its errors ("WordPiece error: Missing [UNK] token") and ``pyo3_runtime.PanicException``, which
derives from ``BaseException``, when its Rust code panics (an Oniguruma pattern that hits its
retry limit); the panic also prints its own message and backtrace straight to file descriptor 2.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from typing import Iterator

# Never a tokenizer's fault: they go up unchanged.
_NOT_FAILURES = (KeyboardInterrupt, SystemExit, GeneratorExit, MemoryError)


def is_tokenizer_failure(error: BaseException) -> bool:
    """True for an exception a tokenizer raises over its files or its input, a Rust panic included."""
    if isinstance(error, _NOT_FAILURES):
        return False
    return isinstance(error, Exception) or type(error).__name__ == "PanicException"


def tokenizer_error_detail(error: BaseException) -> str:
    """The first line of a tokenizer's error, short, with its type when the message is empty."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0][:200] if lines else type(error).__name__


@contextlib.contextmanager
def rust_panics_quiet() -> Iterator[None]:
    """Hold back what is written to file descriptor 2 during the block, and write it out only if the
    block succeeds: a Rust panic prints its message (and with ``RUST_BACKTRACE``, a backtrace) there
    before Python sees the exception, which the caller turns into one sentence instead."""
    try:
        saved = os.dup(2)
    except OSError:  # no stderr at all: nothing to keep quiet
        yield
        return
    try:
        held = tempfile.TemporaryFile()
    except OSError:
        os.close(saved)
        yield
        return
    succeeded = False
    with held:
        _flush_stderr()
        os.dup2(held.fileno(), 2)
        try:
            yield
            succeeded = True
        finally:
            _flush_stderr()
            os.dup2(saved, 2)
            os.close(saved)
            if succeeded:
                held.seek(0)
                data = held.read()
                if data:
                    os.write(2, data)


def _flush_stderr() -> None:
    with contextlib.suppress(Exception):
        sys.stderr.flush()
