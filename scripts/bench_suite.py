"""`nox -s bench`: `top bench` on bert-base-shaped checkpoints it builds itself, plus a plot.

For each task (CoLA-like, MNLI-like) it writes, in the published checkpoint layout, a model
with bert-base shapes and random weights, and 0/1 gates at prune locations 2..11 that prune
about as much as the paper's checkpoints (token sparsity ~0.43 for CoLA, ~0.5 for MNLI; counted
exactly on the synthetic dev set). The dev sets are synthetic with the tasks' length
distributions (CoLA: single sentences, mean ~11 tokens, task length 64; MNLI: pairs, mean ~39,
task length 128). For each batch size the dev file holds a few batches drawn from across the
length-sorted full-size dev set, so the sorted batches `top bench` times are those a full dev
set would give, at a fraction of the time.

A third checkpoint, ``minilm``, has the demo's MiniLM shape (6 layers, 384 wide, 12 heads; gates
at locations 1..5 reaching the demo's token sparsity ~0.49, SST-2-like single sentences of mean
~27 tokens) and is timed at batch 32. A fourth, ``news512``, is bert-base at 512 tokens on
20News-like lengths (around the original's average of 551, so most are cut at 512), where
attention's share is largest.

Writes bench/<task>-b<batch>.json, bench/summary.json, bench/summary.md and bench/speedup.png;
then (unless ``--no-training``) the training benches: scripts/bench_train_step.py (one step of
each command) and scripts/bench_run_cost.py (whole `top train` runs against `top finetune` runs).

With ``--runtime onnxruntime`` it times the exported graphs instead (`top bench --runtime
onnxruntime`) and writes bench/<task>-b<batch>-onnx.json and bench/summary-onnx.{md,json}, with
the weight-read floor. The goals, read from scripts/bench_goals.toml, are judged per row in the
summaries.
"""

import argparse
import math
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import torch

from top.data.files import Example
from top.data.glue import write_glue_tsv
from top.data.tasks import Task, get_task, read_toml
from top.evaluation.bench import RUNTIMES, BenchConfig, bench
from top.method.checkpoint import save_checkpoint
from top.method.compact import survivor_table
from top.method.flops import model_macs
from top.method.gates import default_prune_locations
from top.storage.io import atomic_write_json, atomic_write_text

GOALS_FILE = Path(__file__).with_name("bench_goals.toml")
# name -> GLUE task (length, dev-set size, pairs: tasks.toml), mean tokens incl. special ones,
# target token sparsity, and for a shape other than bert-base, its config and prune locations
MINILM = dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536)
TASKS = {
    "cola": {"task": "cola", "mean_tokens": 11.0, "sparsity": 0.43},
    "mnli": {"task": "mnli", "mean_tokens": 39.0, "sparsity": 0.50},
    "minilm": {"task": "sst2", "mean_tokens": 27.0, "sparsity": 0.49, "shape": MINILM,
               "locations": [1, 2, 3, 4, 5], "bin_num": 16, "batch_sizes": [32]},
    # 20News-like at 512: lengths around the original's average of 551, so most inputs are cut at 512
    # (mean ~450 kept); fewer timed batches, each being long. 64 bins place the gates as finely as the
    # preset's 512 would here and keep the search for them quick.
    "news512": {"task": "20news", "mean_tokens": 551.0, "sparsity": 0.5, "bin_num": 64,
                "timed_batches": {1: 8, 8: 2, 32: 1}},
}
BATCHES_TIMED = {1: 16, 8: 4, 32: 3}  # batches per batch size in the timed dev file


def read_goals(path: Path = GOALS_FILE) -> Dict:
    return read_toml(path)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", default="bench")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8, 32])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--passes", type=int, default=5)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--small", action="store_true", help="a small model (hidden 256, 4 layers) for a smoke run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runtime", default="torch", choices=RUNTIMES,
                        help="onnxruntime: time the exported pruned graph against the same weights exported dense")
    parser.add_argument("--timed-batches", type=int, default=None,
                        help=f"batches per batch size in the timed dev file (default: {BATCHES_TIMED})")
    parser.add_argument("--no-training", action="store_true",
                        help="skip the training benches (bench_train_step.py, bench_run_cost.py)")
    return parser.parse_args(argv)


# ----------------------------------------------------------------------------------------------
# Synthetic data


