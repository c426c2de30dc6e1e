"""The paper's results table (`published.toml`) read into checked dataclasses."""

import dataclasses
import math
from pathlib import Path
from typing import Dict, Optional, Union

from top.data.tasks import METRIC_NAMES, TASKS, canonical_task_name, check_fields, read_toml
from top.errors import UserError, brief

PUBLISHED_FILE = Path(__file__).with_name("published.toml")

_SCHEMA = {
    "metric": str,
    "score": float,
    "flops_reduction": float,
    "checkpoint": str,
    "score_tolerance": float,
    "flops_tolerance": float,
    "dev_examples": int,
}
_OPTIONAL = ("dev_examples",)

# What a score in percent may be, per metric: correlations run from -100 to 100.
SCORE_RANGES = {
    "accuracy": (0.0, 100.0),
    "f1": (0.0, 100.0),
    "matthews_correlation": (-100.0, 100.0),
    "pearson": (-100.0, 100.0),
    "spearmanr": (-100.0, 100.0),
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
    dev_examples: Optional[int] = None  # how many dev examples the score was measured on; None: not checked

    @property
    def is_published(self) -> bool:
        return bool(self.checkpoint)

    def score_matches(self, measured_percent: float) -> bool:
        return abs(measured_percent - self.score) <= self.score_tolerance

    def flops_matches(self, measured_reduction: float) -> bool:
        return abs(measured_reduction - self.flops_reduction) <= self.flops_tolerance * self.flops_reduction


def _is_finite(value) -> bool:
    """A number a float can hold: not NaN, not infinite, not an integer past float's range."""
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def load_results_table(path: Optional[Union[str, Path]] = None) -> Dict[str, PublishedResult]:
    """Task name -> PublishedResult, in the file's order; a malformed file raises UserError.

    A table may name its task as ``--task`` takes it ([SST-2], [yelp_f]); rows are keyed by the
    task's name in tasks.toml.
    """
    path = Path(path) if path is not None else PUBLISHED_FILE
    table = {}
    for spelling, raw in read_toml(path).items():
        try:
            task = canonical_task_name(spelling)
        except UserError:
            raise UserError(f"{path}: unknown task [{spelling}]; use one of {', '.join(TASKS)}.") from None
        if task in table:
            raise UserError(f"{path}: [{spelling}] is {task} again; give each task one table.")
        check_fields(raw, _SCHEMA, task, path, optional=_OPTIONAL)
        if raw["metric"] not in METRIC_NAMES:
            raise UserError(f"{path}: {task}.metric {raw['metric']!r} is not one of {', '.join(METRIC_NAMES)}.")
        if raw["metric"] != TASKS[task].metric:
            raise UserError(
                f"{path}: {task}.metric is {raw['metric']!r} but the task reports {TASKS[task].metric!r}; fix it."
            )
        for key in ("score", "flops_reduction", "score_tolerance", "flops_tolerance"):
            if not _is_finite(raw[key]):
                raise UserError(f"{path}: {task}.{key} is {brief(raw[key])}, not a finite number; fix its value.")
            if raw[key] < 0 and key != "score":
                raise UserError(f"{path}: {task}.{key} must not be negative; fix its value.")
        low, high = SCORE_RANGES[raw["metric"]]
        if not low <= raw["score"] <= high:
            raise UserError(
                f"{path}: {task}.score {raw['score']:g} is outside {low:g} to {high:g}, the range of "
                f"{raw['metric']} in percent; fix its value."
            )
        if "dev_examples" in raw and raw["dev_examples"] < 1:
            raise UserError(f"{path}: {task}.dev_examples must be at least 1; fix its value or drop the field.")
        fields = {key: float(raw[key]) if _SCHEMA[key] is float else raw[key] for key in _SCHEMA if key in raw}
        table[task] = PublishedResult(task=task, **fields)
    if not table:
        raise UserError(f"{path} lists no task; add one table per task, e.g. [cola].")
    return table
