"""Pieces shared by ``top finetune`` and ``top train``: data, batch order, optimisers,
data-parallel gradients, logs and training-state files (the dev set is scored in ``top/scoring.py``).

Each training command is a plain loop in its own module; this one holds only what both use.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from top.argtypes import (
    MAX_STEPS,
    batch_size_count,
    int_at_least,
    non_negative_float,
    positive_float,
    positive_int,
    seed_number,
)
from top.errors import UserError, brief
from top.tasks import TASKS

logger = logging.getLogger(__name__)

STATE_FILE = "trainer_state.safetensors"
OLD_STATE_FILE = "trainer_state.pt"  # written before the state moved to safetensors; still read


# ----------------------------------------------------------------------------------------------
# Command-line pieces both commands share


def add_data_arguments(parser) -> None:
    parser.add_argument("--task", help=f"GLUE task: {', '.join(TASKS)}")
    parser.add_argument("--data-dir", help="GLUE_DIR in GLUE's layout (else the `datasets` hub copy)")
    parser.add_argument("--train-file", help="a csv/tsv/json file with sentence[, sentence2], label")
    parser.add_argument("--validation-file", help="the dev file, same columns as --train-file")


def add_run_arguments(parser) -> None:
    parser.add_argument("--batch-size", type=batch_size_count, default=32, help="examples per process and step")
    parser.add_argument("--eval-batch-size", type=batch_size_count, default=32)
    parser.add_argument("--max-seq-length", type=int_at_least(2), default=256)
    parser.add_argument("--weight-decay", type=non_negative_float, default=0.0)
    parser.add_argument("--max-grad-norm", type=positive_float, default=1.0)
    parser.add_argument("--seed", type=seed_number, default=57, help="0..2**32-1 (default 57)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--logging-steps", type=positive_int, default=25)
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument(
        "--group-by-length", action="store_true",
        help="batch examples of similar length (Hugging Face's group_by_length): less padding, so faster steps; "
        "off by default, as in the paper's runs",
    )


# ----------------------------------------------------------------------------------------------
# Data


def shorten(batch: Dict[str, torch.Tensor], length: Optional[int] = None) -> Dict[str, torch.Tensor]:
    """Cut every sequence tensor to the batch's longest member (or to ``length``), as the original does."""
    if length is None:
        length = int(batch["attention_mask"].sum(dim=1).max().item())
    return {k: (v[:, :length] if v.dim() == 2 and k != "labels" else v) for k, v in batch.items()}


def to_device(batch: Dict[str, torch.Tensor], device: torch.device) -> Dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


