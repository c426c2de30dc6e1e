"""Prune to a measured speedup, then measure it: calibrate -> train --target-speedup -> bench, per shape and batch.

For each shape and batch size it runs ``top calibrate`` (the latency model of this machine at that
batch size), ``top train --latency-model ... --target-speedup S`` and ``top bench`` of the best/ it
wrote on the same file and batch size; and, once per shape, a FLOPs-targeted ``top train
--target-sparsity 1 - 1/S`` (a FLOPs reduction of S, what a user who equates FLOPs with time would
ask for), benched at every batch size. The table: shape, batch, target, predicted, measured, the
FLOPs-targeted run's measured speedup, and each run's FLOPs ratio.

Shapes:
- ``minilm``: the demo's real model and data (top/data/assets.py): MiniLM-L6-H384, fine-tuned briefly
  on the Rotten Tomatoes snippets of vaderSentiment's sdist first (``top finetune``);
- ``bert-base``: bert-base-uncased's shape with random weights and random sentences of SST-2-like
  lengths (enough for timing: the gates learn the constraint whatever the task).

Training schedules are short on purpose: the speedup is what is measured, not the accuracy.

A target that compact inference reaches without pruning (at batch 1 its prepacked kernels alone
can be faster than dense by more than the target), or that pruning cannot reach, is refused by
``top train`` in one sentence that names the predicted figure; the table shows it, and that batch
size can be run again with another ``--target-speedup`` (``--batch-sizes 1 --target-speedup X``).

    python scripts/bench_latency_target.py --output-dir outputs/latency-target            # the figures
    python scripts/bench_latency_target.py --output-dir /tmp/smoke --smoke                # the pipeline only

Writes OUT/results.json and OUT/table.md (and every run's files under OUT/).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import random
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

import top
from top.data import assets
from top.storage.io import atomic_write_json, atomic_write_text


@dataclasses.dataclass(frozen=True)
class Settings:
    """The schedule and sizes of one invocation (``--smoke`` makes every one small)."""

    n_train: int = 2000
    n_dev: int = 512
    finetune_steps: int = 120
    top_steps: int = 150
    train_batch_size: int = 16
    warmup_fraction: float = 0.3  # of the ToP steps, the target's ramp
    reg_learning_rate: float = 0.1
    sparsity_epsilon: float = 0.02  # best/: the evaluation nearest the target within this band
    calibrate_repeats: int = 5
    calibrate_batches: int = 4
    calibrate_profiles: int = 8
    bench_passes: int = 5
    bench_examples: Dict[int, int] = dataclasses.field(default_factory=lambda: {1: 128})
    small_bert: bool = False  # a bert-base-shaped model 256 wide and 4 deep instead (smoke runs)


# Small enough to check the pipeline in minutes; a band wide enough that short runs write best/ for the bench.
SMOKE = Settings(n_train=192, n_dev=64, finetune_steps=6, top_steps=40, train_batch_size=16, warmup_fraction=0.2,
                 reg_learning_rate=0.3, sparsity_epsilon=0.3, calibrate_repeats=3, calibrate_batches=2,
                 calibrate_profiles=4, bench_passes=5, bench_examples={1: 16}, small_bert=True)
MAX_SEQ_LENGTH = 128


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", default="outputs/latency-target")
    parser.add_argument("--shapes", nargs="+", default=["minilm", "bert-base"], choices=["minilm", "bert-base"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[32, 1])
    parser.add_argument("--target-speedup", type=float, default=1.6)
    parser.add_argument("--smoke", action="store_true",
                        help="tiny schedules and files, a small bert: checks that the pipeline runs, measures nothing")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


# ----------------------------------------------------------------------------------------------
# The models and their data


def write_jsonl(path: Path, rows: List[Dict[str, Any]]) -> Path:
    atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in rows))
    return path


def minilm_world(work: Path, settings: Settings, seed: int) -> Dict[str, Path]:
    """MiniLM fine-tuned briefly on the snippets: the dense model every run starts from, and its data."""
    snippets = assets.read_snippets(assets.snippets_file())
    train, dev = assets.make_split(snippets, settings.n_train, settings.n_dev, seed, 0.5)
    paths = {
        "train": write_jsonl(work / "train.jsonl", [{"sentence": s.text, "label": int(s.rating > 0)} for s in train]),
        "dev": write_jsonl(work / "dev.jsonl", [{"sentence": s.text, "label": int(s.rating > 0)} for s in dev]),
    }
    teacher = work / "teacher"
    if not (teacher / "best" / "config.json").is_file():
        top.finetune(top.FinetuneConfig(
            model=str(assets.model_dir()), train_file=str(paths["train"]), validation_file=str(paths["dev"]),
            output_dir=str(teacher), max_steps=settings.finetune_steps, batch_size=32,
            max_seq_length=MAX_SEQ_LENGTH, learning_rate=5e-5, no_progress=True, seed=seed))
    paths["model"] = teacher / "best"
    return paths


def bert_base_world(work: Path, settings: Settings, seed: int) -> Dict[str, Path]:
    """bert-base's shape (or a small one), random weights, a word-piece vocabulary of made-up words, and random
    sentences whose lengths follow SST-2's (log-normal, mean ~27 tokens)."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    model_dir = work / "model"
    words = [f"w{i}" for i in range(30522 - 5)]
    if not (model_dir / "config.json").is_file():
        model_dir.mkdir(parents=True, exist_ok=True)
        vocab = work / "vocab.txt"
        vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words) + "\n")
        shape = dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024) \
            if settings.small_bert else {}
        torch.manual_seed(seed)
        model = BertForSequenceClassification(BertConfig(vocab_size=30522, num_labels=2, **shape))
        model.save_pretrained(str(model_dir))
        BertTokenizer(str(vocab)).save_pretrained(str(model_dir))
    rng = random.Random(seed)

    def sentences(n):
        rows = []
        for _ in range(n):
            length = min(MAX_SEQ_LENGTH - 2, max(1, int(round(rng.lognormvariate(math.log(25.0) - 0.1, 0.45)))))
            rows.append({"sentence": " ".join(rng.choice(words) for _ in range(length)), "label": rng.randint(0, 1)})
        return rows

    return {"model": model_dir, "train": write_jsonl(work / "train.jsonl", sentences(settings.n_train)),
            "dev": write_jsonl(work / "dev.jsonl", sentences(settings.n_dev))}


