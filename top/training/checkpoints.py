"""What a training run writes of its models: ``best/`` and ``last/``, each swapped in whole, and what
``--resume`` reads back from ``last/``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from top.errors import UserError
from top.method.checkpoint import load_checkpoint, save_checkpoint
from top.method.gates import TokenGates
from top.runtime import determinism
from top.storage.io import atomic_directory, atomic_write_json
from top.storage.manifest import write_manifest
from top.storage.safeload import SAFETENSORS_FILE, write_safetensors
from top.training import distributed, run_files
from top.training.step import Optimizers, build_optimizers

logger = logging.getLogger(__name__)


def write_pruned(path: Path, student, gates, tokenizer, trainer_state: Dict[str, Any],
                 extra: Optional[Dict[str, Any]] = None) -> None:
    """The published layout (config, weights, zs.pt, l0_module.pt, tokenizer), ``trainer_state.json`` and the
    ``extra`` JSON files, written atomically."""
    save_checkpoint(
        path,
        model_state_dict=student.hf_model.state_dict(),
        config=student.config,
        gate_state=gates.state_for_checkpoint(),
        tokenizer=tokenizer,
        extra={"trainer_state.json": trainer_state, **(extra or {})},
    )


def write_dense(path: Path, model, tokenizer, trainer_state: Dict[str, Any]) -> None:
    """A fine-tuned model in Hugging Face layout (config, ``model.safetensors``, tokenizer), swapped in whole."""
    with atomic_directory(path) as tmp:
        model.config.save_pretrained(str(tmp))
        write_safetensors(tmp / SAFETENSORS_FILE, model.state_dict())
        tokenizer.save_pretrained(str(tmp))
        atomic_write_json(tmp / "trainer_state.json", trainer_state)
        write_manifest(tmp)  # last: it vouches for every file above


def save_last(last_dir: Path, step: int, total_steps: int, best: Dict[str, Any], student, gates, tokenizer,
              optimizers: Optimizers, config, dist: distributed.Distributed) -> None:
    """``last/``: the checkpoint and everything a bit-identical ``--resume`` needs, swapped in whole.

    Every process takes part (their RNG states are gathered); only the main process writes.
    """
    rng = dist.gather_objects(determinism.rng_state())
    if not dist.is_main:
        return
    state = {
        "step": step,
        "pruning": optimizers.pruning,
        "sparsity_control": config.sparsity_control,
        "best": best,
        "world_size": dist.world_size,
        "rng": rng,
        "optimizers": optimizers.state_dict(),
    }
    with atomic_directory(last_dir) as tmp:
        write_pruned(tmp, student, gates, tokenizer, {"step": step, "total_steps": total_steps, "best": best})
        run_files.save_state_file(tmp, state)


def restore(last_dir: Path, student, gates, config, total_steps: int,
            dist: distributed.Distributed) -> Tuple[int, Dict[str, Any], Optimizers]:
    """Weights, gates, lambdas, optimisers, scheduler and RNG states from ``last/``.

    Returns the step to continue from, the best evaluation so far and the optimisers.
    """
    state = run_files.load_state_file(last_dir)
    checkpoint = load_checkpoint(last_dir)
    student.load_checkpoint_weights(
        checkpoint, fix="resume with the flags of the original run", against="the --model architecture"
    )
    saved = TokenGates.from_state(checkpoint.gate_state)
    if saved.prune_locations != gates.prune_locations or saved.bin_num != gates.bin_num:
        raise UserError(
            f"{last_dir} has gates at {saved.prune_locations} with {saved.bin_num} bins; "
            "resume with the --prune-location and --bin-num of the original run."
        )
    gates.load_state_dict(saved.state_dict())
    control = state.get("sparsity_control", "paper")  # states written before the flag are the paper's
    if control != config.sparsity_control:
        raise UserError(
            f"{last_dir} was trained with --sparsity-control {control}; resume with --sparsity-control {control}."
        )
    step = int(state["step"])
    optimizers = build_optimizers(student, gates, config, total_steps, bool(state["pruning"]))
    optimizers.load_state_dict(state["optimizers"])
    rng = state["rng"]
    if len(rng) == dist.world_size:
        determinism.set_rng_state(rng[dist.rank])
    else:
        logger.warning(
            "last/ was written by %d processes, not %d; dropout randomness restarts", len(rng), dist.world_size
        )
    return step, dict(state["best"]), optimizers
