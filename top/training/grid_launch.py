"""One grid run, started and watched: the ``top train`` command, its status file and its log.

Both backends of ``top grid`` start a run here: the local pool (one thread per device slot) and
Ray (one trial per run, on whichever node Ray gives it). A run's directory holds
``grid_run.json`` (status, wall time, what the run is trained from, and one entry per attempt:
where it ran, whether it resumed and from which step) and ``train.log`` (every attempt's output,
appended).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

from top.storage.io import atomic_write_json
from top.training.config import NO_BEST_EXIT

logger = logging.getLogger(__name__)

# Tests (and people with their own launcher) replace `python -m top train` with this command.
TRAIN_COMMAND_ENV = "TOP_GRID_TRAIN_CMD"
# `top train` finished: with best/ (0), or without, when no evaluation qualified (NO_BEST_EXIT).
FINISHED_EXITS = (0, NO_BEST_EXIT)
STATUS_FILE = "grid_run.json"  # written by the grid in each run directory
LOG_FILE = "train.log"
# What `top train --resume` logs when it picks up a run (top.commands.train).
_RESUMED = re.compile(rb"resumed from \S+ at step (\d+)")


def train_command_prefix(gpus_per_run: int = 1, override: Optional[Sequence[str]] = None) -> List[str]:
    """The command that starts one run, before its options: `python -m top train` or torchrun."""
    if override is not None:
        return list(override)
    from_env = os.environ.get(TRAIN_COMMAND_ENV)
    if from_env:
        return shlex.split(from_env)
    if gpus_per_run > 1:
        return ["torchrun", "--standalone", "--nproc_per_node", str(gpus_per_run), "-m", "top", "train"]
    return [sys.executable, "-m", "top", "train"]


def read_status(run_dir: Path) -> Dict[str, Any]:
    try:
        status = json.loads((Path(run_dir) / STATUS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return status if isinstance(status, dict) else {}


def is_finished(run_dir: Path) -> bool:
    return read_status(run_dir).get("status") == "done"


def resumed_step(log_tail: bytes) -> Optional[int]:
    """The step `top train --resume` said it resumed from, in this attempt's part of train.log."""
    found = _RESUMED.search(log_tail)
    return int(found.group(1)) if found else None


def launch(
    run_id: str,
    hyperparameters: Mapping[str, Any],
    command: List[str],
    run_dir: Path,
    cuda_devices: Optional[str] = None,
    where: Optional[Mapping[str, Any]] = None,
    poll: Optional[Callable[[], None]] = None,
    preexec_fn: Optional[Callable[[], None]] = None,
    cwd: Optional[str] = None,
    inputs: Optional[Mapping[str, Any]] = None,
) -> Dict[str, Any]:
    """Run one `top train` to its end; record its status, output, wall time and attempts.

    ``where`` names what ran the attempt (a Ray node); ``poll`` is called about once a second
    while the run lives (Ray reports its evaluations from it); ``inputs`` is what the run is
    trained from (``top.training.grid.run_inputs``), recorded for later grids to compare.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    previous = read_status(run_dir)
    wall_before = float(previous.get("wall_s") or 0.0)
    attempt = {"attempt": int(previous.get("attempts") or 0) + 1, "resume": "--resume" in command,
               "started": time.time(), **dict(where or {})}
    status = {"run_id": run_id, "hyperparameters": dict(hyperparameters),
              "inputs": dict(inputs) if inputs is not None else previous.get("inputs"), "command": command,
              "cuda_visible_devices": cuda_devices, "status": "running", "wall_s": wall_before,
              "attempts": attempt["attempt"], "attempt_log": list(previous.get("attempt_log") or []) + [attempt]}
    atomic_write_json(run_dir / STATUS_FILE, status)
    env = dict(os.environ)
    if cuda_devices is not None:
        env["CUDA_VISIBLE_DEVICES"] = cuda_devices
    logger.info("run %s attempt %d%s%s: %s", run_id, attempt["attempt"],
                f" on GPU {cuda_devices}" if cuda_devices else "",
                f" on {where['node']}" if where and where.get("node") else "",
                " ".join(shlex.quote(c) for c in command))
    started = time.perf_counter()
    log_path = run_dir / LOG_FILE
    offset = log_path.stat().st_size if log_path.is_file() else 0
    with open(log_path, "ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                   preexec_fn=preexec_fn, cwd=cwd)
        while True:
            try:
                returncode = process.wait(timeout=1.0 if poll else None)
                break
            except subprocess.TimeoutExpired:
                poll()  # type: ignore[misc]
    if poll:
        poll()
    with open(log_path, "rb") as log:
        log.seek(offset)
        attempt["resumed_from_step"] = resumed_step(log.read())
    attempt["returncode"] = returncode
    status["wall_s"] = round(wall_before + time.perf_counter() - started, 3)
    status["returncode"] = returncode
    status["status"] = "done" if returncode in FINISHED_EXITS else "failed"
    atomic_write_json(run_dir / STATUS_FILE, status)
    if returncode not in FINISHED_EXITS:
        logger.warning("run %s failed (exit %d); see %s", run_id, returncode, log_path)
    else:
        logger.info("run %s done in %.0f s", run_id, status["wall_s"] - wall_before)
    return status
