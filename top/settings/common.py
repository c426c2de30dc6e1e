"""The settings several jobs share, each declared once: where a job writes, batches, lengths, seeds,
the device and the progress bar. A config class takes one as ``batch_size: int = common.batch_size()``."""

from __future__ import annotations

from typing import Any, Optional

from top.settings import values
from top.settings.fields import option

# The seed of every run that names none: the original's (its run_glue scripts pass --seed 57).
SEED = 57
# --device: "auto" is the GPU when one is visible, else the CPU (resolved when the job starts).
DEVICES = ("auto", "cpu", "cuda")


def output_dir(help: str = "the run directory: best/, last/, log.jsonl, run.json, summary.json") -> Any:
    return option(check=values.path_text, required=True, group="output", metavar="DIR", help=help)


def batch_size(default: int = 32, help: str = "examples per process and step") -> Any:
    return option(default, check=values.batch_size_count, group="run", help=help)


def eval_batch_size(default: int = 32) -> Any:
    return option(default, check=values.batch_size_count, group="evaluation", help="examples per evaluation batch")


def max_seq_length(default: int = 256, help: str = "the longest input in tokens; longer inputs are cut") -> Any:
    return option(default, check=values.int_at_least(2), group="model and data", help=help)


def seed() -> Any:
    return option(SEED, check=values.seed_number, group="run", help="random seed, 0..2**32-1")


def device(default: str = "auto", help: Optional[str] = None) -> Any:
    return option(
        default, choices=DEVICES, group="run",
        help=help or "where to run: auto (a visible GPU, else the CPU), cpu or cuda",
    )


def no_progress() -> Any:
    return option(False, switch=True, group="output", help="hide the progress bar")


def resolve_device_name(name: str, cuda_available: bool) -> str:
    """``auto`` made ``cuda`` or ``cpu``; the others as given (whether cuda exists is checked where it runs)."""
    if name == "auto":
        return "cuda" if cuda_available else "cpu"
    return name


def max_steps() -> Any:
    return option(None, check=values.step_count, group="optimisation", exclusive="length",
                  help="stop after this many steps (instead of --epochs)")


def weight_decay() -> Any:
    return option(0.0, check=values.non_negative_float, group="optimisation", help="AdamW's weight decay")


def max_grad_norm() -> Any:
    return option(1.0, check=values.positive_float, group="optimisation", help="clip the gradients' norm to this")


def logging_steps() -> Any:
    return option(25, check=values.positive_int, group="output",
                  help="write the training losses to log.jsonl every this many steps")


def group_by_length() -> Any:
    return option(
        False, switch=True, group="run",
        help="batch examples of similar length (Hugging Face's group_by_length): less padding, so faster steps; "
        "off by default, as in the paper's runs",
    )


def overwrite_output_dir(exclusive: Optional[str] = None) -> Any:
    """Hugging Face's ``--overwrite-output-dir``, except that the earlier run is moved aside, never deleted."""
    return option(
        False, switch=True, group="output", exclusive=exclusive,
        help="when --output-dir holds another run (its best/ or last/), move that run's files aside into "
        "OUT/previous-N/ and start afresh (nothing is deleted); without it such a folder is refused",
    )
