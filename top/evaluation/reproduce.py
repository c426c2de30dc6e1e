"""``top.reproduce(config)``: every published checkpoint re-evaluated and compared with the paper's table.

Each task's checkpoint is evaluated in faithful mode (max_seq_length 256, as the original
``run_Evaluation.sh``), whose score and FLOPs reduction are asserted against the results table,
and in compact mode (pruned tokens really removed) from the same loaded model, for the report.
Writes ``OUT/report.json``, ``OUT/report.md`` and each evaluation's record under
``OUT/<mode>/<task>.json``. A call leaves the process's random generators and deterministic
switches as it found them.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from top.data.loading import load_task_data
from top.data.published import PUBLISHED_FILE, load_results_table
from top.data.tasks import canonical_task_name, get_task
from top.errors import UserError
from top.evaluation.config import ReproduceConfig
from top.evaluation.evaluate import load_model, score, write_outputs
from top.evaluation.report import ERROR, FAIL, MISSING, NOT_PUBLISHED, PASS, verdict_text, write_report
from top.runtime import determinism, machine
from top.runtime.devices import resolve_device
from top.settings.common import SEED
from top.storage import hub
from top.storage.hub import resolve_checkpoint

logger = logging.getLogger(__name__)

MAX_SEQ_LENGTH = 256  # the original run_Evaluation.sh
DEFAULT_SEED = SEED  # the seed of every top command
REPORT_VERSION = 1



def parse_tasks(text: Optional[str]) -> Optional[List[str]]:
    if text is None:
        return None
    names = [canonical_task_name(t) for t in text.split(",") if t.strip()]
    if not names:
        raise UserError(f"--tasks {text!r} names no task; pass e.g. --tasks cola,mrpc.")
    return list(dict.fromkeys(names))


def _select_tasks(table, table_path: Path, tasks: Optional[Sequence[str]]) -> List[str]:
    """The tasks asked for (default: every row), each with a row that names a checkpoint."""
    if tasks is None:
        if not any(row.is_published for row in table.values()):
            raise UserError(f"{table_path} lists no checkpoint for any task; give a row a Hugging Face id.")
        return list(table)
    absent = [t for t in tasks if t not in table]
    if absent:
        raise UserError(f"{table_path} has no row for {', '.join(absent)}; add one or drop it from --tasks.")
    unpublished = [t for t in tasks if not table[t].is_published]
    if unpublished:
        raise UserError(hub.unpublished_message(", ".join(unpublished)))
    return list(tasks)


def reproduce(config: ReproduceConfig) -> Dict[str, Any]:
    """Evaluate each task's checkpoint, compare it with the table and write the report; return it."""
    with determinism.global_state_restored():
        return _reproduce(config)


def _reproduce(config: ReproduceConfig) -> Dict[str, Any]:
    checkpoint_dir, data_dir = config.checkpoint_dir, config.data_dir
    table_path = Path(config.results_table) if config.results_table else PUBLISHED_FILE
    table = load_results_table(table_path)
    tasks = _select_tasks(table, table_path, parse_tasks(config.tasks))
    if checkpoint_dir is not None and not Path(checkpoint_dir).is_dir():
        raise UserError(f"--checkpoint-dir {checkpoint_dir} does not exist; pass a directory of checkpoints.")
    torch_device = resolve_device(config.device)
    device_name = torch_device.type
    deterministic = determinism.set_deterministic()
    output_dir = Path(config.output_dir)
    started = time.time()
    results = []
    for task in tasks:
        determinism.seed_everything(config.seed)  # each task as if run alone
        results.append(_reproduce_task(table[task], checkpoint_dir, data_dir, torch_device, config.batch_size,
                                       output_dir, not config.no_progress))
        logger.info("%s: %s", task, verdict_text(results[-1]))
    environment = determinism.environment_record()
    report = {
        "version": REPORT_VERSION,
        "stack": stack_record(environment, device_name),
        "settings": {
            "results_table": str(table_path),
            "tasks": list(tasks),
            "checkpoint_dir": str(checkpoint_dir) if checkpoint_dir is not None else None,
            "data_dir": str(data_dir) if data_dir is not None else None,
            "device": device_name,
            "batch_size": config.batch_size,
            "max_seq_length": MAX_SEQ_LENGTH,
            "assert": not config.no_assert,
            "seed": config.seed,
            "deterministic": deterministic,
            "environment": environment,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
            "duration_s": round(time.time() - started, 3),
        },
        "tasks": results,
    }
    write_report(report, output_dir)
    looked_for = [t["task"] for t in results if t["status"] != NOT_PUBLISHED]
    if all(t["status"] in (MISSING, NOT_PUBLISHED) for t in results):
        raise UserError(hub.nothing_found_message(looked_for, checkpoint_dir))
    return report