def synthetic_lengths(spec: Dict, task: Task, gen: torch.Generator) -> List[int]:
    """Token counts (with [CLS]/[SEP]) of a full-size dev set: log-normal around the task's mean."""
    sigma = 0.45
    mu = math.log(spec["mean_tokens"]) - sigma ** 2 / 2
    raw = torch.exp(mu + sigma * torch.randn(task.dev_size, generator=gen))
    low = 5 if task.is_pair else 3
    return raw.round().clamp(low, task.task_length).long().tolist()


def make_example(length: int, pairs: bool, words: List[str], gen: torch.Generator) -> Example:
    def sentence(n):
        return " ".join(words[int(i)] for i in torch.randint(0, len(words), (max(n, 1),), generator=gen))

    if not pairs:
        return Example(sentence(length - 2), None, int(torch.randint(0, 2, (1,), generator=gen)))
    body = length - 3  # [CLS] a [SEP] b [SEP]
    first = max(1, int(round(body * 0.7)))
    return Example(sentence(first), sentence(body - first), int(torch.randint(0, 3, (1,), generator=gen)))


def timed_subset(lengths: List[int], batch_size: int, n_batches: int) -> List[int]:
    """Lengths of ``n_batches`` length-sorted batches spread evenly across the full dev set."""
    ordered = sorted(lengths, reverse=True)
    batches = [ordered[i : i + batch_size] for i in range(0, len(ordered) - batch_size + 1, batch_size)]
    picks = [batches[int((k + 0.5) * len(batches) / n_batches)] for k in range(n_batches)]
    return [n for batch in picks for n in batch]


# ----------------------------------------------------------------------------------------------
# The checkpoint


def gates_for_sparsity(lengths: List[int], config, bin_num: int, locations: List[int], target: float):
    """0/1 gates closing the lowest-ranked bins, as the paper's checkpoints do, reaching ``target``.

    Sparsity is ``1 - compact MACs / dense MACs`` on the unpadded examples, counted exactly.
    Bins close evenly over the locations, then one more at a time from the first location on,
    until the target is reached.
    """
    layers = config.num_hidden_layers
    full = torch.tensor(lengths, dtype=torch.long)[:, None].expand(-1, layers)
    dense = model_macs(full, config).double().sum()

    def sparsity(closed: List[int]) -> float:
        token_z = torch.ones(len(locations), bin_num)
        for row, count in enumerate(closed):
            if count:
                token_z[row, bin_num - count :] = 0.0
        table = survivor_table(token_z, torch.ones(len(locations)), max(lengths))
        kept = []
        for n in lengths:
            row, current = [], n
            for layer in range(layers):
                if layer in locations:
                    current = 1 + table[locations.index(layer)][current - 1]
                row.append(current)
            kept.append(row)
        return 1.0 - float(model_macs(torch.tensor(kept), config).double().sum() / dense), token_z

    closed = [0] * len(locations)
    best = sparsity(closed)
    for step in range(bin_num * len(locations)):
        if best[0] >= target:
            break
        closed[step % len(locations)] += 1
        best = sparsity(closed)
    return best[1], best[0]


def build_checkpoint(path: Path, task_name: str, lengths: List[int], small: bool, seed: int):
    from transformers import BertConfig, BertTokenizer

    spec = TASKS[task_name]
    task = get_task(spec["task"])
    vocab_size = 30522
    words = [f"w{i}" for i in range(vocab_size - 5)]
    path.parent.mkdir(parents=True, exist_ok=True)
    vocab_file = path.parent / (path.name + "-vocab.txt")
    vocab_file.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words) + "\n")
    tokenizer = BertTokenizer(str(vocab_file))
    shape = spec.get("shape", {})
    if small:
        shape = dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024)
    config = BertConfig(vocab_size=vocab_size, num_labels=task.num_labels, **shape)
    locations = default_prune_locations(config.num_hidden_layers)
    if "locations" in spec and not small:
        locations = list(spec["locations"])
    bin_num = spec.get("bin_num", task.preset.bin_num)
    token_z, reached = gates_for_sparsity(lengths, config, bin_num, locations, spec["sparsity"])
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_config(config)
    save_checkpoint(
        path, model_state_dict=model.state_dict(), config=config, token_z=token_z,
        pruner_z=torch.ones(len(locations)), tokenizer=tokenizer,
        extra={"bench_gates.json": {"prune_locations": locations, "token_sparsity": reached}},
    )
    return words, reached


# ----------------------------------------------------------------------------------------------
# Running and reporting


def run_one(task_name, batch_size, checkpoint, data_dir, args, output: Path) -> Dict:
    result = bench(BenchConfig(
        task=TASKS[task_name]["task"], checkpoint=str(checkpoint), data_dir=str(data_dir), batch_size=batch_size,
        device=args.device, threads=args.threads, passes=args.passes, output=str(output), runtime=args.runtime,
    ))
    print(result.summary)
    return result.record


