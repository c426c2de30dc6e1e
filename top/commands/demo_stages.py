"""``top demo``'s stages: the data split, the teacher, pruning, evaluation and the benchmarks, each a
real ``top`` command run in this process; and the stage bar."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from top.commands import bench, demo_assets, evaluate, export, finetune, train
from top.commands.argtypes import OneLineParser
from top.commands.export import onnxruntime_available
from top.data.loading import load_task_data
from top.errors import UserError
from top.storage.io import atomic_write_json, sha256_of

logger = logging.getLogger(__name__)

# The commands the demo's stages run.
STAGE_COMMANDS = {"finetune": finetune, "train": train, "bench": bench, "export": export}


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


def _top(*argv: str) -> None:
    """Run ``top ARGV`` in this process: the command's own parser and ``run``, as ``top.cli`` would."""
    module = STAGE_COMMANDS[argv[0]]
    parser = OneLineParser(prog=f"top {argv[0]}")
    module.add_arguments(parser)
    code = module.run(parser.parse_args(list(argv[1:])))
    if code:
        raise UserError(f"`top {argv[0]}` failed with exit status {code}; see its message above.")


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


def teacher_stage(out: Path, data: Dict[str, Path], recipe: Dict[str, Any], device: str, fresh: bool) -> Path:
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
    _top(
        "finetune", "--model", str(demo_assets.model_dir()),
        "--train-file", str(data["train"]), "--validation-file", str(data["select"]),
        "--epochs", str(recipe["finetune_epochs"]), "--learning-rate", str(recipe["finetune_learning_rate"]),
        "--max-seq-length", str(recipe["max_seq_length"]), "--batch-size", str(recipe["batch_size"]),
        "--seed", str(recipe["seed"]), "--device", device, "--output-dir", str(teacher),
        *(["--group-by-length"] if recipe["group_by_length"] else []),
    )
    atomic_write_json(stamp, fingerprint)
    return teacher / "best"


def prune_stage(out: Path, teacher: Path, data: Dict[str, Path], recipe: Dict[str, Any], device: str) -> Path:
    pruned = out / "pruned"
    _top(
        "train", "--model", str(teacher), "--teacher", str(teacher),
        "--train-file", str(data["train"]), "--validation-file", str(data["select"]),
        "--target-sparsity", str(recipe["target_sparsity"]), "--prune-location", recipe["prune_location"],
        "--bin-num", str(recipe["bin_num"]), "--topk", str(recipe["topk"]),
        "--epochs", str(recipe["epochs"]), "--warmup-epochs", str(recipe["warmup_epochs"]),
        "--learning-rate", str(recipe["learning_rate"]), "--reg-learning-rate", str(recipe["reg_learning_rate"]),
        "--sparsity-control", recipe["sparsity_control"], "--sparsity-epsilon", str(recipe["sparsity_epsilon"]),
        "--best-rule", recipe["best_rule"],
        "--rank-loss-alpha", str(recipe["rank_loss_alpha"]), "--eval-steps", str(recipe["eval_steps"]),
        "--layer-gate-init", str(recipe["layer_gate_init"]),
        "--max-seq-length", str(recipe["max_seq_length"]), "--batch-size", str(recipe["prune_batch_size"]),
        "--seed", str(recipe["seed"]), "--device", device, "--output-dir", str(pruned),
        *(["--group-by-length"] if recipe["group_by_length"] else []),
    )
    best = pruned / "best"
    if (best / "config.json").exists():
        return best
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
    loaded_teacher = evaluate.load_model(teacher, dev)
    records["teacher"] = evaluate.evaluate(loaded_teacher, eval_data, "faithful", recipe["max_seq_length"],
                                           recipe["batch_size"])
    loaded = evaluate.load_model(pruned, dev)
    for mode in ("faithful", "compact"):
        records[mode] = evaluate.evaluate(loaded, eval_data, mode, recipe["max_seq_length"], recipe["batch_size"])
    return records, loaded, eval_data


def bench_stage(out: Path, pruned: Path, data: Dict[str, Path], recipe: Dict[str, Any], device: str,
                quick: bool) -> Optional[Dict[str, Any]]:
    path = out / "bench.json"
    argv = ["bench", "--task", recipe["bench_task"], "--checkpoint", str(pruned),
            "--validation-file", str(data["dev"]), "--batch-size", str(recipe["batch_size"]), "--device", device,
            "--output", str(path), "--max-examples", str(64 if quick else recipe["bench_examples"])]
    if quick:
        argv += ["--warmup-passes", "0", "--no-memory"]
    _top(*argv)
    return json.loads(path.read_text())


def onnx_stage(out: Path, pruned: Path, data: Dict[str, Path], recipe: Dict[str, Any], quick: bool
               ) -> Dict[str, Any]:
    """Export the pruned model to ONNX and time it at batch 1 in onnxruntime (skipped without it)."""
    if not onnxruntime_available():
        return {"bench": None, "model": None,
                "note": "onnx/onnxruntime are not installed (pip install 'top[onnx]'); the ONNX export was skipped"}
    model = out / "model.onnx"
    _top("export", "--checkpoint", str(pruned), "--output", str(model))
    path = out / "bench-onnx.json"
    argv = ["bench", "--task", recipe["bench_task"], "--checkpoint", str(pruned), "--runtime", "onnxruntime",
            "--validation-file", str(data["dev"]), "--batch-size", "1", "--device", "cpu",
            "--output", str(path), "--max-examples", str(16 if quick else recipe["onnx_bench_examples"])]
    if quick:
        argv += ["--warmup-passes", "0"]
    _top(*argv)
    return {"bench": json.loads(path.read_text()), "model": str(model), "note": None}
