"""``top.grid(config)``: the paper's hyper-parameter grid, one ``top train`` run per point.

Each run lives in ``OUT/runs/<run-id>/`` (the id spells its hyperparameters). A run that
finished is skipped; one that was interrupted resumes with ``--resume`` from its ``last/``.
With ``devices="0,1"`` runs go out in parallel, one per GPU (``CUDA_VISIBLE_DEVICES`` per
run); ``gpus_per_run=N`` launches each run with ``torchrun`` on N of them. Results go to
``OUT/grid.json`` and ``OUT/grid.md``; ``promote`` copies the winner's ``best/`` to ``OUT/best/``.
A grid file's values are checked as ``top.TrainConfig`` checks them, before any run starts, and a
grid of more than ``MAX_POINTS`` points is refused before it is expanded.

Each run's ``grid_run.json`` records what it was trained from (``inputs``: the task, every option
with local paths made absolute, and a stamp of the model, teacher and data files' contents). A
grid that finds a run directory made from other inputs refuses in one sentence before anything
runs: the old results are never reported, resumed or promoted as this grid's. A run started
afresh is given ``--overwrite-output-dir``, so what an attempt that died before its first
``last/`` left (a ``best/``) is moved aside, never deleted.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import math
import os
import queue
import shlex
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

from top.data import sources
from top.data.tasks import canonical_task_name, read_toml
from top.errors import UserError
from top.settings import common
from top.settings import values as checks
from top.settings.fields import check_fields, check_value, flag_name, flag_of, option
from top.storage.io import atomic_directory, atomic_write_json, atomic_write_text, sha256_of
from top.storage.manifest import MANIFEST_FILE
from top.storage.rundir import OVERWRITE_FLAG
from top.training import grid_ray
from top.training.config import TrainConfig
from top.training.grid_launch import (  # noqa: F401  (STATUS_FILE, LOG_FILE: the run files' names, for callers)
    LOG_FILE,
    STATUS_FILE,
    TRAIN_COMMAND_ENV,
    is_finished,
    launch,
    read_status,
    train_command_prefix,
)

logger = logging.getLogger(__name__)

DEFAULT_GRID = Path(__file__).with_name("grid_default.toml")

# `top train` options that the grid sets for each run itself, so a grid file may not.
SET_BY_GRID = ("task", "output_dir", "resume", "overwrite_output_dir")
# `top train` options that only make sense once for the whole grid.
FIXED_ONLY = ("model", "teacher", "data_dir", "train_file", "validation_file", "device")
# Short names for run ids; other options use their own name.
ID_NAMES = {"learning_rate": "lr", "reg_learning_rate": "reglr", "rank_loss_alpha": "alpha",
            "target_sparsity": "s", "prune_location": "loc"}
# The most points a grid may have: its size is checked before it is expanded, so that a grid of a
# million points is one sentence instead of minutes of planning (the paper's grid has 72).
MAX_POINTS = 10_000
# Options naming files or folders a run reads: recorded as absolute paths, with a stamp of their contents.
PATH_OPTIONS = ("model", "teacher", "data_dir", "train_file", "validation_file")
# Options that say how a run runs, not what it is trained from: a grid may go on with other values.
HOW_IT_RUNS = ("device", "no_progress")
# A model directory's files whose contents the stamp covers when it has no manifest.json.
MODEL_STAMP_FILES = ("config.json", "model.safetensors", "pytorch_model.bin", "zs.pt", "l0_module.pt")


@dataclasses.dataclass(frozen=True)
class Grid:
    axes: Dict[str, List[Any]]  # option -> values, in file order
    fixed: Dict[str, Any]
    source: str


@dataclasses.dataclass(frozen=True)
class Run:
    run_id: str
    hyperparameters: Dict[str, Any]


# --------------------------------------------------------------------------- the grid file


def _settable_fields() -> Dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(TrainConfig) if flag_of(f) and f.name not in SET_BY_GRID}


def _is_switch(field: dataclasses.Field) -> bool:
    flag = flag_of(field)
    return bool(flag.switch or flag.negative)


def _check_value(field: dataclasses.Field, where: str, value: Any, source: str) -> None:
    """One option's value, as `top train` would take it; a rejection names the file and the key."""
    if _is_switch(field):  # a switch such as --no-progress
        if not isinstance(value, bool):
            raise UserError(f"{source}: {where} is {value!r}; {flag_name(field)} is a switch, so write true or false.")
        return
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise UserError(f"{source}: {where} is {value!r}; {flag_name(field)} takes one number or string.")
    if isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"{source}: {where} is {value!r}; give a finite number.")
    try:
        check_value(field, value)
    except argparse.ArgumentTypeError as exc:
        raise UserError(f"{source}: {where} = {value!r} is refused by `top train` ({flag_name(field)}): "
                        f"{str(exc).rstrip('.')}.") from None


