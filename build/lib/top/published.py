"""The paper's results table (`published.toml`) read into checked dataclasses."""

import dataclasses
from pathlib import Path
from typing import Dict, Optional, Union

from top.errors import UserError
from top.tasks import METRIC_NAMES, TASKS, check_fields, read_toml

PUBLISHED_FILE = Path(__file__).with_name("published.toml")

_SCHEMA = {
    "metric": str,
    "score": float,
    "flops_reduction": float,
    "checkpoint": str,
    "score_tolerance": float,
    "flops_tolerance": float,
}


@dataclasses.dataclass(frozen=True)
class PublishedResult:
    task: str
    metric: str
    score: float  # percent, as printed in the paper
    flops_reduction: float
    checkpoint: str  # Hugging Face model id; "" where the authors published none
    score_tolerance: float  # absolute percentage points
    flops_tolerance: float  # relative

    def score_matches(self, measured_percent: float) -> bool:
        return abs(measured_percent - self.score) <= self.score_tolerance

    def flops_matches(self, measured_reduction: float) -> bool:
        return abs(measured_reduction - self.flops_reduction) <= self.flops_tolerance * self.flops_reduction


def load_results_table(path: Optional[Union[str, Path]] = None) -> Dict[str, PublishedResult]:
    """Task name -> PublishedResult, in the file's order; a malformed file raises UserError."""
    path = Path(path) if path is not None else PUBLISHED_FILE
    table = {}
    for task, raw in read_toml(path).items():
        if task not in TASKS:
            raise UserError(f"{path}: unknown task [{task}]; use one of {', '.join(TASKS)}.")
        check_fields(raw, _SCHEMA, task, path)
        if raw["metric"] not in METRIC_NAMES:
            raise UserError(f"{path}: {task}.metric {raw['metric']!r} is not one of {', '.join(METRIC_NAMES)}.")
        if raw["metric"] != TASKS[task].metric:
            raise UserError(
                f"{path}: {task}.metric is {raw['metric']!r} but the task reports {TASKS[task].metric!r}; fix it."
            )
        for key in ("score", "flops_reduction", "score_tolerance", "flops_tolerance"):
            if raw[key] < 0:
                raise UserError(f"{path}: {task}.{key} must not be negative; fix its value.")
        fields = {key: float(raw[key]) if _SCHEMA[key] is float else raw[key] for key in _SCHEMA}
        table[task] = PublishedResult(task=task, **fields)
    if not table:
        raise UserError(f"{path} lists no task; add one table per task, e.g. [cola].")
    return table