# ----------------------------------------------------------------------------------------------
# The runs


def train_run(world: Dict[str, Path], out: Path, settings: Settings, seed: int, **target: Any) -> Dict[str, Any]:
    """``top train`` with ``target`` (``target_speedup`` and ``latency_model``, or ``target_sparsity``)."""
    steps_per_epoch = math.ceil(settings.n_train / settings.train_batch_size)
    config = top.TrainConfig(
        model=str(world["model"]), teacher=str(world["model"]), train_file=str(world["train"]),
        validation_file=str(world["dev"]), output_dir=str(out), max_steps=settings.top_steps,
        warmup_epochs=settings.warmup_fraction * settings.top_steps / steps_per_epoch,
        reg_learning_rate=settings.reg_learning_rate, sparsity_control="adaptive", best_rule="nearest-target",
        sparsity_epsilon=settings.sparsity_epsilon, eval_steps=10, batch_size=settings.train_batch_size,
        max_seq_length=MAX_SEQ_LENGTH, device="cpu", no_progress=True, seed=seed, bin_num=50, topk=20, **target)
    started = time.perf_counter()
    result = top.train(config)
    best = result.summary.get("best", {})
    return {"best_dir": str(result.best_dir) if result.best_dir else None, "seconds": time.perf_counter() - started,
            "expected_sparsity": best.get("expected_sparsity"), "predicted_speedup": best.get("predicted_speedup"),
            "summary": result.summary}


def bench_run(checkpoint: str, world: Dict[str, Path], batch_size: int, output: Path,
              settings: Settings) -> Dict[str, Any]:
    record = top.bench(top.BenchConfig(
        checkpoint=checkpoint, validation_file=str(world["dev"]), max_seq_length=MAX_SEQ_LENGTH,
        batch_size=batch_size, device="cpu", passes=settings.bench_passes, no_memory=True, output=str(output),
        max_examples=settings.bench_examples.get(batch_size))).record
    dense = record["baselines"]["dense_dynamic"]
    return {"measured_speedup": dense["speedup"], "flops_ratio": dense["flops_ratio"],
            "predicted_speedup": record.get("predicted_speedup"), "target_speedup": record.get("target_speedup"),
            "conditions_differ": record.get("target_conditions_differ", []), "bench": str(output)}


def calibrate_run(world: Dict[str, Path], batch_size: int, output: Path, settings: Settings,
                  seed: int) -> Dict[str, Any]:
    return top.calibrate(top.CalibrateConfig(
        model=str(world["model"]), validation_file=str(world["dev"]), max_seq_length=MAX_SEQ_LENGTH,
        batch_size=batch_size, device="cpu", repeats=settings.calibrate_repeats, max_batches=settings.calibrate_batches,
        profiles=settings.calibrate_profiles, seed=seed, output=str(output))).record