def parse_grid(raw: Mapping[str, Any], source: str) -> Grid:
    """Check a grid table (as read from TOML) against `top train`'s config; every problem is a
    one-sentence UserError naming the file and the key."""
    unknown_tables = [k for k in raw if k not in ("grid", "fixed")]
    if unknown_tables:
        raise UserError(f"{source}: unknown table or key {unknown_tables[0]!r}; use only [grid] and [fixed].")
    axes_raw, fixed_raw = raw.get("grid"), raw.get("fixed", {})
    if not isinstance(axes_raw, Mapping) or not axes_raw:
        raise UserError(f"{source} has no [grid] table with at least one option; add one, e.g. learning_rate = [2e-5].")
    if not isinstance(fixed_raw, Mapping):
        raise UserError(f"{source}: fixed must be a table; write it as [fixed].")
    check_size(axes_raw, source)
    fields = _settable_fields()

    def field_for(table: str, key: str) -> dataclasses.Field:
        if key not in fields:
            raise UserError(f"{source}: {table}.{key} is not an option of `top train` that a grid file can set; "
                            f"use one of {', '.join(sorted(fields))}.")
        return fields[key]

    axes: Dict[str, List[Any]] = {}
    for key, values in axes_raw.items():
        field = field_for("grid", key)
        if key in FIXED_ONLY:
            raise UserError(f"{source}: grid.{key} is not an option a grid can vary; put it under [fixed].")
        if not isinstance(values, list) or not values:
            raise UserError(f"{source}: grid.{key} must be a non-empty list of values, e.g. {key} = [1, 2].")
        for value in values:
            _check_value(field, f"grid.{key}", value, source)
        if len(set(values)) != len(values):
            raise UserError(f"{source}: grid.{key} lists a value twice; list each value once.")
        axes[key] = list(values)
    fixed: Dict[str, Any] = {}
    for key, value in fixed_raw.items():
        field = field_for("fixed", key)
        if key in axes:
            raise UserError(f"{source}: {key} is both in [grid] and [fixed]; keep it in one of them.")
        _check_value(field, f"fixed.{key}", value, source)
        fixed[key] = value
    grid = Grid(axes, fixed, source)
    for run in expand(grid):  # options that are fine alone may clash (--epochs with --max-steps)
        row = dict(fixed, **run.hyperparameters)
        if row.get("epochs") is not None and row.get("max_steps") is not None:
            raise UserError(f"{source}: run {run.run_id} gives both epochs and max_steps, which `top train` "
                            "refuses; keep one of them.")
    return grid


def check_size(axes: Mapping[str, Any], source: str) -> None:
    """One sentence when the axes' lengths multiply to more than ``MAX_POINTS`` (counted, not expanded)."""
    lengths = [len(values) for values in axes.values() if isinstance(values, list)]
    points = math.prod(lengths) if lengths else 0
    if points > MAX_POINTS:
        raise UserError(f"{source} has {points:,} points ({' x '.join(str(n) for n in lengths)}), more than the "
                        f"{MAX_POINTS:,} a grid may have; split it into smaller grids or list fewer values.")


def load_grid(path: Optional[os.PathLike] = None) -> Grid:
    path = Path(path) if path is not None else DEFAULT_GRID
    return parse_grid(read_toml(path), str(path))


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        text = repr(value)
        return text[:-2] if text.endswith(".0") else text
    return str(value)


