"""A training run's files: ``log.jsonl``, ``run.json`` and the training state in ``last/``."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

from top.errors import UserError, brief
from top.runtime import determinism
from top.storage.io import atomic_write_json, atomic_write_text, finite_or_none, json_text
from top.storage.manifest import add_to_manifest, verify_manifest
from top.storage.safeload import read_torch_file, read_tree, write_tree

logger = logging.getLogger(__name__)

STATE_FILE = "trainer_state.safetensors"
OLD_STATE_FILE = "trainer_state.pt"  # written before the state moved to safetensors; still read

class JsonLog:
    """``OUT/log.jsonl``: one JSON object per line; only the main process writes."""

    def __init__(self, path: Path, enabled: bool):
        self.path = Path(path)
        self.enabled = enabled

    def truncate_after(self, step: int) -> None:
        """Drop lines a killed run wrote after the step it is resumed from.

        A line cut short by the kill is dropped in silence; any other line that is not a record
        with a whole-number step (``{"step": null}``, a list, bytes that are not UTF-8) is dropped
        with one warning naming the file and the line: the log never costs the run its weights.
        """
        if not self.enabled or not self.path.is_file():
            return
        lines = self.path.read_bytes().decode("utf-8", errors="replace").splitlines()
        kept = []
        for number, line in enumerate(lines, start=1):
            try:
                record = json.loads(line)
            except (ValueError, RecursionError):  # ValueError: also a number of more than 4,300 digits
                if line.strip() and number < len(lines):
                    logger.warning("%s line %d is not JSON; dropped it from the resumed log.", self.path, number)
                continue  # the last line: cut short by the kill
            logged = record.get("step", 0) if isinstance(record, dict) else None
            if isinstance(logged, bool) or not isinstance(logged, int):
                logger.warning(
                    "%s line %d is not a log record with a whole-number step (%s); dropped it from the resumed log.",
                    self.path, number, brief(record),
                )
                continue
            if logged <= step:
                kept.append(line)

        atomic_write_text(self.path, "".join(k + "\n" for k in kept))

    def last_record_with(self, key: str) -> Optional[Dict[str, Any]]:
        """The last whole record that has ``key`` (None if none does, or there is no log)."""
        if not self.path.is_file():
            return None
        found = None
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and key in record:
                found = record
        return found

    def write(self, record: Dict[str, Any]) -> None:
        """Append one line; a value that is not a finite number (a diverged loss) is logged as null.

        A write that fails (a full disk) is cut back off, so no half line is left behind.
        """
        if not self.enabled:
            return

        data = (json_text(finite_or_none(record)) + "\n").encode("utf-8")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(str(self.path), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            size = os.fstat(fd).st_size
            try:
                written = 0
                while written < len(data):
                    written += os.write(fd, data[written:])
            except OSError as error:
                os.ftruncate(fd, size)
                if error.filename is None:
                    error.filename = str(self.path)
                raise
        finally:
            os.close(fd)


def save_state_file(directory: Path, state: Dict[str, Any]) -> None:
    """The training state as ``trainer_state.safetensors``: its tensors, and its structure and plain
    values (optimizer settings, RNG states, counters) as JSON in the file's metadata."""

    write_tree(Path(directory) / STATE_FILE, state)
    add_to_manifest(directory, [STATE_FILE])


_RESTART = "start the run again without --resume"


def has_state_file(directory: Path) -> bool:
    return (Path(directory) / STATE_FILE).is_file() or (Path(directory) / OLD_STATE_FILE).is_file()


def load_state_file(directory: Path) -> Dict[str, Any]:
    """Our own training state: ``trainer_state.safetensors``, or an older ``trainer_state.pt``
    (read through the allow-list, so nothing in it runs)."""

    directory = Path(directory)
    file = directory / STATE_FILE
    verify_manifest(directory, [STATE_FILE, OLD_STATE_FILE])
    if file.is_file():
        state = read_tree(file, fix=_RESTART)
    elif (directory / OLD_STATE_FILE).is_file():
        file = directory / OLD_STATE_FILE
        state = read_torch_file(file, fix=_RESTART)
    else:
        raise UserError(f"{file} is missing, so the run cannot be resumed; start it again without --resume.")
    if not isinstance(state, dict) or not {"step", "pruning", "best", "rng", "optimizers"} <= set(state):
        raise UserError(f"{file} does not hold a training state; start the run again without --resume.")
    return state


def start_run(out: Path, command: str, arguments: Mapping[str, Any], config: Mapping[str, Any],
              record: Dict[str, Any]) -> None:
    """A fresh run directory: the old log removed, ``run.json`` recording the command, its ``arguments``
    (the config as given: the command line's flags, or the caller's config), the ``config`` as the
    run resolved it, ``record`` (what the run derived) and the environment (rank 0 only; the caller checks)."""
    out.mkdir(parents=True, exist_ok=True)
    if (out / "log.jsonl").exists():
        (out / "log.jsonl").unlink()
    run = {"command": command, "args": dict(arguments), "config": dict(config)}
    run.update(record)
    run["environment"] = determinism.environment_record()
    atomic_write_json(out / "run.json", run)
