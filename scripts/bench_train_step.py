"""Step cost of `top train` against `top finetune` on the same batch (CPU, a small random BERT).

A ToP step adds to a fine-tune step the teacher's forward pass (no gradient), the gate sample,
the pruning inside the student's forward pass, the Lagrangian, the rank distillation and two
tiny optimisers. The goal: a ToP step costs at most 1.5x a fine-tune step. The ToP step is timed
twice: with the teacher run every step (`--no-teacher-cache`: `top_step_ms`, `ratio`) and with its
outputs handed in as the teacher cache hands them (the default: `top_step_cached_ms`, `ratio_cached`).

Both steps are the library's own: `top.training.step.ToPStep` (after pruning has started, a new step
index and so a new gate sample each call) and `top.training.finetune.finetune_step`, with optimisers built
by the library's own functions from the configs' defaults. They run on one fixed batch, alternating,
and are timed as medians over repeated steps. Writes OUT/train_step.json and prints one line.

    python scripts/bench_train_step.py --output-dir bench
"""

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import torch

from top.data import batching
from top.method.gates import TokenGates, default_prune_locations
from top.method.losses import default_rank_layers
from top.method.modeling import ToPClassifier, set_attention
from top.runtime import determinism, machine
from top.settings.common import SEED
from top.storage.io import atomic_write_json
from top.training import distributed
from top.training.config import PAPER_RECIPE, FinetuneConfig, TrainConfig
from top.training.finetune import build_optimizer, finetune_step
from top.training.step import PREPRUNING_STEPS, StepPlan, ToPStep, build_optimizers
from top.training.teacher_cache import CachedTeacherOutput

GOAL = 1.5
# Long enough that neither learning-rate schedule reaches 0 while timing.
SCHEDULE_STEPS = 10_000


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", default="bench")
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--intermediate", type=int, default=None, help="feed-forward width (default 4 x hidden)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=64, help="the batch's longest member (others shorter)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps of each kind (after 2 untimed)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--bin-num", type=int, default=50)
    parser.add_argument("--topk", type=int, default=20)
    parser.add_argument("--target-sparsity", type=float, default=0.5)
    parser.add_argument("--warmup-steps", type=int, default=10, help="of the target's ramp, from the first timed call")
    parser.add_argument("--task-length", type=int, default=128, help="the length sparsity is counted at")
    parser.add_argument("--seed", type=int, default=SEED)
    return parser.parse_args(argv)


def finetune_defaults() -> FinetuneConfig:
    """`top finetune`'s settings at their defaults, from its config itself."""
    return FinetuneConfig(model="unused", output_dir="unused", device="cpu")


def train_defaults() -> TrainConfig:
    """`top train`'s settings at their defaults, from its config itself (a paper task's recipe)."""
    return TrainConfig(model="unused", teacher="unused", output_dir="unused", device="cpu", **PAPER_RECIPE)


def small_bert_config(args):
    from transformers import BertConfig

    return BertConfig(
        vocab_size=30522,
        hidden_size=args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        intermediate_size=args.intermediate or 4 * args.hidden,
        num_labels=2,
    )


