"""Step cost of `top train` against `top finetune` on the same batch (CPU, a small random BERT).

A ToP step adds to a fine-tune step the teacher's forward pass (no gradient), the gate sample,
the pruning inside the student's forward pass, the Lagrangian, the rank distillation and two
tiny optimisers. The goal: a ToP step costs at most 1.5x a fine-tune step.

Both steps are built from the same library calls `top/finetune.py` and `top/train.py` make
(after pruning has started), on one fixed batch, and timed as medians over repeated steps.
Writes OUT/train_step.json and prints one line.

    python scripts/bench_train_step.py --output-dir bench
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from top import determinism, flops, loop  # noqa: E402
from top.gates import TokenGates  # noqa: E402
from top.io import atomic_write_json  # noqa: E402
from top.losses import lagrangian_loss, logit_distillation_loss, rank_distillation_loss  # noqa: E402
from top.modeling import ToPForSequenceClassification, default_prune_locations  # noqa: E402

GOAL = 1.5


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", default="bench")
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=64, help="the batch's longest member (others shorter)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps of each kind (after 2 untimed)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=57)
    return parser.parse_args(argv)


def small_bert_config(args):
    from transformers import BertConfig

    return BertConfig(
        vocab_size=30522,
        hidden_size=args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        intermediate_size=4 * args.hidden,
        num_labels=2,
    )


def small_bert(args):
    """The ToP wrapper (eager attention: ranking needs the attention probabilities)."""
    return ToPForSequenceClassification.from_config(small_bert_config(args))


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


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    determinism.seed_everything(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    batch = fixed_batch(args, gen)
    inputs = loop.model_inputs(batch)

    # --- fine-tune step: the dense model's own loss, clipping, AdamW, the schedule.
    # As `top finetune` loads it: the stock model with its default attention kernel.
    from transformers import AutoModelForSequenceClassification

    dense = AutoModelForSequenceClassification.from_config(small_bert_config(args)).train()
    optimizer = torch.optim.AdamW(loop.weight_parameter_groups(dense, 2e-5, 0.0))
    scheduler = loop.linear_schedule(optimizer, 10_000)

    def finetune_step():
        output = dense(**inputs, labels=batch["labels"])
        output.loss.backward()
        torch.nn.utils.clip_grad_norm_(dense.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        dense.zero_grad(set_to_none=True)

    # --- ToP step: teacher forward, sampled gates, pruned student, KD + Lagrangian + rank loss.
    locations = default_prune_locations(args.layers)
    student = small_bert(args).train()
    teacher = small_bert(args).eval()
    gates = TokenGates(locations, 50)
    weights = torch.optim.AdamW(loop.weight_parameter_groups(student, 1e-5, 0.0))
    gate_optimizer = torch.optim.AdamW(gates.gate_parameters(), lr=0.02, weight_decay=0.0)
    lambda_optimizer = torch.optim.AdamW(gates.lambda_parameters(), lr=0.02, weight_decay=0.0, maximize=True)
    top_scheduler = loop.linear_schedule(weights, 10_000)

    def top_step():
        with torch.no_grad():
            teacher_out = teacher(**inputs, mode="faithful")
        token_z, pruner_z = gates.sample()
        student_out = student(**inputs, mode="train", token_z=token_z, pruner_z=pruner_z)
        loss = logit_distillation_loss(student_out.logits, teacher_out.logits, 2.0)
        token_score, pruner_score = gates.keep_probabilities()
        relative, _ = flops.relative_macs(
            token_score, pruner_score, locations, student.config, batch["attention_mask"], 128
        )
        expected = 1 - relative.mean()
        loss = loss + lagrangian_loss(expected, 0.5, gates.lambda_1, gates.lambda_2)
        rank = rank_distillation_loss(
            student_out.importance, teacher_out.importance[-1], batch["attention_mask"][:, 1:], 20
        )
        loss = loss + 0.01 * rank
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        weights.step()
        gate_optimizer.step()
        lambda_optimizer.step()
        top_scheduler.step()
        gates.constrain_()
        student.zero_grad(set_to_none=True)
        gates.zero_grad(set_to_none=True)

    finetune_ms, top_ms = median_ms([finetune_step, top_step], args.steps)
    ratio = top_ms / finetune_ms
    result = {
        "finetune_step_ms": round(finetune_ms, 2),
        "top_step_ms": round(top_ms, 2),
        "ratio": round(ratio, 3),
        "goal": GOAL,
        "goal_met": ratio <= GOAL,
        "model": {"layers": args.layers, "hidden": args.hidden, "heads": args.heads},
        "batch_size": args.batch_size,
        "max_length": args.max_length,
        "threads": torch.get_num_threads(),
        "device": "cpu",
        "environment": determinism.environment_record(),
    }
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "train_step.json", result)
    print(
        f"train step {top_ms:.1f} ms vs finetune step {finetune_ms:.1f} ms: {ratio:.2f}x "
        f"(goal <= {GOAL}x: {'met' if ratio <= GOAL else 'not met'}) -> {out / 'train_step.json'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
