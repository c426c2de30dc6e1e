"""What each task preset of ``top train`` costs: the measured step time, and FLOPs-scaled estimates.

``training_cost.toml`` holds what was measured (one ``top train`` step of a small model on one
CPU) and the GPU rate that the GPU-hour estimates assume (no GPU was measured); everything else here
is arithmetic on ``top.method.flops`` and ``tasks.toml``, an estimate.
FLOPs are 2 x MACs, counted as ``top.method.flops`` counts them (no embeddings, biases or norms), for the
dense model: pruned tokens are still computed in ``top train``'s faithful forward pass.
"""

import dataclasses
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Mapping, Optional, Union

import torch

from top.data.tasks import Task, check_fields, read_toml
from top.errors import UserError
from top.method import flops
from top.settings.fields import defaults
from top.training.config import PAPER_RECIPE, TrainConfig

COST_FILE = Path(__file__).with_name("training_cost.toml")

# `top train`'s defaults, from its config: examples per step, dev evaluation every this many steps
# (a task preset's: the paper's recipe), and the length faithful evaluation pads every dev example to.
_TRAIN = defaults(TrainConfig)
BATCH_SIZE = _TRAIN["batch_size"]
EVAL_STEPS = PAPER_RECIPE["eval_steps"]
MAX_SEQ_LENGTH = _TRAIN["max_seq_length"]
# A training step runs the student forward and backward: about 3 forward passes.
FORWARD_AND_BACKWARD = 3


@dataclasses.dataclass(frozen=True)
class ModelShape:
    name: str
    layers: int
    hidden: int
    heads: int
    intermediate: int

    def config(self) -> SimpleNamespace:
        """The config fields ``top.method.flops`` reads."""
        return SimpleNamespace(
            num_hidden_layers=self.layers,
            hidden_size=self.hidden,
            num_attention_heads=self.heads,
            intermediate_size=self.intermediate,
        )


@dataclasses.dataclass(frozen=True)
class Measurement:
    """Seconds per step of ``top train`` and ``top finetune`` on one batch of one model, on one CPU."""

    model: ModelShape
    batch_size: int
    length: int  # every example of the timed batch padded to this
    train_step_seconds: float
    finetune_step_seconds: float
    teacher_cache: bool  # True: the timed `top train` step read the teacher's logits from a cache
    cpu: str
    cores: int
    vector_extension: str
    torch_threads: int
    torch: str
    date: str
    command: str
    note: str  # conditions worth knowing, "" for none


@dataclasses.dataclass(frozen=True)
class GpuAssumption:
    """Not a measurement: the sustained rate a GPU is assumed to train at, for the GPU-hour estimates."""

    gpu: str
    sustained_tflops: float  # TFLOP/s of the FLOPs this module counts
    basis: str  # why that figure


@dataclasses.dataclass(frozen=True)
class TrainingCost:
    measurement: Measurement
    paper_model: ModelShape  # the model the paper trains (BERT-base), estimated from the measurement
    gpu: GpuAssumption


_MODEL_SCHEMA = {"name": str, "layers": int, "hidden": int, "heads": int, "intermediate": int}
_CPU_SCHEMA = {"name": str, "cores": int, "vector_extension": str, "torch_threads": int}
_MEASUREMENT_SCHEMA = {
    "model": dict,
    "cpu": dict,
    "batch_size": int,
    "length": int,
    "train_step_seconds": float,
    "finetune_step_seconds": float,
    "teacher_cache": bool,
    "torch": str,
    "date": str,
    "command": str,
    "note": str,
}
_GPU_SCHEMA = {"gpu": str, "sustained_tflops": float, "basis": str}
_TABLES = ("measurement", "paper_model", "gpu_assumption")


def _positive(raw: Mapping[str, Any], keys, where: str, path: Path) -> None:
    for key in keys:
        if raw[key] <= 0:
            raise UserError(f"{path}: {where}.{key} is {raw[key]}; make it greater than 0.")


def _model(raw: Any, where: str, path: Path) -> ModelShape:
    check_fields(raw, _MODEL_SCHEMA, where, path)
    _positive(raw, ("layers", "hidden", "heads", "intermediate"), where, path)
    if raw["hidden"] % raw["heads"]:
        raise UserError(
            f"{path}: {where}.hidden ({raw['hidden']}) must be a multiple of {where}.heads ({raw['heads']}); fix one."
        )
    return ModelShape(**raw)