def _id_part(value: Any) -> str:
    return _format_value(value).replace(",", "-").replace("/", "-").replace(" ", "")


def expand(grid: Grid) -> List[Run]:
    """Every combination of the axes, the first axis varying slowest (file order)."""
    points: List[Dict[str, Any]] = [{}]
    for key, values in grid.axes.items():
        points = [dict(point, **{key: value}) for point in points for value in values]
    return [Run("_".join(f"{ID_NAMES.get(k, k)}{_id_part(v)}" for k, v in point.items()), point)
            for point in points]


# --------------------------------------------------------------------------- launching


def device_slots(devices: Optional[str], gpus_per_run: int) -> List[Optional[str]]:
    """`"0,1,2,3"` with 2 GPUs a run -> `["0,1", "2,3"]`; no devices -> one slot, environment untouched."""
    if gpus_per_run < 1:
        raise UserError("--gpus-per-run must be at least 1.")
    if not devices:
        if gpus_per_run > 1:
            raise UserError("--gpus-per-run above 1 needs --devices naming the GPUs, e.g. --devices 0,1.")
        return [None]
    ids = [d.strip() for d in devices.split(",")]
    if any(not d.isdigit() for d in ids) or len(set(ids)) != len(ids):
        raise UserError(f"--devices {devices!r} must be distinct GPU numbers separated by commas, e.g. 0,1.")
    if len(ids) % gpus_per_run:
        raise UserError(f"--devices names {len(ids)} GPU(s), which is not a multiple of --gpus-per-run "
                        f"{gpus_per_run}; name a multiple of it.")
    return [",".join(ids[i:i + gpus_per_run]) for i in range(0, len(ids), gpus_per_run)]


def train_arguments(task: Optional[str], options: Mapping[str, Any], run_dir: Path, resume: bool,
                    overwrite: bool = False) -> List[str]:
    """`top train` options for one run; `task` is None when the run reads custom files. ``overwrite``
    (a fresh start of a run the grid owns) adds ``--overwrite-output-dir``."""
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    args = ["--task", task] if task else []
    for key, value in options.items():
        field = fields[key]
        if isinstance(value, bool):  # a switch: present when true; one on by default has a --no- form for false
            negative = flag_of(field).negative
            args += [flag_name(field)] if value else [negative] if negative else []
        else:
            args += [flag_name(field), _format_value(value)]
    args += ["--output-dir", str(run_dir)]
    if resume:
        args.append("--resume")
    elif overwrite:
        args.append(OVERWRITE_FLAG)
    return args


# --------------------------------------------------------------------------- what a run was trained from


def _stamp(path: Path) -> Optional[str]:
    """The sha256 of a file, or of a model directory's manifest.json (else of its config and weights
    files); None for a data directory or anything else (its path alone is recorded)."""
    if path.is_file():
        return sha256_of(path)
    if not (path / "config.json").is_file():
        return None
    if (path / MANIFEST_FILE).is_file():
        return sha256_of(path / MANIFEST_FILE)
    digest = hashlib.sha256()
    for name in MODEL_STAMP_FILES:
        if (path / name).is_file():
            digest.update(f"{name}:{sha256_of(path / name)}\n".encode())
    return digest.hexdigest()


def run_inputs(task: Optional[str], options: Mapping[str, Any], stamps: Dict[str, Any]) -> Dict[str, Any]:
    """What one run is trained from, as ``grid_run.json`` records it: the task, every `top train`
    option (local paths absolute) and the stamps of the files and models it reads (``stamps`` caches
    them by path: the grid's runs share their model and data)."""
    recorded: Dict[str, Any] = {}
    contents: Dict[str, Any] = {}
    for key, value in options.items():
        if key in HOW_IT_RUNS:
            continue
        if key in PATH_OPTIONS and isinstance(value, str) and Path(value).expanduser().exists():
            path = Path(value).expanduser().resolve()
            if str(path) not in stamps:
                stamps[str(path)] = _stamp(path)
            value, contents[key] = str(path), stamps[str(path)]
        recorded[key] = value
    return {"task": task, "options": recorded, "contents": contents}


