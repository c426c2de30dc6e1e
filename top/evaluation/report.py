"""``top reproduce``'s report: its outcomes, the table it prints and ``report.md``, and its exit status.

Light on purpose (no torch): ``top reproduce --report report.json`` re-prints an earlier table quickly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional

from top.data.tasks import METRIC_LABELS
from top.errors import UserError
from top.storage.io import atomic_write_json, atomic_write_text

# A task's outcome. "missing" (no checkpoint to evaluate) fails the run unless --no-assert;
# "error" (a corrupt checkpoint, missing data) fails it always: nothing could be measured.
# "not published" (a row whose checkpoint is "", RTE's) is skipped by a run without --tasks.
# A run in which no task was evaluated at all fails, --no-assert or not.
PASS, FAIL, MISSING, ERROR, NOT_PUBLISHED = "pass", "fail", "missing", "error", "not published"
EVALUATED = (PASS, FAIL)


def write_report(report: Dict[str, Any], output_dir: Path) -> None:
    atomic_write_json(output_dir / "report.json", report)
    atomic_write_text(output_dir / "report.md", render_markdown(report) + "\n")


def read_report(path) -> Dict[str, Any]:
    path = Path(path)
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path} does not exist; pass the report.json that `top reproduce` wrote.") from None
    except IsADirectoryError:
        hint = f" (such as {path / 'report.json'})" if (path / "report.json").is_file() else ""
        raise UserError(f"--report {path} is a directory; pass the report.json that `top reproduce` wrote"
                        f"{hint}.") from None
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
        details = "".join(f"\n  {t['task']}: {verdict_text(t)}" for t in failing)
        return f"FAILED {len(failing)} of {len(considered)} tasks: {names}{details}"
    if not any(t.get("status") in EVALUATED for t in considered):
        return f"FAILED: none of {len(considered)} tasks was evaluated"
    return None


def _num(value: Optional[float], fmt: str = "{:.2f}", suffix: str = "") -> str:
    return "–" if value is None else fmt.format(value) + suffix


def verdict_text(task: Dict[str, Any]) -> str:
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
        verdict = verdict_text(t).replace("|", "\\|")
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