def stack_record(environment: Dict[str, Any], device_name: str) -> Dict[str, Any]:
    """What the numbers were measured with: the Python, torch and transformers versions and the device."""
    device = environment.get("gpu") if device_name == "cuda" else None
    return {
        "python": environment.get("python"),
        "torch": environment.get("torch"),
        "transformers": environment.get("transformers"),
        "device": device or f"cpu ({machine.cpu_name()})",
    }


def _blank_result(row) -> Dict[str, Any]:
    """A task's report entry before anything is measured: the table's figures, the rest None."""
    return {
    "task": row.task,
    "metric": row.metric,
    "checkpoint": row.checkpoint,
    "checkpoint_path": None,
    "data": None,
    "n_examples": None,
    "dev_examples": row.dev_examples,
    "paper_score": row.score,
    "measured_score": None,
    "delta": None,
    "score_tolerance": row.score_tolerance,
    "paper_flops_reduction": row.flops_reduction,
    "measured_flops_reduction": None,
    "measured_flops_reduction_unpadded": None,
    "exact_flops_reduction": None,
    "flops_tolerance": row.flops_tolerance,
    "compact_score": None,
    "compact_exact_flops_reduction": None,
    "status": None,
    "reason": None,
    }


def _reproduce_task(row, checkpoint_dir, data_dir, device, batch_size: int, output_dir: Path,
                    progress: bool) -> Dict[str, Any]:
    result = _blank_result(row)
    if not row.is_published:
        result.update(status=NOT_PUBLISHED, reason=f"the results table lists no checkpoint for {row.task}; skipped")
        return result
    try:
        path = resolve_checkpoint(row.checkpoint, checkpoint_dir, progress=progress, task=row.task)
    except UserError as exc:
        result.update(status=MISSING, reason=str(exc))
        return result
    result["checkpoint_path"] = str(path)
    try:
        # GLUE at the original's 256; a long-document task at its own length (512).
        length = max(MAX_SEQ_LENGTH, get_task(row.task).task_length)
        eval_data = load_task_data(row.task, data_dir, max_seq_length=length, splits=("dev",))
        result.update(data=eval_data.source, n_examples=len(eval_data.dev))
        loaded = load_model(path, device)
        records = {}
        for mode in ("faithful", "compact"):
            records[mode] = score(loaded, eval_data, mode, length, batch_size, progress=progress)
            write_outputs(records[mode], output_dir / mode)
    except UserError as exc:
        result.update(status=ERROR, reason=str(exc))
        return result
    faithful, compact = records["faithful"], records["compact"]
    if faithful["metrics"][row.metric] is None:
        result.update(status=FAIL, reason=f"{row.metric} is undefined on this dev set (see the warning above)")
        return result
    measured = 100.0 * faithful["metrics"][row.metric]
    compact_score = compact["metrics"][row.metric]
    result.update(
        measured_score=round(measured, 4),
        delta=round(measured - row.score, 4),
        measured_flops_reduction=round(faithful["flops_reduction"], 4),
        measured_flops_reduction_unpadded=round(faithful["flops_reduction_unpadded"], 4),
        exact_flops_reduction=round(faithful["exact_flops_reduction"], 4),
        compact_score=None if compact_score is None else round(100.0 * compact_score, 4),
        compact_exact_flops_reduction=round(compact["exact_flops_reduction"], 4),
    )
    problems = []
    if row.dev_examples is not None and result["n_examples"] != row.dev_examples:
        problems.append(f"{row.task} was evaluated on {result['n_examples']} dev examples, "
                        f"not the {row.dev_examples} of the table")
    if not row.score_matches(measured):
        problems.append(f"score {measured:.2f} is {measured - row.score:+.2f} from {row.score:g} "
                        f"(tolerance ±{row.score_tolerance:g})")
    if not row.flops_matches(faithful["flops_reduction"]):
        problems.append(f"FLOPs reduction {faithful['flops_reduction']:.2f}x is not within "
                        f"{100 * row.flops_tolerance:g}% of {row.flops_reduction:g}x")
    result.update(status=FAIL if problems else PASS, reason="; ".join(problems) or None)
    return result