def _difference(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    """The first difference between two runs' ``inputs``, in words."""
    if old.get("task") != new.get("task"):
        return f"--task {old.get('task')}, not {new.get('task')}"
    before, after = old.get("options") or {}, new.get("options") or {}
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    for key in list(after) + [k for k in before if k not in after]:
        if before.get(key) != after.get(key):
            flag = flag_name(fields[key]) if key in fields else key
            was = "unset" if key not in before else _format_value(before[key])
            now = "unset" if key not in after else _format_value(after[key])
            return f"{flag} {was}, not {now}"
    for key, stamp in (new.get("contents") or {}).items():
        if (old.get("contents") or {}).get(key) != stamp:
            flag = flag_name(fields[key]) if key in fields else key
            return f"{flag} {after.get(key)} as it was then (its files have changed since)"
    return "other inputs"


def refuse_other_inputs(output_dir: Path, runs: Sequence[Run], inputs: Mapping[str, Dict[str, Any]],
                        fresh_arguments) -> None:
    """One sentence when a run directory of ``output_dir`` was made from other inputs than this grid's.

    A ``grid_run.json`` written before inputs were recorded is compared by its command: its `top
    train` options must end the same as this run's."""
    for run in runs:
        run_dir = output_dir / "runs" / run.run_id
        status = read_status(run_dir)
        if not status:
            continue
        recorded = status.get("inputs")
        if isinstance(recorded, dict):
            if _same_inputs(recorded, inputs[run.run_id]):
                continue
            difference = _difference(recorded, inputs[run.run_id])
        else:
            command = [c for c in status.get("command") or [] if c not in ("--resume", OVERWRITE_FLAG)]
            options = [a for a in fresh_arguments(run) if a != OVERWRITE_FLAG]
            if command[-len(options):] == options:
                continue
            difference = f"other options (see {run_dir / STATUS_FILE})"
        raise UserError(
            f"{run_dir} was trained from {difference}, so its results are not this grid's; give this grid another "
            "--output-dir, or rerun it with the inputs that folder was trained from."
        )


def _same_inputs(recorded: Mapping[str, Any], inputs: Mapping[str, Any]) -> bool:
    # Read back from JSON: tuples are lists, and numbers keep their values.
    return json.loads(json.dumps(recorded)) == json.loads(json.dumps(inputs))


BACKENDS = ("local", "ray")  # the first is the default

SUMMARY_FIELDS = ("best_score", "metric", "sparsity", "flops_reduction")


def read_train_summary(run_dir: Path) -> Dict[str, Any]:
    """Best score, its metric, the sparsity reached and the FLOPs reduction from `top train`'s summary.json."""
    row = dict.fromkeys(SUMMARY_FIELDS)
    try:
        raw = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return row
    best = raw.get("best") if isinstance(raw.get("best"), dict) else {}
    row.update(best_score=best.get("score"), metric=raw.get("metric"),
               sparsity=best.get("expected_sparsity"), flops_reduction=best.get("flops_reduction"))
    return row


@dataclasses.dataclass(frozen=True)
class Backend:
    """Where the runs go: ``local`` (a pool, one run per device slot) or ``ray`` (one Tune trial per run)."""

    name: str = "local"
    devices: Optional[str] = None
    gpus_per_run: int = 1
    address: Optional[str] = None  # ray: None starts Ray on this machine (or follows RAY_ADDRESS)
    cpus_per_run: float = 1.0
    max_failures: int = 3


def run_grid(
    task: str,
    grid: Grid,
    output_dir: os.PathLike,
    devices: Optional[str] = None,
    gpus_per_run: int = 1,
    options: Optional[Mapping[str, Any]] = None,
    train_command: Optional[Sequence[str]] = None,
    dry_run: bool = False,
    backend: Optional[Backend] = None,
) -> List[Dict[str, Any]]:
    """Run every point of `grid` not yet finished; return one result row per point (grid order).

    `options` (e.g. model, teacher, data_dir from the command line) override the grid's [fixed].
    With ``dry_run`` nothing runs: each row is a pending run's id and its `top train` command.
    """
    backend = backend or Backend(devices=devices, gpus_per_run=gpus_per_run)
    task = canonical_task_name(task)
    output_dir = Path(output_dir).absolute()  # every node of a cluster reads the same path
    fixed = dict(grid.fixed)
    fixed.update({k: v for k, v in (options or {}).items() if v is not None})
    if "model" not in fixed:
        raise UserError("No model to prune; pass --model DIR (the fine-tuned dense model) or set model in [fixed].")
    fixed.setdefault("teacher", fixed["model"])
    if fixed.get("train_file") and fixed.get("data_dir"):
        raise UserError("Pass either --data-dir (GLUE) or --train-file/--validation-file, not both.")
    slots = device_slots(backend.devices, backend.gpus_per_run) if backend.name == "local" else [None]
    runs = expand(grid)
    train_task = None if fixed.get("train_file") else task
    stamps: Dict[str, Any] = {}
    inputs = {run.run_id: run_inputs(train_task, dict(fixed, **run.hyperparameters), stamps) for run in runs}

    def arguments_for(run: Run, resume: bool) -> List[str]:
        return train_arguments(train_task, dict(fixed, **run.hyperparameters), output_dir / "runs" / run.run_id,
                               resume, overwrite=not resume)

    refuse_other_inputs(output_dir, runs, inputs, lambda run: arguments_for(run, False))
    pending = [r for r in runs if not is_finished(output_dir / "runs" / r.run_id)]
    where = ("Ray" if backend.name == "ray" else "the default device" if slots == [None]
             else "GPU(s) " + " | ".join(s or "" for s in slots))
    logger.info("grid %s: %d run(s), %d finished, %d to go on %s", grid.source, len(runs),
                len(runs) - len(pending), len(pending), where)

    if dry_run:
        prefix = train_command_prefix(backend.gpus_per_run, train_command)
        return [{"run_id": run.run_id, "command": " ".join(shlex.quote(c) for c in prefix + arguments_for(
            run, (output_dir / "runs" / run.run_id / "last").is_dir()))} for run in pending]
    if backend.name == "ray":
        trials = [grid_ray.TrialSpec(run.run_id, run.hyperparameters, str(output_dir / "runs" / run.run_id),
                                     arguments_for(run, False), arguments_for(run, True), inputs[run.run_id])
                  for run in pending]
        grid_ray.run_trials(trials, output_dir, grid_ray.RaySettings(
            backend.address, backend.gpus_per_run, backend.cpus_per_run, backend.max_failures,
            list(train_command) if train_command is not None else None))
    else:
        _run_local(pending, runs, output_dir, slots, train_command_prefix(backend.gpus_per_run, train_command),
                   arguments_for, inputs)
    rows = collect_results(output_dir, runs)
    write_results(output_dir, rows)
    return rows


def _run_local(pending: Sequence[Run], runs: Sequence[Run], output_dir: Path, slots: List[Optional[str]],
               prefix: List[str], arguments_for, inputs: Mapping[str, Dict[str, Any]]) -> None:
    """The local pool: one thread per device slot, each run on the slot it takes."""
    free: queue.Queue[Optional[str]] = queue.Queue()
    for slot in slots:
        free.put(slot)
    lock = threading.Lock()

    def work(run: Run) -> None:
        run_dir = output_dir / "runs" / run.run_id
        slot = free.get()
        try:  # resume is decided as the run starts: an earlier attempt may have left last/
            launch(run.run_id, run.hyperparameters, prefix + arguments_for(run, (run_dir / "last").is_dir()),
                   run_dir, slot, inputs=inputs[run.run_id])
        finally:
            free.put(slot)
        with lock:  # keep the tables current while the grid is running
            write_results(output_dir, collect_results(output_dir, runs))

    with ThreadPoolExecutor(max_workers=len(slots)) as pool:
        for future in [pool.submit(work, run) for run in pending]:
            future.result()


# --------------------------------------------------------------------------- results


def collect_results(output_dir: Path, runs: Sequence[Run]) -> List[Dict[str, Any]]:
    rows = []
    for run in runs:
        run_dir = output_dir / "runs" / run.run_id
        status = read_status(run_dir)
        row: Dict[str, Any] = {"run_id": run.run_id, "hyperparameters": run.hyperparameters,
                               "status": status.get("status", "pending")}
        row.update(read_train_summary(run_dir) if row["status"] == "done" else dict.fromkeys(SUMMARY_FIELDS))
        row["wall_s"] = status.get("wall_s")
        row["best"] = False
        rows.append(row)
    scored = [r for r in rows if r["status"] == "done" and isinstance(r["best_score"], (int, float))]
    if scored:  # GLUE metrics are all higher-is-better; ties go to the earlier run
        max(scored, key=lambda r: r["best_score"])["best"] = True
    return rows


def best_row(rows: Sequence[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    return next((r for r in rows if r["best"]), None)


def _cell(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def results_markdown(rows: Sequence[Dict[str, Any]]) -> str:
    keys = list(rows[0]["hyperparameters"]) if rows else []
    header = ["", "run"] + keys + ["status", "best score", "metric", "sparsity", "FLOPs reduction", "wall (s)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        flops = f"{r['flops_reduction']:.2f}x" if isinstance(r["flops_reduction"], (int, float)) else "-"
        wall = f"{r['wall_s']:.0f}" if isinstance(r["wall_s"], (int, float)) else "-"
        cells = ["**best**" if r["best"] else "", r["run_id"]]
        cells += [_format_value(r["hyperparameters"][k]) for k in keys]
        cells += [r["status"], _cell(r["best_score"]), _cell(r["metric"]), _cell(r["sparsity"]), flops, wall]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_results(output_dir: Path, rows: Sequence[Dict[str, Any]]) -> None:
    best = best_row(rows)
    atomic_write_json(output_dir / "grid.json", {"best": best["run_id"] if best else None, "runs": list(rows)})
    atomic_write_text(output_dir / "grid.md", results_markdown(rows))


def promote(output_dir: os.PathLike, rows: Sequence[Dict[str, Any]]) -> Path:
    """Copy the winning run's best/ to OUT/best/ (atomically: a reader sees the old copy or the new)."""
    output_dir = Path(output_dir)
    best = best_row(rows)
    if best is None:
        raise UserError(f"No finished run in {output_dir} has a best score, so nothing can be promoted; "
                        "let at least one run finish.")
    source = output_dir / "runs" / best["run_id"] / "best"
    if not source.is_dir():
        raise UserError(f"The winning run has no {source}; rerun it or promote by hand.")
    target = output_dir / "best"
    with atomic_directory(target) as tmp:
        shutil.copytree(source, tmp, dirs_exist_ok=True)
    return target


# --------------------------------------------------------------------------- the call


@dataclasses.dataclass(frozen=True)
class GridConfig:
    """``top grid``: the paper's hyper-parameter grid, one ``top train`` run per point."""

    task: str = option(check=checks.name_text, required=True, group="model and data", metavar="TASK",
                       help="the task of every run (the seed's spellings, such as CoLA, work too)")
    output_dir: str = common.output_dir("runs go to OUT/runs/<run-id>/; results to OUT/grid.json and OUT/grid.md")
    grid: Optional[str] = option(None, check=checks.path_text, group="optimisation", metavar="FILE",
                                 default_text=f"the paper's grid, {DEFAULT_GRID.name}", help="a grid TOML file")
    model: Optional[str] = option(None, check=checks.name_text, group="model and data", metavar="DIR_OR_HUB_ID",
                                  help="the fine-tuned dense model to prune (or model in [fixed])")
    teacher: Optional[str] = option(None, check=checks.name_text, group="model and data", metavar="DIR_OR_HUB_ID",
                                    default_text="--model", help="the distillation teacher")
    data_dir: Optional[str] = sources.data_dir()
    train_file: Optional[str] = sources.train_file()
    validation_file: Optional[str] = sources.validation_file()
    backend: str = option(
        BACKENDS[0], choices=BACKENDS, group="run",
        help="local: a pool on this machine, one run per --devices slot; ray: one Ray Tune trial per run, on this "
        f"machine or the cluster at --address (needs {grid_ray.INSTALL_HINT})",
    )
    address: Optional[str] = option(None, check=checks.name_text, group="run", metavar="HOST:PORT",
                                    default_text="RAY_ADDRESS if set, else a Ray instance started here",
                                    help="ray: the cluster to join (auto, or HOST:PORT of `ray start --head`)")
    devices: Optional[str] = option(None, check=checks.name_text, group="run", metavar="GPUS",
                                    help="local: GPU numbers, e.g. 0,1: runs go out in parallel, one per GPU")
    gpus_per_run: int = option(1, check=checks.int_in_range(1, 1024), group="run",
                               help="GPUs per run; above 1 runs use torchrun (ray: asked of the cluster)")
    cpus_per_run: float = option(1.0, check=checks.positive_float, group="run", help="ray: CPUs each trial asks for")
    max_failures: int = option(3, check=checks.non_negative_int, group="run",
                               help="ray: further attempts a trial may take when its node or run dies")
    device: Optional[str] = option(None, choices=common.DEVICES, group="run", default_text="each run's own",
                                   help="passed to every run")
    promote: bool = option(False, switch=True, group="output", help="copy the winning run's best/ to OUT/best/")
    dry_run: bool = option(False, switch=True, group="output", help="print the commands of the runs still to go")
    train_command: Optional[str] = option(None, check=checks.name_text, group="run", hidden=True,
                                          help="tests: the command that stands in for `top train`")

    def __post_init__(self):
        check_fields(self)


@dataclasses.dataclass(frozen=True)
class GridResult:
    """The grid's rows (one per run, grid order; with ``dry_run``, the pending runs' commands)."""

    output_dir: Path
    rows: List[Dict[str, Any]]
    promoted: Optional[Path] = None

    @property
    def failed(self) -> List[str]:
        return [r["run_id"] for r in self.rows if r.get("status") == "failed"]


def grid(config: GridConfig) -> GridResult:
    """Run ``top grid`` with ``config``."""
    loaded = load_grid(config.grid)
    options = {"model": config.model, "teacher": config.teacher, "data_dir": config.data_dir,
               "train_file": config.train_file, "validation_file": config.validation_file, "device": config.device}
    train_command = shlex.split(config.train_command) if config.train_command else None
    if config.backend == "local" and config.address:
        raise UserError("--address is for --backend ray; add --backend ray, or drop --address.")
    if config.backend == "ray" and config.devices:
        raise UserError("--devices is for --backend local; on Ray each trial gets its GPUs from the cluster "
                        "(--gpus-per-run), so drop --devices.")
    backend = Backend(config.backend, config.devices, config.gpus_per_run, config.address, config.cpus_per_run,
                      config.max_failures)
    rows = run_grid(config.task, loaded, config.output_dir, options=options, train_command=train_command,
                    dry_run=config.dry_run, backend=backend)
    promoted = promote(config.output_dir, rows) if config.promote and not config.dry_run else None
    return GridResult(Path(config.output_dir), rows, promoted)


def summary_lines(result: GridResult) -> List[str]:
    """What ``top grid`` prints when the runs are done."""
    rows = result.rows
    done = sum(r["status"] == "done" for r in rows)
    lines = [f"{done}/{len(rows)} run(s) done; results in {result.output_dir / 'grid.md'}"]
    best = best_row(rows)
    if best is not None:
        flops = best["flops_reduction"]
        lines.append(f"best: {best['run_id']} ({best['metric'] or 'score'} {_cell(best['best_score'])}, "
                     f"sparsity {_cell(best['sparsity'])}, FLOPs reduction "
                     f"{f'{flops:.2f}x' if isinstance(flops, (int, float)) else '-'})")
    if result.promoted is not None:
        lines.append(f"promoted to {result.promoted}")
    return lines
