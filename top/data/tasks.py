"""The known tasks as data (GLUE's, and the long-document ones): `tasks.toml` read into frozen dataclasses."""

import dataclasses
import sys
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple

from top.errors import UserError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on the pinned 3.8 stack
    import tomli as tomllib

TASKS_FILE = Path(__file__).with_name("tasks.toml")


@dataclasses.dataclass(frozen=True)
class Preset:
    """A task's recommended training configuration: the seed README's for GLUE, ours (sources in
    tasks.toml) for the long-document tasks."""

    bin_num: int
    topk: int
    warmup_epochs: int
    epochs: int
    sparsity: float


@dataclasses.dataclass(frozen=True)
class CustomPreset:
    """`top train`'s defaults for a user's own data: ``[custom]`` in tasks.toml, which explains each."""

    bin_num: int
    topk: int
    epochs: float
    warmup_fraction: float
    gate_travel: float
    min_reg_learning_rate: float
    max_reg_learning_rate: float
    sparsity_control: str
    best_rule: str
    sparsity_epsilon: float
    layer_gate_init: float
    learning_rate: float
    eval_steps: str

    def warmup_steps(self, total_steps: int) -> int:
        """The warm-up of a run of ``total_steps`` steps: ``warmup_fraction`` of it."""
        return int(round(self.warmup_fraction * total_steps))

    def reg_learning_rate(self, warmup_steps: int) -> float:
        """The gates' (and lambdas') rate for a warm-up of ``warmup_steps``: ``gate_travel`` logits in it,
        within the bounds."""
        rate = self.gate_travel / max(1, warmup_steps)
        return min(self.max_reg_learning_rate, max(self.min_reg_learning_rate, rate))


@dataclasses.dataclass(frozen=True)
class Task:
    name: str
    glue_dir: str
    train_file: str
    dev_file: str
    has_header: bool
    columns: Tuple[str, ...]
    train_columns: Tuple[str, ...]
    text_a: str
    text_b: Optional[str]
    label_column: str
    label_encoding: str
    labels: Tuple[str, ...]
    num_labels: int
    metric: str
    metrics: Tuple[str, ...]
    task_length: int
    hub_path: str
    hub_config: str
    hub_text_a: str
    hub_text_b: Optional[str]
    hub_dev_split: str
    train_size: int
    dev_size: int
    preset: Optional[Preset]  # None for a user's own data (top.data.custom.custom_task)
    benchmark: str = "glue"  # "glue" or "long-documents"; "" for a user's own data
    file_format: str = "tsv"  # how --data-dir holds the task's files: GLUE's "tsv" or "jsonl"
    file_labels: Tuple[str, ...] = ()  # how the label ids are spelled in those files (label_encoding "name")
    aliases: Tuple[str, ...] = ()  # other spellings of the name that --task takes

    @property
    def is_regression(self) -> bool:
        return self.num_labels == 1

    @property
    def is_pair(self) -> bool:
        return self.text_b is not None

    def file_name(self, split: str) -> str:
        return self.split_info(split)[0]

    def split_columns(self, split: str) -> Tuple[str, ...]:
        return self.split_info(split)[1]

    def split_info(self, split: str) -> Tuple[str, Tuple[str, ...]]:
        if split == "dev":
            return self.dev_file, self.columns
        if split == "train":
            return self.train_file, self.train_columns
        raise UserError(f"Unknown split {split!r}; use 'dev' or 'train'.")


LABEL_ENCODINGS = ("index", "name", "float")
FILE_FORMATS = ("tsv", "jsonl")
BENCHMARKS = ("glue", "long-documents")
# The metric names of the `datasets` glue metric; top/evaluation/metrics.py implements each.
METRIC_NAMES = ("accuracy", "f1", "matthews_correlation", "pearson", "spearmanr")


def read_toml(path: Path) -> Dict[str, Any]:
    """Parse a TOML file; a missing, binary, malformed or too deeply nested file is the user's to fix."""
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise UserError(f"{path} does not exist; pass the path of an existing TOML file.") from None
    except IsADirectoryError:
        raise UserError(f"{path} is a directory; pass the path of a TOML file.") from None
    except UnicodeDecodeError as exc:
        raise UserError(
            f"{path} holds bytes that are not UTF-8 text (at byte {exc.start}), so it is no TOML file; "
            "give a TOML file."
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path} is not valid TOML ({one_line_of(exc)}); fix its syntax.") from None
    except RecursionError:
        raise UserError(f"{path} nests its tables or arrays deeper than can be read; flatten it.") from None


def one_line_of(error: BaseException) -> str:
    """The first line of an error's message, at most 200 characters."""
    lines = str(error).strip().splitlines()
    return lines[0][:200] if lines else type(error).__name__


