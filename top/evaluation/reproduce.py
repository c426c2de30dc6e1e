"""``top.reproduce(config)``: every published checkpoint re-evaluated and compared with the paper's table.

Each task's checkpoint is evaluated in faithful mode (max_seq_length 256, as the original
``run_Evaluation.sh``), whose score and FLOPs reduction are asserted against the results table,
and in compact mode (pruned tokens really removed) from the same loaded model, for the report.
Writes ``OUT/report.json``, ``OUT/report.md`` and each evaluation's record under
``OUT/<mode>/<task>.json``. A call leaves the process's random generators and deterministic
switches as it found them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from top.data.loading import load_task_data
from top.data.published import PUBLISHED_FILE, load_results_table
from top.data.tasks import METRIC_LABELS, canonical_task_name
from top.errors import UserError
from top.evaluation.evaluate import load_model, score, write_outputs
from top.runtime import determinism, machine
from top.runtime.devices import resolve_device
from top.settings import common, values
from top.settings.common import SEED
from top.settings.fields import check_fields, option
from top.storage import hub
from top.storage.hub import resolve_checkpoint
from top.storage.io import atomic_write_json, atomic_write_text

logger = logging.getLogger(__name__)

MAX_SEQ_LENGTH = 256  # the original run_Evaluation.sh
DEFAULT_SEED = SEED  # the seed of every top command
REPORT_VERSION = 1

# A task's outcome. "missing" (no checkpoint to evaluate) fails the run unless --no-assert;
# "error" (a corrupt checkpoint, missing data) fails it always: nothing could be measured.
# "not published" (a row whose checkpoint is "", RTE's) is skipped by a run without --tasks.
# A run in which no task was evaluated at all fails, --no-assert or not.
PASS, FAIL, MISSING, ERROR, NOT_PUBLISHED = "pass", "fail", "missing", "error", "not published"
EVALUATED = (PASS, FAIL)


def task_list(value) -> str:
    """``--tasks``: comma-separated task names (a list from Python is joined)."""
    if isinstance(value, (list, tuple)):
        value = ",".join(str(v) for v in value)
    return values.name_text(value)


@dataclasses.dataclass(frozen=True)
class ReproduceConfig:
    """``top reproduce``: re-evaluate the published checkpoints and assert the paper's table."""

    tasks: Optional[str] = option(None, check=task_list, group="model and data", metavar="TASKS",
                                  default_text="every row of the results table with a published checkpoint",
                                  help="comma-separated tasks, e.g. cola,mrpc")
    checkpoint_dir: Optional[str] = option(None, check=values.path_text, group="model and data", metavar="DIR",
                                           help="a directory holding checkpoints as DIR/<repo name>")
    data_dir: Optional[str] = option(None, check=values.path_text, group="model and data", metavar="DIR",
                                     help="GLUE_DIR in GLUE's own layout (without it, the hub copy through `datasets`)")
    results_table: Optional[str] = option(None, check=values.path_text, group="evaluation", metavar="FILE",
                                          default_text="top/data/published.toml",
                                          help="a results table of your own")
    device: str = common.device()
    batch_size: int = common.batch_size(help="examples per batch")
    output_dir: str = option("outputs/reproduce", check=values.path_text, group="output", metavar="DIR",
                             help="where report.json, report.md and each evaluation's record go")
    no_assert: bool = option(False, switch=True, group="evaluation",
                             help="evaluate what can be evaluated and report, without asserting the table (eval-all)")
    seed: int = common.seed()
    no_progress: bool = common.no_progress()

    def __post_init__(self):
        check_fields(self)


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
        logger.info("%s: %s", task, _verdict_text(results[-1]))
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
        eval_data = load_task_data(row.task, data_dir, max_seq_length=MAX_SEQ_LENGTH, splits=("dev",))
        result.update(data=eval_data.source, n_examples=len(eval_data.dev))
        loaded = load_model(path, device)
        records = {}
        for mode in ("faithful", "compact"):
            records[mode] = score(loaded, eval_data, mode, MAX_SEQ_LENGTH, batch_size, progress=progress)
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


# ----------------------------------------------------------------------------------------------
# The report


def write_report(report: Dict[str, Any], output_dir: Path) -> None:
    atomic_write_json(output_dir / "report.json", report)
    atomic_write_text(output_dir / "report.md", render_markdown(report) + "\n")


def read_report(path) -> Dict[str, Any]:
    path = Path(path)
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path} does not exist; pass the report.json that `top reproduce` wrote.") from None
    except ValueError as exc:
        raise UserError(f"{path} is not valid JSON ({exc}); pass the report.json that `top reproduce` wrote.") from None
    if not isinstance(report, dict) or not isinstance(report.get("tasks"), list) or "settings" not in report:
        raise UserError(f"{path} is not a `top reproduce` report; pass the report.json that `top reproduce` wrote.")
    return report


