"""Whole-run cost of `top train` against `top finetune` on the same schedule (CPU, MiniLM-L6).

Both commands run as whole `python -m top ...` child processes of this script, alternately and in a
rotating order, on the same model shape (the demo's MiniLM-L6-H384), the same 512 training sentences
(the demo's Rotten Tomatoes snippets), the same 3 epochs of batch 32 at length 64 and the same
evaluation schedule (the dev set scored once per epoch). `top train` runs with the teacher cache (the
default) and with ``--no-teacher-cache``; each is also timed with ``--attention eager`` where the fused
kernel is available, so the two changes are measured apart. The goal: a ToP run costs at most 1.10x the
fine-tune run.

`top train` needs a fine-tuned teacher: one untimed `top finetune` run makes it. Afterwards one
`top train` runs under cProfile (untimed) to say where its time goes.

Writes OUT/run_cost.json and OUT/run_cost.md and prints the table.

    python scripts/bench_run_cost.py --output-dir bench [--rounds 3]
"""

import argparse
import pstats
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Tuple

from top.data import assets as demo_assets
from top.method.modeling import sdpa_available
from top.runtime import machine
from top.settings.common import SEED
from top.storage.io import atomic_write_json, atomic_write_text

GOAL = 1.10
SCHEDULE = {"train_sentences": 512, "dev_sentences": 256, "epochs": 3, "batch_size": 32, "max_seq_length": 64}
# ToP's settings: the demo's (top/commands/demo_recipe.py RECIPE), over the bench's schedule.
TRAIN_FLAGS = [
    "--target-sparsity", "0.5", "--prune-location", "1,2,3,4,5", "--bin-num", "16", "--topk", "10",
    "--warmup-epochs", "1", "--layer-gate-init", "10", "--learning-rate", "5e-5", "--reg-learning-rate", "0.05",
]
# The profile's rows: cumulative seconds of the functions (file suffix, name; None: any) in a cProfile run.
PROFILE_ROWS = [
    ("read data, tokenise", [("top/training/loop.py", "encode")]),
    ("load student and teacher", [("top/training/loop.py", "load_models")]),
    ("build the teacher cache", [("top/training/teacher_cache.py", None)]),
    ("training steps", [("top/training/step.py", "__call__")]),
    ("  backward", [("torch/_tensor.py", "backward")]),
    ("  optimiser steps", [("torch/optim/adamw.py", "step"), ("torch/optim/adam.py", "step")]),
    ("  clip gradients", [("torch/nn/utils/clip_grad.py", "clip_grad_norm_")]),
    ("  ToP loss (KD, Lagrangian, rank distillation)", [("top/training/step.py", "loss")]),
    ("  gate sample", [("top/training/step.py", "sample_gates")]),
    ("dev evaluations", [("top/training/loop.py", "evaluate_student")]),
    ("writing last/ and best/", [("top/training/checkpoints.py", "save_last"),
                                 ("top/training/checkpoints.py", "write_pruned")]),
]
STEP_PARTS = ("  backward", "  optimiser steps", "  clip gradients", "  ToP loss (KD, Lagrangian, rank distillation)",
              "  gate sample")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", default="bench")
    parser.add_argument("--rounds", type=int, default=3, help="timed runs of each command, alternating")
    parser.add_argument("--no-profile", action="store_true", help="skip the cProfile run")
    parser.add_argument("--eager-too", action="store_true",
                        help="also time `top train --attention eager` (where the fused kernel exists)")
    parser.add_argument("--seed", type=int, default=SEED)
    return parser.parse_args(argv)


def prepare(work: Path, seed: int) -> Dict[str, Path]:
    """The data split (the demo's snippets) and the fine-tuned teacher (one untimed `top finetune`)."""
    snippets = demo_assets.read_snippets(demo_assets.snippets_file())
    train, dev = demo_assets.make_split(snippets, SCHEDULE["train_sentences"], SCHEDULE["dev_sentences"], seed, 0.5)
    paths = demo_assets.write_split(work / "data", train, dev, {"seed": seed, "purpose": "bench_run_cost"})
    paths["model"] = demo_assets.model_dir()
    teacher = work / "teacher"
    if not (teacher / "last" / "config.json").is_file():
        run_command(finetune_argv(paths, teacher, epochs=1))
    paths["teacher"] = teacher / "last"
    return paths


