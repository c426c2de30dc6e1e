"""``top train``: learn ToP's token-pruning gates for a fine-tuned dense model (``top.train``).

Exit status: 0 when best/ was written; 2 for bad input (one sentence on stderr); 3 when the run
finished but no evaluation qualified for best/ (one sentence names the flags that move it onto the
target).
"""

from __future__ import annotations

import argparse

import top
from top.commands.flags import add_config_arguments, config_from_args
from top.data.tasks import CUSTOM_PRESET
from top.training.best import levers
from top.training.config import NO_BEST_EXIT, TrainConfig

EPILOG = (
    "For your own data (--train-file, --validation-file) the recipe flags default to [custom] in "
    "top/data/tasks.toml, a recipe that lands on --target-sparsity on short schedules too: adaptive control, a "
    f"warm-up of {CUSTOM_PRESET.warmup_fraction:g} of the run, best/ nearest the target; the paper's tasks keep "
    "the paper's. Exit status: 0 with best/ written; 2 for bad input; 3 when no evaluation qualified for best/ "
    "(the run's last/, log.jsonl and summary.json are kept)."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    add_config_arguments(parser, TrainConfig)


def run(args: argparse.Namespace) -> int:
    result = top.train(config_from_args(TrainConfig, args))
    summary = result.summary
    if not summary:  # not the main process of a distributed run
        return 0
    best, target, epsilon = summary["best"], summary["target_sparsity"], summary["sparsity_epsilon"]
    goal, final = f"the target sparsity {target}", summary["final_expected_sparsity"]
    if "target_speedup" in summary:
        goal = (f"the target speedup {summary['target_speedup']:g}x (latency sparsity "
                f"{summary['target_latency_sparsity']:.4f})")
        target, final = summary["target_latency_sparsity"], summary["final_expected_latency_sparsity"]
    if best["score"] is None:
        last = "pruning never started" if final is None else f"the last was {final:.4f}"
        print(
            f"No evaluation reached {goal} within {epsilon} ({last}; see {result.output_dir / 'log.jsonl'}), so "
            f"best/ was not written and top train exits with {NO_BEST_EXIT}; to land on it, try "
            f"{levers(final, target, result.config.sparsity_control)}.",
        )
        return NO_BEST_EXIT
    if result.config.task is None:  # your own data has no task length: the reduction at the same inputs
        reduction = f"FLOPs reduction {best['flops_reduction_same_inputs']:.2f}x at the same inputs"
    else:
        reduction = f"FLOPs reduction {best['flops_reduction']:.2f}x against dense at the task length"
    print(f"best {summary['metric']} {best['score']:.4f} at step {best['step']}: expected sparsity "
          f"{best['expected_sparsity']:.4f}, {reduction}"
          + (f", predicted speedup {best['predicted_speedup']:.2f}x" if best.get("predicted_speedup") else "")
          + f" -> {result.best_dir}")
    return 0
