"""``top train``: learn ToP's token-pruning gates for a fine-tuned dense model (``top.train``).

Exit status: 0 when best/ was written; 2 for bad input (one sentence on stderr); 3 when the run
finished but no evaluation qualified for best/ (the levers are named on stderr).
"""

from __future__ import annotations

import argparse

import top
from top.commands.flags import add_config_arguments, config_from_args
from top.training.config import NO_BEST_EXIT, TrainConfig

EPILOG = (
    "exit status: 0 with best/ written; 2 for bad input; 3 when no evaluation qualified for best/ "
    "(the run's last/ and log.jsonl are kept)"
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
    goal = f"the target sparsity {target}"
    if "target_speedup" in summary:
        goal = (f"the target speedup {summary['target_speedup']:g}x (latency sparsity "
                f"{summary['target_latency_sparsity']:.4f})")
    if best["score"] is None:
        print(
            f"No evaluation reached {goal} within {epsilon}, so best/ was not written "
            f"(see {result.output_dir / 'log.jsonl'}); to reach it, train for more steps, raise "
            "--reg-learning-rate, shorten --warmup-epochs or use --sparsity-control adaptive.",
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