def _type_ok(value: Any, kind: type) -> bool:
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def check_fields(
    raw: Mapping[str, Any],
    schema: Mapping[str, type],
    where: str,
    path: Path,
    optional: Tuple[str, ...] = (),
) -> None:
    """Raise UserError naming `path` and the field for unknown, missing or mistyped fields."""
    if not isinstance(raw, Mapping):
        raise UserError(f"{path}: {where} must be a table; write it as [{where}].")
    for key in raw:
        if key not in schema:
            raise UserError(
                f"{path}: unknown field {where}.{key}; use only {', '.join(sorted(schema))}."
            )
    for key, kind in schema.items():
        if key not in raw:
            if key in optional:
                continue
            raise UserError(f"{path}: {where} is missing the field {key!r}; add it.")
        if not _type_ok(raw[key], kind):
            raise UserError(
                f"{path}: {where}.{key} must be of type {kind.__name__}, "
                f"not {type(raw[key]).__name__}; fix its value."
            )


def _str_list(raw: Mapping[str, Any], key: str, where: str, path: Path) -> Tuple[str, ...]:
    values = raw[key]
    if not all(isinstance(v, str) for v in values):
        raise UserError(f"{path}: {where}.{key} must be a list of strings; fix its value.")
    return tuple(values)


_PRESET_SCHEMA = {"bin_num": int, "topk": int, "warmup_epochs": int, "epochs": int, "sparsity": float}
_TASK_SCHEMA = {
    "glue_dir": str,
    "train_file": str,
    "dev_file": str,
    "has_header": bool,
    "columns": list,
    "train_columns": list,
    "text_a": str,
    "text_b": str,
    "label_column": str,
    "label_encoding": str,
    "labels": list,
    "num_labels": int,
    "metric": str,
    "metrics": list,
    "task_length": int,
    "hub_path": str,
    "hub_config": str,
    "hub_text_a": str,
    "hub_text_b": str,
    "hub_dev_split": str,
    "train_size": int,
    "dev_size": int,
    "preset": dict,
    "benchmark": str,
    "file_format": str,
    "file_labels": list,
    "aliases": list,
}
_OPTIONAL_FIELDS = ("train_columns", "hub_path", "file_format", "file_labels", "aliases")


def _check_preset(preset: Mapping[str, Any], name: str, path: Path) -> None:
    """The ranges `top train`'s flags enforce, for the values a preset gives when a flag is left out."""
    ranges = {
        "sparsity": (0.0 < preset["sparsity"] < 1.0, "strictly between 0 and 1"),
        "bin_num": (preset["bin_num"] >= 1, "at least 1"),
        "topk": (preset["topk"] >= 1, "at least 1"),
        "warmup_epochs": (preset["warmup_epochs"] >= 0, "0 or more"),
        "epochs": (preset["epochs"] >= 1, "at least 1"),
    }
    for key, (ok, rule) in ranges.items():
        if not ok:
            raise UserError(f"{path}: {name}.preset.{key} is {preset[key]}; make it {rule}.")


def _parse_task(name: str, raw: Mapping[str, Any], path: Path) -> Task:
    check_fields(raw, _TASK_SCHEMA, name, path, optional=_OPTIONAL_FIELDS)
    check_fields(raw["preset"], _PRESET_SCHEMA, f"{name}.preset", path)
    _check_preset(raw["preset"], name, path)
    columns = _str_list(raw, "columns", name, path)
    train_columns = _str_list(raw, "train_columns", name, path) if "train_columns" in raw else columns
    labels = _str_list(raw, "labels", name, path)
    metrics = _str_list(raw, "metrics", name, path)
    if raw["label_encoding"] not in LABEL_ENCODINGS:
        raise UserError(f"{path}: {name}.label_encoding must be one of {', '.join(LABEL_ENCODINGS)}.")
    for key, allowed in (("benchmark", BENCHMARKS), ("file_format", FILE_FORMATS)):
        if key in raw and raw[key] not in allowed:
            raise UserError(f"{path}: {name}.{key} must be one of {', '.join(allowed)}.")
    file_labels = _str_list(raw, "file_labels", name, path) if "file_labels" in raw else labels
    if len(file_labels) != len(labels):
        raise UserError(f"{path}: {name}.file_labels has {len(file_labels)} names but labels has {len(labels)}.")
    aliases = _str_list(raw, "aliases", name, path) if "aliases" in raw else ()
    text_b = raw["text_b"] or None
    for split_columns in (columns, train_columns):
        for key in (raw["text_a"], text_b, raw["label_column"]):
            if key is not None and key not in split_columns:
                raise UserError(f"{path}: {name} names column {key!r}, which is not in its columns list.")
    if raw["label_encoding"] != "float" and len(labels) != raw["num_labels"]:
        raise UserError(f"{path}: {name}.labels has {len(labels)} names but num_labels is {raw['num_labels']}.")
    unknown = [m for m in metrics if m not in METRIC_NAMES]
    if unknown:
        raise UserError(f"{path}: {name}.metrics has {unknown[0]!r}; use names from {', '.join(METRIC_NAMES)}.")
    if raw["metric"] not in metrics:
        raise UserError(f"{path}: {name}.metric {raw['metric']!r} must also be listed in {name}.metrics.")
    fields = dict(raw)
    fields.update(
        name=name,
        columns=columns,
        train_columns=train_columns,
        labels=labels,
        metrics=metrics,
        text_b=text_b,
        hub_text_b=raw["hub_text_b"] or None,
        hub_path=raw.get("hub_path", "glue"),
        preset=Preset(**raw["preset"]),
        file_labels=file_labels,
        aliases=aliases,
    )
    return Task(**fields)