def guarded(what: str, run, *args, **kwargs) -> Dict[str, Any]:
    """``run(...)``, or the one sentence of the UserError it raised (the table shows it; the next run goes on)."""
    try:
        return run(*args, **kwargs)
    except top.UserError as error:
        print(f"{what}: {error}", file=sys.stderr)
        return {"error": str(error)}


def shape_rows(shape: str, world: Dict[str, Path], out: Path, args, settings: Settings) -> List[Dict[str, Any]]:
    target = args.target_speedup
    flops = guarded(f"{shape} FLOPs-targeted run", train_run, world, out / "flops-run", settings, args.seed,
                    target_sparsity=round(1.0 - 1.0 / target, 4))
    rows = []
    for batch_size in args.batch_sizes:
        row: Dict[str, Any] = {"shape": shape, "batch_size": batch_size, "target_speedup": target}
        latency_file = out / f"latency-b{batch_size}.json"
        calibrated = guarded(f"{shape} calibrate b{batch_size}", calibrate_run, world, batch_size, latency_file,
                             settings, args.seed)
        row["calibration"] = {k: calibrated.get(k) for k in ("per_layer_ms", "measured_unpruned_speedup", "seconds",
                                                            "repeat_spread", "error")}
        if "compact" in calibrated:
            row["calibration"]["held_back_error"] = calibrated["compact"]["fit_error"]["held_back"]
        run = {"error": calibrated["error"]} if "error" in calibrated else guarded(
            f"{shape} latency run b{batch_size}", train_run, world, out / f"latency-run-b{batch_size}", settings,
            args.seed, latency_model=str(latency_file), target_speedup=target)
        row["latency_run"] = {k: v for k, v in run.items() if k != "summary"}
        if run.get("best_dir"):
            row["latency_bench"] = guarded(f"{shape} bench b{batch_size}", bench_run, run["best_dir"], world,
                                           batch_size, out / f"bench-latency-b{batch_size}.json", settings)
        if flops.get("best_dir"):
            row["flops_bench"] = guarded(f"{shape} FLOPs bench b{batch_size}", bench_run, flops["best_dir"], world,
                                         batch_size, out / f"bench-flops-b{batch_size}.json", settings)
        row["flops_run"] = {k: v for k, v in flops.items() if k != "summary"}
        rows.append(row)
        print(table([row]), flush=True)
    return rows


def cell(value: Optional[float], text: str = "{:.2f}x") -> str:
    return "-" if value is None else text.format(value)


def table(rows: List[Dict[str, Any]]) -> str:
    lines = ["| shape | batch | target | predicted | measured | measured / target | FLOPs ratio | "
             "FLOPs-targeted run: measured (FLOPs ratio) | held-back fit error |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |"]
    for row in rows:
        bench = row.get("latency_bench", {})
        flops = row.get("flops_bench", {})
        held = row.get("calibration", {}).get("held_back_error") or {}
        measured = bench.get("measured_speedup")
        note = bench.get("error") or row.get("latency_run", {}).get("error") or row.get("calibration", {}).get("error")
        lines.append("| {} | {} | {:.2f}x | {} | {} | {} | {} | {} | {} |".format(
            row["shape"], row["batch_size"], row["target_speedup"], cell(bench.get("predicted_speedup")),
            cell(measured) if not note else "failed: " + note[:80],
            cell(None if measured is None else measured / row["target_speedup"], "{:.0%}"),
            cell(bench.get("flops_ratio")),
            "-" if not flops.get("measured_speedup") else "{:.2f}x ({:.2f}x)".format(flops["measured_speedup"],
                                                                                       flops["flops_ratio"]),
            cell(held.get("median_relative_error"), "{:.1%}")))
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    settings = SMOKE if args.smoke else Settings()
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    rows = []
    for shape in args.shapes:
        work = out / shape
        work.mkdir(parents=True, exist_ok=True)
        world = (minilm_world if shape == "minilm" else bert_base_world)(work, settings, args.seed)
        rows += shape_rows(shape, world, work, args, settings)
    from top.runtime import machine

    text = ("Prune to a measured speedup on {} ({} threads): target {:g}x over dense with dynamic padding{}\n\n"
            .format(machine.cpu_name(), torch.get_num_threads(), args.target_speedup,
                    " (smoke settings: these figures mean nothing)" if args.smoke else "") + table(rows))
    atomic_write_text(out / "table.md", text)
    atomic_write_json(out / "results.json", {"rows": rows, "settings": dataclasses.asdict(settings),
                                             "target_speedup": args.target_speedup, "smoke": args.smoke,
                                             "seconds": round(time.perf_counter() - started, 1)})
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