def fixed_batch(args, gen):
    lengths = torch.randint(args.max_length // 4, args.max_length + 1, (args.batch_size,), generator=gen)
    lengths[0] = args.max_length
    input_ids = torch.randint(1000, 30000, (args.batch_size, args.max_length), generator=gen)
    attention_mask = (torch.arange(args.max_length)[None, :] < lengths[:, None]).long()
    return {
        "input_ids": input_ids * attention_mask,
        "attention_mask": attention_mask,
        "token_type_ids": torch.zeros_like(input_ids),
        "labels": torch.randint(0, 2, (args.batch_size,), generator=gen),
    }


def median_ms(steps, repeats):
    """Median milliseconds of each step function; the kinds alternate, so drift hits both alike."""
    for step in steps:
        step()
        step()
    times = [[] for _ in steps]
    for _ in range(repeats):
        for step, kept in zip(steps, times):
            start = time.perf_counter()
            step()
            kept.append((time.perf_counter() - start) * 1000.0)
    return [statistics.median(kept) for kept in times]


def finetune_step_function(args, batch, dist):
    """`top finetune`'s step on the stock model with its default attention kernel, as it loads it."""
    from transformers import AutoModelForSequenceClassification

    flags = finetune_defaults()
    dense = AutoModelForSequenceClassification.from_config(small_bert_config(args)).train()
    optimizer, scheduler = build_optimizer(dense, flags, SCHEDULE_STEPS)

    def step():
        finetune_step(dense, optimizer, scheduler, batch, 1.0, flags.max_grad_norm, dist)

    return step


def top_step_function(args, batch, dist, cached: bool):
    """`top train`'s step once pruning runs: a fresh step index (so gate sample and ramp) per call.

    With ``cached`` the teacher's outputs come ready-made, as `top train` reads them from its cache
    (the lookup, about 0.3 ms, is left out); else the teacher runs every step (--no-teacher-cache).
    Both models are built with the command's default attention (--attention).
    """
    flags = train_defaults()
    locations = default_prune_locations(args.layers)
    config = small_bert_config(args)
    student = ToPClassifier.from_config(
        config, prune_locations=locations, attention=flags.attention
    ).train()
    teacher = ToPClassifier.from_config(
        small_bert_config(args), prune_locations=[], attention=flags.attention
    ).eval()
    teacher_out = None
    if cached:
        with torch.no_grad():
            out = teacher(**batching.model_inputs(batch), mode="faithful", probability_layers=[args.layers - 1])
        teacher_out = CachedTeacherOutput(out.logits, [out.importance[-1]])
    gates = TokenGates(locations, args.bin_num, layer_init=flags.layer_gate_init)
    config = dataclasses.replace(flags, target_sparsity=args.target_sparsity, topk=args.topk)
    plan = StepPlan(warmup_steps=args.warmup_steps, regression=False, task_length=args.task_length,
                    rank_layers=tuple(default_rank_layers(args.layers)))
    top_step = ToPStep(student, teacher, gates, build_optimizers(student, gates, config, SCHEDULE_STEPS, pruning=True),
                       config, plan, dist)
    index = [PREPRUNING_STEPS]

    def step():
        global_batch = len(batch["labels"])  # one process holds the whole global batch
        top_step(batch, index[0], 1.0, global_batch, teacher_out=teacher_out)
        index[0] += 1

    return step


def train_default_attention() -> str:
    """The attention `top train` builds its models with by default, as this stack resolves it."""
    from transformers import BertConfig

    flags = train_defaults()
    return set_attention(BertConfig(), flags.attention)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    determinism.seed_everything(args.seed)
    batch = fixed_batch(args, torch.Generator().manual_seed(args.seed))
    dist = distributed.Distributed()
    steps = [finetune_step_function(args, batch, dist), top_step_function(args, batch, dist, cached=False),
             top_step_function(args, batch, dist, cached=True)]
    finetune_ms, top_ms, cached_ms = median_ms(steps, args.steps)
    ratio = top_ms / finetune_ms
    result = {
        "finetune_step_ms": round(finetune_ms, 2),
        "top_step_ms": round(top_ms, 2),  # the teacher run every step (--no-teacher-cache)
        "ratio": round(ratio, 3),
        "top_step_cached_ms": round(cached_ms, 2),  # the teacher's outputs from the cache (the default)
        "ratio_cached": round(cached_ms / finetune_ms, 3),
        "goal": GOAL,
        "goal_met": ratio <= GOAL,
        "timed_steps": args.steps,
        "model": {"layers": args.layers, "hidden": args.hidden, "heads": args.heads,
                  "intermediate": args.intermediate or 4 * args.hidden},
        "attention": train_default_attention(),
        "batch_size": args.batch_size,
        "max_length": args.max_length,
        "bin_num": args.bin_num,
        "topk": args.topk,
        "threads": torch.get_num_threads(),
        "device": "cpu",
        "environment": determinism.environment_record(),
        "machine": machine.describe(),
    }
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "train_step.json", result)
    print(
        f"train step {cached_ms:.1f} ms with the teacher cache ({cached_ms / finetune_ms:.2f}x), "
        f"{top_ms:.1f} ms without, vs finetune step {finetune_ms:.1f} ms: {ratio:.2f}x "
        f"(goal <= {GOAL}x: {'met' if ratio <= GOAL else 'not met'}) -> {out / 'train_step.json'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