def load_training_cost(path: Optional[Union[str, Path]] = None) -> TrainingCost:
    """``training_cost.toml`` with its types and ranges checked; a malformed file raises UserError."""
    path = Path(path) if path is not None else COST_FILE
    raw = read_toml(path)
    for key in raw:
        if key not in _TABLES:
            raise UserError(f"{path}: unknown table [{key}]; use only {', '.join(f'[{t}]' for t in _TABLES)}.")
    for key in _TABLES:
        if key not in raw:
            raise UserError(f"{path} has no [{key}] table; add it.")
    measured = raw["measurement"]
    check_fields(measured, _MEASUREMENT_SCHEMA, "measurement", path, optional=("note",))
    check_fields(measured["cpu"], _CPU_SCHEMA, "measurement.cpu", path)
    _positive(measured, ("batch_size", "length", "train_step_seconds", "finetune_step_seconds"), "measurement", path)
    _positive(measured["cpu"], ("cores", "torch_threads"), "measurement.cpu", path)
    cpu = measured["cpu"]
    measurement = Measurement(
        model=_model(measured["model"], "measurement.model", path),
        batch_size=measured["batch_size"],
        length=measured["length"],
        train_step_seconds=float(measured["train_step_seconds"]),
        finetune_step_seconds=float(measured["finetune_step_seconds"]),
        teacher_cache=measured["teacher_cache"],
        cpu=cpu["name"],
        cores=cpu["cores"],
        vector_extension=cpu["vector_extension"],
        torch_threads=cpu["torch_threads"],
        torch=measured["torch"],
        date=measured["date"],
        command=measured["command"],
        note=measured.get("note", ""),
    )
    check_fields(raw["gpu_assumption"], _GPU_SCHEMA, "gpu_assumption", path)
    _positive(raw["gpu_assumption"], ("sustained_tflops",), "gpu_assumption", path)
    assumed = raw["gpu_assumption"]
    gpu = GpuAssumption(assumed["gpu"], float(assumed["sustained_tflops"]), assumed["basis"])
    return TrainingCost(measurement, _model(raw["paper_model"], "paper_model", path), gpu)


# ----------------------------------------------------------------------------------------------
# Estimates: FLOPs from the shapes, seconds from the measured step.


def training_steps(task: Task, batch_size: int = BATCH_SIZE) -> int:
    """The preset's optimisation steps on one process: a smaller last batch of an epoch is a step too."""
    return -(-task.train_size // batch_size) * task.preset.epochs


def evaluations(steps: int, eval_steps: int = EVAL_STEPS) -> int:
    """Dev evaluations in a run: every ``eval_steps`` steps, and after the last step."""
    return -(-steps // eval_steps)


def forward_flops(model: ModelShape, length: int) -> int:
    """FLOPs of one dense forward pass of one example of ``length`` tokens."""
    lengths = torch.full((1, model.layers), length, dtype=torch.long)
    return 2 * int(flops.model_macs(lengths, model.config()))


def step_flops(model: ModelShape, batch_size: int, length: int, teacher_cache: bool) -> int:
    """FLOPs of one ``top train`` step: the student forward and backward, and the teacher unless cached."""
    passes = FORWARD_AND_BACKWARD + (0 if teacher_cache else 1)
    return batch_size * passes * forward_flops(model, length)


def evaluation_length(task: Task) -> int:
    """What faithful evaluation pads a dev example to: ``--max-seq-length``, the default or, where the
    task is read at more tokens (the long-document tasks' 512), that length."""
    return max(MAX_SEQ_LENGTH, task.task_length)


def evaluation_flops(model: ModelShape, task: Task) -> int:
    """FLOPs of the run's dev evaluations: faithful mode pads every example to :func:`evaluation_length`."""
    return evaluations(training_steps(task)) * task.dev_size * forward_flops(model, evaluation_length(task))


def training_flops(model: ModelShape, task: Task, teacher_cache: bool) -> int:
    """FLOPs of a ``top train`` run at the task's preset, every training batch counted at ``task_length``.

    ``top train`` cuts each batch to its longest member instead (up to ``--max-seq-length``), so
    this is the paper's padded count. With the cache the teacher runs once per training example;
    without, once per example and step.
    """
    steps = training_steps(task)
    teacher = task.train_size * forward_flops(model, task.task_length) if teacher_cache else 0
    student = steps * step_flops(model, BATCH_SIZE, task.task_length, teacher_cache)
    return student + teacher + evaluation_flops(model, task)


def seconds_per_flop(measurement: Measurement) -> float:
    """The measured CPU's rate on a ``top train`` step, the scale for every other figure."""
    m = measurement
    return m.train_step_seconds / step_flops(m.model, m.batch_size, m.length, m.teacher_cache)


def cpu_seconds(model: ModelShape, task: Task, measurement: Measurement) -> float:
    """Estimated seconds of a preset run of ``model`` on the measured CPU, teacher cache as measured."""
    return training_flops(model, task, measurement.teacher_cache) * seconds_per_flop(measurement)


def gpu_seconds(model: ModelShape, task: Task, gpu: GpuAssumption) -> float:
    """Estimated seconds of a preset run of ``model`` on one GPU at its assumed sustained rate, teacher cached
    (``top train``'s default)."""
    return training_flops(model, task, teacher_cache=True) / (gpu.sustained_tflops * 1e12)
