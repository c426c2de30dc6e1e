"""``top demo``'s stages: the data split, the teacher, pruning, evaluation and the benchmarks, each a
call of the library that the matching ``top`` command makes; and the stage bar."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from top.data import assets as demo_assets
from top.data.loading import load_task_data
from top.deploy.export import ONNX_INSTALL, ExportConfig, export, onnxruntime_available
from top.evaluation.bench import BenchConfig, bench
from top.evaluation.evaluate import load_model, score
from top.storage.io import atomic_write_json, sha256_of
from top.training.config import FinetuneConfig, TrainConfig
from top.training.finetune import finetune
from top.training.loop import train
from top.training.progress import Callback

logger = logging.getLogger(__name__)

class Stages:
    """The demo's stage bar, and the seconds each stage took."""

    def __init__(self, bar):
        self.bar = bar
        self.seconds: Dict[str, float] = {}
        self.current: Optional[str] = None
        self.since = time.perf_counter()

    def start(self, name: str) -> None:
        self._close_current()
        self.current = name
        self.bar.set_postfix_str(name)

    def _close_current(self) -> None:
        now = time.perf_counter()
        if self.current is not None:
            self.seconds[self.current] = round(now - self.since, 1)
            self.bar.update(1)
        self.since = now

    def finish(self) -> None:
        self._close_current()
        self.current = None
        self.bar.close()


# The demo's data files: the training commands choose best/ on `select`; the report scores `dev`.
SPLITS = ("train", "select", "dev")


def prepare_data(out: Path, recipe: Dict[str, Any]) -> Dict[str, Path]:
    """The seeded split: ``n_train`` training sentences, then ``n_select`` on which `top finetune` and
    `top train` evaluate and choose best/, then ``n_dev`` on which the report scores every model.
    Choosing on sentences the report never sees keeps the reported score free of the choice's luck."""
    snippets_path = demo_assets.snippets_file()
    manifest = {
        "source": f"{demo_assets.DATA_PACKAGE} sdist: {demo_assets.DATA_MEMBER}",
        "sdist_sha256": demo_assets.ASSET_SHA256[demo_assets.DATA_SDIST],
        "snippets_sha256": sha256_of(snippets_path),
        "seed": recipe["seed"],
        "n_train": recipe["n_train"],
        "n_select": recipe["n_select"],
        "n_dev": recipe["n_dev"],
        "neutral_band": recipe["neutral_band"],
        "label": "1 if mean rating > 0 else 0",
    }
    directory = out / "data"
    cached = demo_assets.load_manifest(directory)
    if cached is not None and {k: cached.get(k) for k in manifest} == manifest:
        logger.info("reusing the data split in %s", directory)
        paths = {name: directory / f"{name}.jsonl" for name in SPLITS}
        paths["manifest"] = directory / "manifest.json"
        return paths
    snippets = demo_assets.read_snippets(snippets_path)
    train, held_out = demo_assets.make_split(
        snippets, recipe["n_train"], recipe["n_select"] + recipe["n_dev"], recipe["seed"], recipe["neutral_band"]
    )
    manifest["n_snippets"] = len(snippets)
    splits = {"train": train, "select": held_out[: recipe["n_select"]], "dev": held_out[recipe["n_select"]:]}
    return demo_assets.write_split(directory, splits, manifest)


def teacher_stage(out: Path, data: Dict[str, Path], recipe: Dict[str, Any], device: str, fresh: bool,
                  callback: Optional[Callback] = None) -> Path:
    teacher = out / "teacher"
    fingerprint = {
        "model": str(demo_assets.model_dir()),
        "data": json.loads(data["manifest"].read_text())["snippets_sha256"],
        **{k: recipe[k] for k in ("n_train", "n_select", "max_seq_length", "finetune_epochs",
                                  "finetune_learning_rate", "seed", "neutral_band", "group_by_length")},
    }
    stamp = teacher / "demo-fingerprint.json"
    if not fresh and (teacher / "best" / "config.json").exists() and stamp.exists():
        if json.loads(stamp.read_text()) == fingerprint:
            logger.info("reusing the fine-tuned teacher in %s", teacher / "best")
            return teacher / "best"
    finetune(FinetuneConfig(
        model=str(demo_assets.model_dir()), train_file=str(data["train"]), validation_file=str(data["select"]),
        epochs=recipe["finetune_epochs"], learning_rate=recipe["finetune_learning_rate"],
        max_seq_length=recipe["max_seq_length"], batch_size=recipe["batch_size"], seed=recipe["seed"],
        device=device, output_dir=str(teacher), group_by_length=recipe["group_by_length"],
        overwrite_output_dir=True,  # the demo's own folder: a stale teacher is moved aside, not deleted
    ), callback=callback)
    atomic_write_json(stamp, fingerprint)
    return teacher / "best"