def failing_tasks(report: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The tasks that make the run fail: "fail", "missing" (both not under --no-assert) and "error"."""
    asserted = report["settings"].get("assert", True)
    bad = (FAIL, MISSING, ERROR) if asserted else (ERROR,)
    return [t for t in report["tasks"] if t.get("status") in bad]


def exit_code(report: Dict[str, Any]) -> int:
    """1 when a task fails, or when no task was evaluated at all (even under --no-assert); else 0."""
    considered = [t for t in report["tasks"] if t.get("status") != NOT_PUBLISHED]
    evaluated = [t for t in considered if t.get("status") in EVALUATED]
    return 1 if failing_tasks(report) or not evaluated else 0


def failure_text(report: Dict[str, Any]) -> Optional[str]:
    """What failed, for stderr (None when nothing did)."""
    failing = failing_tasks(report)
    considered = [t for t in report["tasks"] if t.get("status") != NOT_PUBLISHED]
    if failing:
        names = ", ".join(t["task"] for t in failing)
        details = "".join(f"\n  {t['task']}: {_verdict_text(t)}" for t in failing)
        return f"FAILED {len(failing)} of {len(considered)} tasks: {names}{details}"
    if not any(t.get("status") in EVALUATED for t in considered):
        return f"FAILED: none of {len(considered)} tasks was evaluated"
    return None


def _num(value: Optional[float], fmt: str = "{:.2f}", suffix: str = "") -> str:
    return "–" if value is None else fmt.format(value) + suffix


def _verdict_text(task: Dict[str, Any]) -> str:
    status = task.get("status")
    if status == PASS:
        return "pass"
    return f"{status}: {task.get('reason')}" if task.get("reason") else str(status)


def render_markdown(report: Dict[str, Any]) -> str:
    """The summary table (also report.md): per task, paper against measured, then the settings."""
    settings = report.get("settings", {})
    lines = [
        "| Task | Metric | Paper | Measured | Δ | FLOPs red. paper | FLOPs red. measured (unpadded) "
        "| Compact score | Result |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for t in report.get("tasks", []):
        measured_flops = _num(t.get("measured_flops_reduction"), suffix="x")
        if t.get("measured_flops_reduction_unpadded") is not None:
            measured_flops += f" ({t['measured_flops_reduction_unpadded']:.2f}x)"
        verdict = _verdict_text(t).replace("|", "\\|")
        lines.append(
            f"| {t['task']} | {METRIC_LABELS.get(t.get('metric'), t.get('metric'))} | {_num(t.get('paper_score'))} "
            f"| {_num(t.get('measured_score'))} | {_num(t.get('delta'), '{:+.2f}')} "
            f"| {_num(t.get('paper_flops_reduction'), suffix='x')} | {measured_flops} "
            f"| {_num(t.get('compact_score'))} | {verdict} |"
        )
    env = settings.get("environment") or {}
    tasks = report.get("tasks", [])
    passed = sum(1 for t in tasks if t.get("status") == PASS)
    skipped = [t["task"] for t in tasks if t.get("status") == NOT_PUBLISHED]
    stack = report.get("stack")
    if stack:
        lines += ["", f"Stack: Python {stack.get('python')}, torch {stack.get('torch')}, transformers "
                      f"{stack.get('transformers')}; device: {stack.get('device')}."]
    lines += [
        "",
        f"{passed} of {len(tasks) - len(skipped)} tasks match the table "
        f"({'asserted' if settings.get('assert', True) else 'not asserted: --no-assert'})"
        f"{'; not published, so skipped: ' + ', '.join(skipped) if skipped else ''}. "
        "Scores in percent, faithful mode, max_seq_length "
        f"{settings.get('max_seq_length')}, batch size {settings.get('batch_size')}; FLOPs reductions are "
        "counted against each task's padded length as in the paper, the unpadded figure against the real tokens.",
        "",
        f"Settings: seed {settings.get('seed')}, device {settings.get('device')}"
        f"{' (' + env['gpu'] + ')' if env.get('gpu') else ''}, deterministic "
        f"{json.dumps(settings.get('deterministic'), sort_keys=True)}; python {env.get('python')}, "
        f"torch {env.get('torch')}, transformers {env.get('transformers')}, numpy {env.get('numpy')}, "
        f"scipy {env.get('scipy')}; results table {settings.get('results_table')}.",
    ]
    return "\n".join(lines)