METRIC_LABELS_TABLE = "metric_labels"
CUSTOM_TABLE = "custom"
_CUSTOM_SCHEMA = {
    "bin_num": int, "topk": int, "epochs": float, "warmup_fraction": float, "gate_travel": float,
    "min_reg_learning_rate": float, "max_reg_learning_rate": float, "sparsity_control": str, "best_rule": str,
    "sparsity_epsilon": float, "layer_gate_init": float, "learning_rate": float, "eval_steps": str,
}


def _parse_custom_preset(raw: Mapping[str, Any], path: Path) -> CustomPreset:
    """``[custom]``, checked against the ranges `top train`'s flags enforce (its choices are checked by
    ``top.TrainConfig`` when a run takes them)."""
    check_fields(raw, _CUSTOM_SCHEMA, CUSTOM_TABLE, path)
    ranges = {
        "bin_num": (raw["bin_num"] >= 1, "at least 1"),
        "topk": (raw["topk"] >= 1, "at least 1"),
        "epochs": (raw["epochs"] > 0, "positive"),
        "warmup_fraction": (0 <= raw["warmup_fraction"] < 1, "in [0, 1)"),
        "gate_travel": (raw["gate_travel"] > 0, "positive"),
        "min_reg_learning_rate": (0 < raw["min_reg_learning_rate"] <= raw["max_reg_learning_rate"],
                                  "positive and at most max_reg_learning_rate"),
        "sparsity_epsilon": (raw["sparsity_epsilon"] >= 0, "0 or more"),
        "learning_rate": (raw["learning_rate"] >= 0, "0 or more"),
    }
    for key, (ok, rule) in ranges.items():
        if not ok:
            raise UserError(f"{path}: {CUSTOM_TABLE}.{key} is {raw[key]}; make it {rule}.")
    return CustomPreset(**{key: float(value) if _CUSTOM_SCHEMA[key] is float else value
                           for key, value in raw.items()})


def load_custom_preset(path: Optional[Path] = None) -> CustomPreset:
    """`top train`'s defaults for a user's own data: the ``[custom]`` table."""
    path = Path(path) if path is not None else TASKS_FILE
    raw = read_toml(path)
    if CUSTOM_TABLE not in raw:
        raise UserError(f"{path} has no [{CUSTOM_TABLE}] table; add one with `top train`'s defaults for own data.")
    return _parse_custom_preset(raw[CUSTOM_TABLE], path)


def load_task_file(path: Optional[Path] = None) -> Tuple[Dict[str, Task], Dict[str, str]]:
    """The tasks and the metrics' display names (``[metric_labels]``, one per metric name)."""
    path = Path(path) if path is not None else TASKS_FILE
    raw = dict(read_toml(path))
    if METRIC_LABELS_TABLE not in raw:
        raise UserError(f"{path} has no [{METRIC_LABELS_TABLE}] table; add one naming each metric.")
    labels = raw.pop(METRIC_LABELS_TABLE)
    raw.pop(CUSTOM_TABLE, None)  # not a task: load_custom_preset reads it
    check_fields(labels, {name: str for name in METRIC_NAMES}, METRIC_LABELS_TABLE, path)
    tasks = {name: _parse_task(name, table, path) for name, table in raw.items()}
    spellings: Dict[str, str] = {}
    for task in tasks.values():
        for spelling in (task.name,) + task.aliases:
            key = _spelling_key(spelling)
            if spellings.setdefault(key, task.name) != task.name:
                raise UserError(f"{path}: {task.name} and {spellings[key]} both answer to {spelling!r}; rename one.")
    return tasks, dict(labels)


def load_tasks(path: Optional[Path] = None) -> Dict[str, Task]:
    return load_task_file(path)[0]


def _spelling_key(name: str) -> str:
    return name.strip().lower().replace("-", "").replace("_", "").replace(".", "")


TASKS, METRIC_LABELS = load_task_file()
CUSTOM_PRESET = load_custom_preset()
_SPELLINGS = {_spelling_key(s): task.name for task in TASKS.values() for s in (task.name,) + task.aliases}
GLUE_TASKS = tuple(name for name, task in TASKS.items() if task.benchmark == "glue")


def canonical_task_name(name: str) -> str:
    """'SST-2', 'SST2', 'sst2', 'STS-B', 'yelp_f' ... -> the key in TASKS; unknown -> UserError."""
    key = _SPELLINGS.get(_spelling_key(name))
    if key is None:
        raise UserError(f"Unknown task {name!r}; use one of {', '.join(TASKS)}.")
    return key


def get_task(name: str) -> Task:
    return TASKS[canonical_task_name(name)]