def summary_table(results: List[Dict]) -> str:
    """One row per run: compact's time, then speedup / FLOPs limit (ratio) against every baseline it ran."""
    names = []
    for r in results:
        names += [name for name in r["baselines"] if name not in names]
    lines = [
        "| checkpoint | batch | compact ms | "
        + " | ".join(f"vs {name}: speedup / FLOPs limit (ratio)" for name in names)
        + " | agreement | peak MB " + " / ".join(["compact"] + names) + " |",
        "| --- | ---: | ---: | " + " | ".join("---" for _ in names) + " | ---: | --- |",
    ]
    for r in results:
        cells = []
        for name in names:
            b = r["baselines"].get(name)
            cells.append("-" if b is None else "{:.2f}x / {:.2f}x ({:.2f})".format(
                b["speedup"], b["flops_ratio"], b["speedup_over_flops_ratio"]))
        peak = r.get("peak_memory_mb") or {}
        mb = ["-" if peak.get(name) is None else f"{peak[name]:.0f}" for name in ["compact"] + names]
        lines.append("| {} | {} | {:.1f} | {} | {:.3f} | {} |".format(
            r.get("bench_name", r["task"]), r["batch_size"], r["compact"]["ms_per_batch"], " | ".join(cells),
            r["agreement_with_faithful"], " / ".join(mb),
        ))
    onnx_rows = [r for r in results if r.get("runtime") == "onnxruntime"]
    if onnx_rows:
        lines += [
            "",
            "onnxruntime: weight-read floor of one forward pass (weights read once)",
            "",
            "| checkpoint | batch | weight MB | read GB/s | bandwidth floor ms | optimized dense 2-token ms |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in onnx_rows:
            f = r["weight_read_floor"]
            lines.append("| {} | {} | {:.0f} | {:.1f} | {:.1f} | {:.1f} |".format(
                r.get("bench_name", r["task"]), r["batch_size"], f["weight_bytes"] / 1e6, f["read_bandwidth_gb_s"],
                f["bandwidth_floor_ms"], f["two_token_ms"]))
    return "\n".join(lines) + "\n"


def plot(results: List[Dict], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is missing; no plot written (pip install matplotlib)", file=sys.stderr)
        return False
    tasks = sorted({r.get("bench_name", r["task"]) for r in results})
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 4.2), squeeze=False)
    colors = {"dense_padded": "tab:blue", "dense_dynamic": "tab:orange", "dense_dynamic_prepacked": "tab:green"}
    for ax, task in zip(axes[0], tasks):
        rows = sorted((r for r in results if r.get("bench_name", r["task"]) == task), key=lambda r: r["batch_size"])
        sizes = [r["batch_size"] for r in rows]
        for name, color in colors.items():
            if not all(name in r["baselines"] for r in rows):
                continue
            ax.plot(sizes, [r["baselines"][name]["speedup"] for r in rows], "o-", color=color,
                    label="measured vs " + name)
            if name != "dense_dynamic_prepacked":  # its FLOPs limit is dense_dynamic's
                ax.plot(sizes, [r["baselines"][name]["flops_ratio"] for r in rows], "--", color=color,
                        label="FLOPs limit vs " + name)
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes)
        ax.set_xticklabels([str(s) for s in sizes])
        ax.axhline(1.0, color="grey", linewidth=0.8)
        ax.set_xlabel("batch size")
        ax.set_ylabel("speedup of compact")
        device = rows[0]["device"] if rows else ""
        ax.set_title("{} ({}, {} threads)".format(task, device, rows[0]["threads"] if rows else ""))
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(str(path), dpi=120)
    plt.close(fig)
    return True


def training_cost_numbers(output_dir: Path, args) -> None:
    """The training benches: one step of each command, then whole `top train` and `top finetune` runs."""
    for name in ("bench_train_step.py", "bench_run_cost.py"):
        command = [sys.executable, str(Path(__file__).with_name(name)), "--output-dir", str(output_dir)]
        print("running", " ".join(command))
        result = subprocess.run(command)
        if result.returncode != 0:
            print(f"{name} failed with exit status {result.returncode}", file=sys.stderr)