class BatchOrder:
    """Which examples make up each step's batch: a seeded permutation per epoch.

    The permutation of epoch ``e`` depends only on ``(seed, e)``, so a resumed run finds the
    batch of any step without replaying the sampler. A step's global batch holds
    ``batch_size * world_size`` examples; rank ``r`` takes every ``world_size``-th of them from
    position ``r``. A final global batch too small to give every rank an example is dropped.

    After :meth:`group_by_length`, each epoch's permutation is cut into megabatches of
    ``MEGABATCH`` global batches, each sorted by length, and the resulting global batches are
    shuffled (as Hugging Face's ``LengthGroupedSampler`` groups, without its longest-first rule).
    """

    def __init__(self, num_examples: int, batch_size: int, seed: int, world_size: int = 1, rank: int = 0):
        self.num_examples = num_examples
        self.global_batch = batch_size * world_size
        self.seed = seed
        self.world_size = world_size
        self.rank = rank
        full, rest = divmod(num_examples, self.global_batch)
        self.steps_per_epoch = full + (1 if rest >= world_size else 0)
        if self.steps_per_epoch < 1:
            raise UserError(
                f"The training data has {num_examples} examples, fewer than one per process; "
                "give more examples or fewer processes."
            )

    MEGABATCH = 50
    lengths: Optional[torch.Tensor] = None

    def group_by_length(self, lengths: torch.Tensor) -> BatchOrder:
        """Batch examples of similar ``lengths`` (one per example) from now on."""
        if len(lengths) != self.num_examples:
            raise ValueError(f"{len(lengths)} lengths for {self.num_examples} examples")
        self.lengths = torch.as_tensor(lengths).long()
        return self

    def permutation(self, epoch: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 1000 + epoch)
        order = torch.randperm(self.num_examples, generator=generator)
        if self.lengths is None:
            return order
        mega = self.global_batch * self.MEGABATCH
        groups = []
        for start in range(0, self.num_examples, mega):
            group = order[start : start + mega]
            # Longest first; a stable sort keeps equal lengths in their random order.
            _, by_length = torch.sort(-self.lengths[group], stable=True)
            groups.append(group[by_length])
        grouped = torch.cat(groups)
        batches = list(torch.split(grouped, self.global_batch))
        full = self.num_examples // self.global_batch  # a smaller last batch stays last, as steps expect
        shuffled = torch.randperm(full, generator=generator).tolist() + list(range(full, len(batches)))
        return torch.cat([batches[i] for i in shuffled])

    def indices(self, step: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """This rank's example indices at ``step``, and the whole global batch's."""
        epoch, position = divmod(step, self.steps_per_epoch)
        order = self.permutation(epoch)
        chunk = order[position * self.global_batch : (position + 1) * self.global_batch]
        return chunk[self.rank :: self.world_size], chunk


def step_batch(
    encoded: Dict[str, torch.Tensor], local: torch.Tensor, chunk: torch.Tensor, device: torch.device
) -> Dict[str, torch.Tensor]:
    """This rank's share of a step, cut to the longest member of the whole global batch.

    Cutting every rank to the same length keeps the attention shapes (and so the token
    importance, whose mean runs over query rows) what a single process would compute.
    """
    length = int(encoded["attention_mask"][chunk].sum(dim=1).max().item())
    return to_device(shorten(select(encoded, local), length), device)


def apply_length_grouping(args, order: BatchOrder, train_set: Dict[str, torch.Tensor]) -> None:
    """``--group-by-length``: the batch order groups the encoded examples by their real length."""
    if getattr(args, "group_by_length", False):
        order.group_by_length(train_set["attention_mask"].sum(dim=1))


# Told of every finished training step as (command, step, total_steps); the demo's time estimate listens.
STEP_LISTENERS: List[Callable[[str, int, int], None]] = []


def step_finished(command: str, step: int, total_steps: int) -> None:
    for listener in list(STEP_LISTENERS):
        listener(command, step, total_steps)


def select(encoded: Dict[str, torch.Tensor], indices: torch.Tensor) -> Dict[str, torch.Tensor]:
    return {k: v[indices] for k, v in encoded.items()}


def encode_data(args, data, model_dir: Path, flag: str, name: str):
    """The tokenizer of the model in ``model_dir`` (``flag name`` resolved), and the train and dev
    sets tokenised by it at ``--max-seq-length``."""
    from transformers import AutoTokenizer

    from top.data import encode

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    except Exception as error:
        raise UserError(
            f"{flag} {name} has no tokenizer ({type(error).__name__}); give a model directory with one."
        ) from None
    from transformers import AutoConfig

    from top.checkpoint import check_config_file
    from top.data import check_token_ids

    check_config_file(model_dir, f"The config.json of {flag} {name}")  # before transformers reads it
    config = AutoConfig.from_pretrained(str(model_dir))
    train_set = encode(data.train, tokenizer, args.max_seq_length)
    dev_set = encode(data.dev, tokenizer, args.max_seq_length)
    for encoded in (train_set, dev_set):
        check_token_ids(encoded, config, f"{flag} {name}")
    return tokenizer, train_set, dev_set



def training_length(args, steps_per_epoch: int, default_epochs: float) -> int:
    """Total optimisation steps from ``--max-steps`` or ``--epochs`` (else the default)."""
    if getattr(args, "max_steps", None) is not None:
        return int(args.max_steps)
    epochs = args.epochs if args.epochs is not None else default_epochs
    total = max(1, int(math.ceil(epochs * steps_per_epoch)))
    if total > MAX_STEPS:
        # Checked before anything plans the steps: the teacher cache lists every one of them.
        raise UserError(
            f"--epochs {epochs:g} at {steps_per_epoch} steps per epoch plans {total:.3g} steps, more than the "
            f"{MAX_STEPS:.0e} a run may take; give fewer epochs, a larger --batch-size or --max-steps."
        )
    return total


# ----------------------------------------------------------------------------------------------
# Optimisation


def weight_parameter_groups(model: torch.nn.Module, learning_rate: float, weight_decay: float) -> List[Dict]:
    """Two AdamW groups (decayed / not: biases and LayerNorm weights); embeddings stay frozen.

    The frozen embeddings keep ``requires_grad``, as in the original: their gradients still count
    in the clipping norm, but no optimiser moves them.
    """
    no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight")
    decay, plain = [], []
    for name, parameter in model.named_parameters():
        if "embeddings" in name or not parameter.requires_grad:
            continue
        (plain if any(nd in name for nd in no_decay) else decay).append(parameter)
    return [
        {"params": decay, "weight_decay": weight_decay, "lr": learning_rate},
        {"params": plain, "weight_decay": 0.0, "lr": learning_rate},
    ]


def linear_schedule(optimizer: torch.optim.Optimizer, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """The learning rate falls linearly from its start to 0 over ``total_steps`` (no warm-up)."""
    from transformers import get_linear_schedule_with_warmup

    # At least one step, so a run with no steps left keeps its start rate rather than 0.
    return get_linear_schedule_with_warmup(optimizer, 0, max(1, int(total_steps)))


# ----------------------------------------------------------------------------------------------
# Data parallel (torchrun)


@dataclasses.dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()

    def sum_gradients(self, parameters: Sequence[torch.nn.Parameter]) -> None:
        """All-reduce (sum) gradients; each rank's loss is already weighted by its share."""
        if not self.enabled:
            return
        grads = [p.grad for p in parameters if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        torch.distributed.all_reduce(flat)
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

    def gather_sum(self, value: torch.Tensor) -> torch.Tensor:
        """The sum over ranks of ``value``, differentiable in this rank's own term only."""
        if not self.enabled:
            return value
        parts = [torch.zeros_like(value) for _ in range(self.world_size)]
        torch.distributed.all_gather(parts, value.detach())
        total = value
        for rank, part in enumerate(parts):
            if rank != self.rank:
                total = total + part
        return total

    def gather_objects(self, obj: Any) -> List[Any]:
        if not self.enabled:
            return [obj]
        out: List[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(out, obj)
        return out


def setup_distributed(device_name: str) -> Distributed:
    """Join the process group that ``torchrun`` describes in the environment (gloo on CPU, nccl on CUDA)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Distributed()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not torch.distributed.is_initialized():
        backend = "nccl" if device_name == "cuda" else "gloo"
        torch.distributed.init_process_group(backend=backend)
    if device_name == "cuda":
        torch.cuda.set_device(local_rank)
    return Distributed(rank, world_size, local_rank)


def teardown_distributed(dist: Distributed) -> None:
    if dist.enabled and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def resolve_device(name: str, dist: Distributed) -> torch.device:
    if name == "cuda":
        if not torch.cuda.is_available():
            raise UserError("--device cuda was given but no CUDA GPU is visible; pass --device cpu or expose a GPU.")
        return torch.device("cuda", dist.local_rank)
    return torch.device("cpu")


# ----------------------------------------------------------------------------------------------
# Model inputs


def model_inputs(batch: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    return {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}


# ----------------------------------------------------------------------------------------------
# Files


class JsonLog:
    """``OUT/log.jsonl``: one JSON object per line; only the main process writes."""

    def __init__(self, path: Path, enabled: bool):
        self.path = Path(path)
        self.enabled = enabled

    def truncate_after(self, step: int) -> None:
        """Drop lines a killed run wrote after the step it is resumed from.

        A line cut short by the kill is dropped in silence; any other line that is not a record
        with a whole-number step (``{"step": null}``, a list, bytes that are not UTF-8) is dropped
        with one warning naming the file and the line: the log never costs the run its weights.
        """
        if not self.enabled or not self.path.is_file():
            return
        lines = self.path.read_bytes().decode("utf-8", errors="replace").splitlines()
        kept = []
        for number, line in enumerate(lines, start=1):
            try:
                record = json.loads(line)
            except (ValueError, RecursionError):  # ValueError: also a number of more than 4,300 digits
                if line.strip() and number < len(lines):
                    logger.warning("%s line %d is not JSON; dropped it from the resumed log.", self.path, number)
                continue  # the last line: cut short by the kill
            logged = record.get("step", 0) if isinstance(record, dict) else None
            if isinstance(logged, bool) or not isinstance(logged, int):
                logger.warning(
                    "%s line %d is not a log record with a whole-number step (%s); dropped it from the resumed log.",
                    self.path, number, brief(record),
                )
                continue
            if logged <= step:
                kept.append(line)
        from top.io import atomic_write_text

        atomic_write_text(self.path, "".join(k + "\n" for k in kept))

    def last_record_with(self, key: str) -> Optional[Dict[str, Any]]:
        """The last whole record that has ``key`` (None if none does, or there is no log)."""
        if not self.path.is_file():
            return None
        found = None
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and key in record:
                found = record
        return found

    def write(self, record: Dict[str, Any]) -> None:
        """Append one line; a value that is not a finite number (a diverged loss) is logged as null.

        A write that fails (a full disk) is cut back off, so no half line is left behind.
        """
        if not self.enabled:
            return
        from top.io import finite_or_none, json_text

        data = (json_text(finite_or_none(record)) + "\n").encode("utf-8")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(str(self.path), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            size = os.fstat(fd).st_size
            try:
                written = 0
                while written < len(data):
                    written += os.write(fd, data[written:])
            except OSError as error:
                os.ftruncate(fd, size)
                if error.filename is None:
                    error.filename = str(self.path)
                raise
        finally:
            os.close(fd)


def save_state_file(directory: Path, state: Dict[str, Any]) -> None:
    """The training state as ``trainer_state.safetensors``: its tensors, and its structure and plain
    values (optimizer settings, RNG states, counters) as JSON in the file's metadata."""
    from top.manifest import add_to_manifest
    from top.safeload import write_tree

    write_tree(Path(directory) / STATE_FILE, state)
    add_to_manifest(directory, [STATE_FILE])


_RESTART = "start the run again without --resume"


def has_state_file(directory: Path) -> bool:
    return (Path(directory) / STATE_FILE).is_file() or (Path(directory) / OLD_STATE_FILE).is_file()


def load_state_file(directory: Path) -> Dict[str, Any]:
    """Our own training state: ``trainer_state.safetensors``, or an older ``trainer_state.pt``
    (read through the allow-list, so nothing in it runs)."""
    from top.manifest import verify_manifest
    from top.safeload import read_torch_file, read_tree

    directory = Path(directory)
    file = directory / STATE_FILE
    verify_manifest(directory, [STATE_FILE, OLD_STATE_FILE])
    if file.is_file():
        state = read_tree(file, fix=_RESTART)
    elif (directory / OLD_STATE_FILE).is_file():
        file = directory / OLD_STATE_FILE
        state = read_torch_file(file, fix=_RESTART)
    else:
        raise UserError(f"{file} is missing, so the run cannot be resumed; start it again without --resume.")
    if not isinstance(state, dict) or not {"step", "pruning", "best", "rng", "optimizers"} <= set(state):
        raise UserError(f"{file} does not hold a training state; start the run again without --resume.")
    return state


def start_run(out: Path, command: str, args, record: Dict[str, Any]) -> None:
    """A fresh run directory: the old log removed, ``run.json`` recording the command, its
    arguments, ``record`` and the environment (rank 0 only; the caller checks)."""
    from top import determinism
    from top.io import atomic_write_json

    out.mkdir(parents=True, exist_ok=True)
    if (out / "log.jsonl").exists():
        (out / "log.jsonl").unlink()
    run = {"command": command, "args": {k: v for k, v in vars(args).items() if not k.startswith("_")}}
    run.update(record)
    run["environment"] = determinism.environment_record()
    atomic_write_json(out / "run.json", run)