def prune_stage(out: Path, teacher: Path, data: Dict[str, Path], recipe: Dict[str, Any], device: str,
                callback: Optional[Callback] = None) -> Path:
    pruned = out / "pruned"
    result = train(TrainConfig(
        model=str(teacher), teacher=str(teacher), train_file=str(data["train"]), validation_file=str(data["select"]),
        target_sparsity=recipe["target_sparsity"], prune_location=recipe["prune_location"],
        bin_num=recipe["bin_num"], topk=recipe["topk"], epochs=recipe["epochs"],
        warmup_epochs=recipe["warmup_epochs"], learning_rate=recipe["learning_rate"],
        reg_learning_rate=recipe["reg_learning_rate"], sparsity_control=recipe["sparsity_control"],
        sparsity_epsilon=recipe["sparsity_epsilon"], best_rule=recipe["best_rule"],
        rank_loss_alpha=recipe["rank_loss_alpha"], eval_steps=recipe["eval_steps"],
        layer_gate_init=recipe["layer_gate_init"], max_seq_length=recipe["max_seq_length"],
        batch_size=recipe["prune_batch_size"], seed=recipe["seed"], device=device, output_dir=str(pruned),
        group_by_length=recipe["group_by_length"],
        overwrite_output_dir=True,  # a rerun moves the earlier pruned run aside; its teacher cache is reused
    ), callback=callback)
    if result.best_dir is not None:
        return result.best_dir
    # No evaluation reached the target: report the last state honestly rather than nothing.
    logger.warning(
        "no evaluation reached the target sparsity %s; reporting %s instead of best/ "
        "(train longer with --epochs or a larger --reg-learning-rate)", recipe["target_sparsity"], pruned / "last",
    )
    return pruned / "last"


def evaluate_stage(teacher: Path, pruned: Path, data: Dict[str, Path], recipe: Dict[str, Any], device: str):
    eval_data = load_task_data(validation_file=data["dev"], max_seq_length=recipe["max_seq_length"], splits=("dev",))
    dev = torch.device(device)
    records = {}
    loaded_teacher = load_model(teacher, dev)
    records["teacher"] = score(loaded_teacher, eval_data, "faithful", recipe["max_seq_length"], recipe["batch_size"])
    loaded = load_model(pruned, dev)
    for mode in ("faithful", "compact"):
        records[mode] = score(loaded, eval_data, mode, recipe["max_seq_length"], recipe["batch_size"])
    return records, loaded, eval_data


def bench_stage(out: Path, pruned: Path, data: Dict[str, Path], recipe: Dict[str, Any], device: str,
                quick: bool) -> Optional[Dict[str, Any]]:
    config = BenchConfig(
        task=recipe["bench_task"], checkpoint=str(pruned), validation_file=str(data["dev"]),
        batch_size=recipe["batch_size"], device=device, output=str(out / "bench.json"),
        max_examples=64 if quick else recipe["bench_examples"],
        **({"warmup_passes": 0, "no_memory": True} if quick else {}),
    )
    return bench(config).record


def onnx_stage(out: Path, pruned: Path, data: Dict[str, Path], recipe: Dict[str, Any], quick: bool
               ) -> Dict[str, Any]:
    """Export the pruned model to ONNX and time it at batch 1 in onnxruntime (skipped without it)."""
    if not onnxruntime_available():
        return {"bench": None, "model": None,
                "note": f"onnx/onnxruntime are not installed ({ONNX_INSTALL}); the ONNX export was skipped"}
    model = out / "model.onnx"
    export(ExportConfig(checkpoint=str(pruned), output=str(model)))
    config = BenchConfig(
        task=recipe["bench_task"], checkpoint=str(pruned), runtime="onnxruntime", validation_file=str(data["dev"]),
        batch_size=1, device="cpu", output=str(out / "bench-onnx.json"),
        max_examples=16 if quick else recipe["onnx_bench_examples"], **({"warmup_passes": 0} if quick else {}),
    )
    return {"bench": bench(config).record, "model": str(model), "note": None}