def judge(results: List[Dict], goals: Dict, runtime: str) -> List[Dict]:
    """Every goal of scripts/bench_goals.toml that these results measure: what it asks, the figure, met or not."""
    verdicts = []

    def add(r, what, figure, minimum):
        verdicts.append({"checkpoint": r["bench_name"], "batch_size": r["batch_size"], "goal": what,
                         "figure": figure, "minimum": minimum, "met": figure >= minimum})

    for r in results:
        if r["device"] != "cpu":
            continue
        name, batch = r["bench_name"], r["batch_size"]
        base = r["baselines"]
        if runtime == "torch":
            if name == "minilm":
                rule = goals["torch"]["minilm"]
                wanted = {b: rule["min_ratio"] for b in ("dense_padded", "dense_dynamic")} \
                    if batch == rule["batch_size"] else {}
            elif name == "news512":
                rule = goals["torch"]["news512"]
                wanted = {rule["baseline"]: rule["min_ratio"]} if batch in rule["batch_sizes"] else {}
            else:
                wanted = goals["torch"].get(str(batch), {})
            for baseline, minimum in wanted.items():
                add(r, f"speedup / FLOPs ratio vs {baseline}", base[baseline]["speedup_over_flops_ratio"], minimum)
        else:
            rule = goals["onnxruntime"]
            baseline = rule["baseline"]
            if batch == 1 and name in rule["batch1_min_speedup"]:
                add(r, f"speedup vs {baseline}", base[baseline]["speedup"], rule["batch1_min_speedup"][name])
            if batch == 1 and name in rule.get("batch1_min_ratio", {}):
                add(r, f"speedup / FLOPs ratio vs {baseline}", base[baseline]["speedup_over_flops_ratio"],
                    rule["batch1_min_ratio"][name])
            if batch == 32 and name in rule["batch1_min_speedup"]:
                add(r, f"speedup / FLOPs ratio vs {baseline}", base[baseline]["speedup_over_flops_ratio"],
                    rule["batch32_min_ratio"])
    return verdicts


def goals_table(verdicts: List[Dict]) -> str:
    if not verdicts:
        return "No goal is measured by these runs.\n"
    lines = ["| checkpoint | batch | goal | figure | minimum | met |", "| --- | ---: | --- | ---: | ---: | --- |"]
    for v in verdicts:
        lines.append("| {} | {} | {} | {:.3f} | {:.2f} | {} |".format(
            v["checkpoint"], v["batch_size"], v["goal"], v["figure"], v["minimum"], "yes" if v["met"] else "**no**"))
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    work = output_dir / "work"
    goals = read_goals()
    results = []
    for name in args.tasks:
        spec = TASKS[name]
        task = get_task(spec["task"])
        gen = torch.Generator().manual_seed(args.seed)
        lengths = synthetic_lengths(spec, task, gen)
        checkpoint = work / f"{name}-checkpoint"
        words, reached = build_checkpoint(checkpoint, name, lengths, args.small, args.seed)
        print(f"{name}: mean length {sum(lengths) / len(lengths):.1f}, gates reach token sparsity {reached:.3f}")
        for batch_size in spec.get("batch_sizes", args.batch_sizes):
            if batch_size not in args.batch_sizes:
                continue
            per_size = spec.get("timed_batches", BATCHES_TIMED)
            subset = timed_subset(lengths, batch_size, args.timed_batches or per_size.get(batch_size, 4))
            examples = [make_example(n, task.is_pair, words, gen) for n in subset]
            data_dir = work / f"data-{name}-b{batch_size}"
            write_glue_tsv(task, examples, data_dir / task.glue_dir / task.file_name("dev"), split="dev")
            suffix = "-onnx" if args.runtime == "onnxruntime" else ""
            result_path = output_dir / f"{name}-b{batch_size}{suffix}.json"
            result = run_one(name, batch_size, checkpoint, data_dir, args, result_path)
            result["token_sparsity"] = reached
            result["bench_name"] = name
            atomic_write_json(result_path, result)
            results.append(result)
    table = summary_table(results)
    verdicts = judge(results, goals, args.runtime)
    text = table + "\nGoals (scripts/bench_goals.toml):\n\n" + goals_table(verdicts)
    summary = {"goals": goals, "verdicts": verdicts,
               "goals_met": all(v["met"] for v in verdicts) if verdicts else None, "results": results}
    stem = "summary-onnx" if args.runtime == "onnxruntime" else "summary"
    atomic_write_text(output_dir / f"{stem}.md", text)
    atomic_write_json(output_dir / f"{stem}.json", summary)
    if args.runtime == "torch":
        plot(results, output_dir / "speedup.png")
        if not args.no_training:
            training_cost_numbers(output_dir, args)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