def common_flags(paths: Dict[str, Path], out: Path, epochs: int) -> List[str]:
    steps_per_epoch = -(-SCHEDULE["train_sentences"] // SCHEDULE["batch_size"])
    return [
        "--train-file", str(paths["train"]), "--validation-file", str(paths["dev"]),
        "--epochs", str(epochs), "--batch-size", str(SCHEDULE["batch_size"]),
        "--max-seq-length", str(SCHEDULE["max_seq_length"]), "--eval-steps", str(steps_per_epoch),
        "--device", "cpu", "--no-progress", "--output-dir", str(out),
    ]


def finetune_argv(paths: Dict[str, Path], out: Path, epochs: int = SCHEDULE["epochs"]) -> List[str]:
    return ["finetune", "--model", str(paths["model"]), "--learning-rate", "5e-5", *common_flags(paths, out, epochs)]


def train_argv(paths: Dict[str, Path], out: Path, *extra: str) -> List[str]:
    teacher = str(paths["teacher"])
    return ["train", "--model", teacher, "--teacher", teacher, *TRAIN_FLAGS, *extra,
            *common_flags(paths, out, SCHEDULE["epochs"])]


def run_command(argv: List[str], prefix: Tuple[str, ...] = ("-m", "top")) -> float:
    """Seconds one `python -m top ...` child takes, start-up and imports included."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, *prefix, *argv], stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"`top {' '.join(argv)}` failed with exit status {done.returncode}")
    return seconds


def variants(eager_too: bool) -> Dict[str, List[str]]:
    """The `top train` variants timed against `top finetune`, by name."""
    found = {"train (teacher cache)": [], "train (no teacher cache)": ["--no-teacher-cache"]}
    if eager_too:
        found["train (teacher cache, eager attention)"] = ["--attention", "eager"]
        found["train (no cache, eager attention: the original's cost)"] = ["--no-teacher-cache", "--attention", "eager"]
    return found


def time_rounds(paths: Dict[str, Path], work: Path, rounds: int, eager_too: bool) -> Dict[str, List[float]]:
    """Each command ``rounds`` times, alternating, the order rotated every round."""
    commands = {"finetune": lambda out: finetune_argv(paths, out)}
    for name, extra in variants(eager_too).items():
        commands[name] = lambda out, extra=extra: train_argv(paths, out, *extra)
    names = list(commands)
    seconds: Dict[str, List[float]] = {name: [] for name in names}
    for round_index in range(rounds):
        shift = round_index % len(names)
        for position, name in enumerate(names[shift:] + names[:shift]):
            out = work / "runs" / f"r{round_index}-{position}"
            seconds[name].append(run_command(commands[name](out)))
            print(f"round {round_index + 1}/{rounds}: {name} {seconds[name][-1]:.1f} s", flush=True)
    return seconds


def profile(paths: Dict[str, Path], work: Path) -> List[Dict[str, object]]:
    """One `top train` (teacher cache, default attention) under cProfile: cumulative seconds by phase."""
    stats_file = work / "train.prof"
    total = run_command(train_argv(paths, work / "runs" / "profiled"),
                        ("-m", "cProfile", "-o", str(stats_file), "-m", "top"))
    stats = pstats.Stats(str(stats_file)).stats  # {(file, line, name): (cc, nc, tt, cumulative, callers)}

    def cumulative(targets) -> float:
        # A function calling itself counts once: the outermost call has the largest cumulative time.
        return max((v[3] for k, v in stats.items() for suffix, name in targets
                    if k[0].endswith(suffix) and (name is None or k[2] == name)), default=0.0)

    main_seconds = cumulative([("top/cli.py", "main")])
    found = {label: cumulative(targets) for label, targets in PROFILE_ROWS}
    found["  forward passes (the rest of the step)"] = found["training steps"] - sum(found[p] for p in STEP_PARTS)
    found["imports and start-up"] = total - main_seconds
    found["whole command (under cProfile)"] = total
    order = ["whole command (under cProfile)", "imports and start-up"] + [label for label, _ in PROFILE_ROWS[:4]]
    order += ["  forward passes (the rest of the step)", *STEP_PARTS] + [label for label, _ in PROFILE_ROWS[-2:]]
    return [{"phase": label, "seconds": round(found[label], 2), "share": round(found[label] / total, 3)}
            for label in order]


def summarise(seconds: Dict[str, List[float]]) -> Dict[str, Dict[str, float]]:
    base = statistics.median(seconds["finetune"])
    return {
        name: {"median_seconds": round(statistics.median(values), 2), "runs": [round(v, 2) for v in values],
               "ratio_to_finetune": round(statistics.median(values) / base, 3)}
        for name, values in seconds.items()
    }


def render(result: Dict[str, object]) -> str:
    lines = [
        f"Whole-run cost, {result['schedule_text']}; {result['machine_text']}.",
        "",
        "| command | median s | runs (s) | vs `top finetune` |",
        "|---|---:|---|---:|",
    ]
    for name, row in result["commands"].items():
        runs = ", ".join(f"{v:.1f}" for v in row["runs"])
        lines.append(f"| {name} | {row['median_seconds']:.1f} | {runs} | {row['ratio_to_finetune']:.2f}x |")
    lines.append("")
    lines.append(f"Goal: `top train` (teacher cache) <= {GOAL}x `top finetune`: {result['goal_verdict']}.")
    if result.get("profile"):
        lines += ["", "Where `top train` (teacher cache) spends its time (one run under cProfile, cumulative):", "",
                  "| phase | s | share |", "|---|---:|---:|"]
        lines += [f"| {r['phase']} | {r['seconds']:.1f} | {100 * r['share']:.0f}% |" for r in result["profile"]]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.output_dir)
    work = out / "run-cost-work"
    work.mkdir(parents=True, exist_ok=True)
    paths = prepare(work, args.seed)
    seconds = time_rounds(paths, work, args.rounds, args.eager_too and sdpa_available())
    commands = summarise(seconds)
    ratio = commands["train (teacher cache)"]["ratio_to_finetune"]
    description = machine.describe()
    result = {
        "goal": GOAL,
        "goal_met": ratio <= GOAL,
        "goal_verdict": f"{'met' if ratio <= GOAL else 'not met'} ({ratio:.2f}x)",
        "schedule": SCHEDULE,
        "schedule_text": "MiniLM-L6-H384, {train_sentences} training sentences, {epochs} epochs of batch "
                         "{batch_size} at length {max_seq_length}, dev ({dev_sentences}) scored every epoch".format(
                             **SCHEDULE),
        "machine": description,
        "machine_text": machine.one_line(description),
        "commands": commands,
        "train_flags": TRAIN_FLAGS,
    }
    if not args.no_profile:
        result["profile"] = profile(paths, work)
    atomic_write_json(out / "run_cost.json", result)
    text = render(result)
    atomic_write_text(out / "run_cost.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
