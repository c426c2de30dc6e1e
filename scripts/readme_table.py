"""The README's generated blocks: the results table and what each training preset costs.

    python scripts/readme_table.py --check   # exit 1 when README.md has drifted (nox -s readme)
    python scripts/readme_table.py --write   # rewrite the blocks between the markers
    python scripts/readme_table.py           # print the blocks

The results table (from ``top/data/published.toml``) sits between ``<!-- results-table:start -->`` and
``<!-- results-table:end -->``; the preset costs (from ``top/training/training_cost.toml`` and
``top/data/tasks.toml``) between ``<!-- preset-cost:start -->`` and ``<!-- preset-cost:end -->``.
Everything outside the markers is left alone.
"""

import argparse
import difflib
import sys
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple

ROOT = Path(__file__).resolve().parent.parent

from top.data.published import PUBLISHED_FILE, PublishedResult, load_results_table  # noqa: E402
from top.data.tasks import METRIC_LABELS, TASKS, Task  # noqa: E402
from top.errors import UserError  # noqa: E402
from top.training.training_cost import (  # noqa: E402
    BATCH_SIZE,
    COST_FILE,
    EVAL_STEPS,
    MAX_SEQ_LENGTH,
    ModelShape,
    TrainingCost,
    cpu_seconds,
    evaluation_flops,
    gpu_seconds,
    load_training_cost,
    training_flops,
    training_steps,
)

START = "<!-- results-table:start -->"
END = "<!-- results-table:end -->"
COST_START = "<!-- preset-cost:start -->"
COST_END = "<!-- preset-cost:end -->"
README = ROOT / "README.md"
HUB = "https://huggingface.co/"


def _tolerances(table: Dict[str, PublishedResult]) -> str:
    scores = sorted({row.score_tolerance for row in table.values()})
    flops = sorted({row.flops_tolerance for row in table.values()})
    if len(scores) == 1 and len(flops) == 1:
        return f"±{scores[0]:g} points on the score and ±{100 * flops[0]:g}% on the FLOPs reduction"
    return "the per-task tolerances in `top/data/published.toml`"


def _lengths(table: Dict[str, PublishedResult]) -> str:
    lengths = [str(n) for n in sorted({TASKS[task].task_length for task in table})]
    words = lengths[0] if len(lengths) == 1 else ", ".join(lengths[:-1]) + " or " + lengths[-1]
    return f"{words} tokens"


def render_table(table: Dict[str, PublishedResult], source: str = "top/data/published.toml") -> str:
    """The generated block, markers included."""
    lines = [
        START,
        f"<!-- generated from {source} by scripts/readme_table.py --write; edit that file, not this table -->",
        "",
        "| Task | Metric | Paper score | FLOPs reduction | Checkpoint |",
        "| --- | --- | ---: | ---: | --- |",
    ]
    for row in table.values():
        name = TASKS[row.task].glue_dir
        link = f"[{row.checkpoint}]({HUB}{row.checkpoint})" if row.checkpoint else "not published"
        lines.append(
            f"| {name} | {METRIC_LABELS.get(row.metric, row.metric)} | {row.score:.1f} "
            f"| {row.flops_reduction:.2f}x | {link} |"
        )
    lines += [
        "",
        "FLOPs reduction follows the paper's convention: each dev example's FLOPs in the pruned model "
        "are taken relative to the dense model's on that example padded to the task's length "
        f"({_lengths(table)}, `task_length` in `top/data/tasks.toml`), and the reduction is one over the mean "
        "of that ratio, so skipped padding counts as saved. Against the real (unpadded) tokens the "
        "reduction is smaller; `top reproduce` reports both, the unpadded figure beside the paper's, "
        f"and asserts {_tolerances(table)}.",
        END,
    ]
    return "\n".join(lines)


def _rounded(value: float) -> str:
    """Two significant figures, as befits an estimate; thousands separated."""
    if value >= 100:
        return f"{float(f'{value:.2g}'):,.0f}"
    return f"{value:.2g}"


PETA = 1e15


def _evaluation_share(model: ModelShape, task: Task) -> float:
    """The part of a preset run's FLOPs (teacher cached) that dev evaluation takes."""
    return evaluation_flops(model, task) / training_flops(model, task, teacher_cache=True)


def _cost_row(task: Task, cost: TrainingCost) -> str:
    m, paper = cost.measurement, cost.paper_model
    cached, per_step = (training_flops(paper, task, cache) / PETA for cache in (True, False))
    return (
        f"| {task.glue_dir} | {task.train_size:,} | {task.preset.epochs} | {training_steps(task):,} "
        f"| {task.task_length} | {_rounded(cached)} / {_rounded(per_step)} "
        f"| {_rounded(evaluation_flops(paper, task) / PETA)} "
        f"| {_rounded(cpu_seconds(m.model, task, m) / 3600)} "
        f"| {_rounded(cpu_seconds(paper, task, m) / 86400)} "
        f"| {_rounded(gpu_seconds(paper, task, cost.gpu) / 3600)} |"
    )


def render_cost_block(
    cost: TrainingCost, tasks: Mapping[str, Task], source: str = "top/training/training_cost.toml"
) -> str:
    """The preset-cost block, markers included: FLOPs from tasks.toml, CPU time scaled from the measurement."""
    m, paper = cost.measurement, cost.paper_model
    presets = [task for task in tasks.values() if task.preset is not None]
    evaluation_heavy = [
        f"{100 * _evaluation_share(paper, task):.0f}% of {task.glue_dir}'s"
        for task in presets
        if _evaluation_share(paper, task) > 0.5
    ]
    lines = [
        COST_START,
        f"<!-- generated from {source} and top/data/tasks.toml by scripts/readme_table.py --write; "
        "edit those files, not this table -->",
        "",
        f"| Task | Train examples | Epochs | Steps (batch {BATCH_SIZE}) | Length "
        f"| {paper.name} PFLOPs: teacher cached / every step | of which dev evaluation "
        f"| {m.model.name} on the CPU measured (est. hours) | {paper.name} on the CPU measured (est. days) "
        f"| {paper.name} on one {cost.gpu.gpu}, assumed rate (est. GPU-hours) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        *(_cost_row(task, cost) for task in presets),
    ]
    shape = m.model
    teacher = "read from the cache" if m.teacher_cache else "run at every step"
    lines += [
        "",
        f"Measured: one `top train` step of {shape.name} ({shape.layers} layers, hidden {shape.hidden}, "
        f"{shape.heads} heads, feed-forward {shape.intermediate}; teacher {teacher}) on a batch of "
        f"{m.batch_size} examples padded to {m.length} tokens takes {m.train_step_seconds:g} s, a `top finetune` step "
        f"{m.finetune_step_seconds:g} s, on {m.cpu} ({m.vector_extension}, {m.cores} cores, "
        f"{m.torch_threads} torch threads; torch {m.torch}, {m.date}; `{m.command}`)."
        + (f" {m.note}" if m.note else ""),
        "Everything else is an estimate, scaled from that step by FLOPs (2 × the MACs `top.method.flops` "
        f"counts, dense): steps = ⌈train examples / {BATCH_SIZE}⌉ × epochs; every training example "
        "counted at the task's length; the student's forward and backward pass as three forward "
        "passes; the teacher's forward pass once per training example with the cache, once per "
        f"example and step without; a dev evaluation every {EVAL_STEPS} steps and after the last, "
        f"each padded to {MAX_SEQ_LENGTH} tokens as faithful mode does (`top train`'s defaults; the tasks read "
        "at more tokens, to their length). "
        f"The CPU columns keep the teacher as measured ({teacher}). The GPU column measures nothing: no GPU "
        f"was available to measure one, so it assumes one {cost.gpu.gpu} sustaining {cost.gpu.sustained_tflops:g} "
        f"TFLOP/s ({cost.gpu.basis}), teacher cached; for another GPU, divide the PFLOPs by its sustained rate."
        + _evaluation_note(evaluation_heavy),
        COST_END,
    ]
    return "\n".join(lines)


def _evaluation_note(heavy: List[str]) -> str:
    if not heavy:
        return ""
    shares = heavy[0] if len(heavy) == 1 else ", ".join(heavy[:-1]) + " and " + heavy[-1]
    return (
        f" Dev evaluation is {shares} FLOPs (teacher cached): a larger `--eval-steps` shrinks that part."
    )


# The README's generated blocks: markers, what each is called in messages, where to add it.
BLOCKS = (
    (START, END, "results table", "under the results heading"),
    (COST_START, COST_END, "preset-cost table", "under the heading \"How long each preset takes\""),
)


def find_block(text: str, path: Path, start: str = START, end: str = END) -> Optional[List[int]]:
    """[start, end) character offsets of the block, markers included."""
    starts, ends = text.count(start), text.count(end)
    if starts == 0 and ends == 0:
        return None
    if starts != 1 or ends != 1 or text.index(start) > text.index(end):
        raise UserError(
            f"{path} must hold {start} once, followed by {end} once; fix the markers and run --write again."
        )
    return [text.index(start), text.index(end) + len(end)]


def updated_readme(text: str, block: str, path: Path, start: str = START, end: str = END) -> str:
    span = find_block(text, path, start, end)
    if span is None:
        where = next(place for first, _, _, place in BLOCKS if first == start)
        raise UserError(f"{path} has no {start} … {end} markers; add them {where}.")
    return text[: span[0]] + block + text[span[1]:]


def _label(path: Path) -> str:
    source = path.resolve()
    return source.relative_to(ROOT).as_posix() if ROOT in source.parents else str(path)


def render_blocks(table_path: Path, cost_path: Path) -> List[Tuple[str, str]]:
    """Each generated block with the file it comes from, in README order."""
    return [
        (render_table(load_results_table(table_path), _label(table_path)), _label(table_path)),
        (render_cost_block(load_training_cost(cost_path), TASKS, _label(cost_path)), _label(cost_path)),
    ]


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="exit 1 when the README's blocks have drifted")
    mode.add_argument("--write", action="store_true", help="rewrite the README's blocks")
    parser.add_argument("--readme", type=Path, default=README)
    parser.add_argument("--table", type=Path, default=PUBLISHED_FILE, help="the results table TOML")
    parser.add_argument("--cost", type=Path, default=COST_FILE, help="the measured training cost TOML")
    args = parser.parse_args(argv)
    try:
        blocks = render_blocks(args.table, args.cost)
        if not (args.check or args.write):
            print("\n\n".join(block for block, _ in blocks))
            return 0
        if args.write and not args.readme.exists():
            results, cost = (block for block, _ in blocks)
            args.readme.write_text(f"## Results\n\n{results}\n\n## How long each preset takes\n\n{cost}\n",
                                   encoding="utf-8")
            print(f"wrote {args.readme}")
            return 0
        try:
            text = args.readme.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise UserError(f"{args.readme} does not exist; run with --write to create it.") from None
        new, drifted = text, []
        for (block, source), (start, end, name, _) in zip(blocks, BLOCKS):
            before = new
            new = updated_readme(new, block, args.readme, start, end)
            if new != before:
                drifted.append((name, source))
        if args.write:
            if new != text:
                args.readme.write_text(new, encoding="utf-8")
                print(f"wrote the {' and the '.join(name for name, _ in drifted)} into {args.readme}")
            else:
                print(f"{args.readme} is up to date")
            return 0
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if drifted:
        diff = difflib.unified_diff(
            text.splitlines(), new.splitlines(), str(args.readme), "generated", lineterm="", n=1
        )
        sys.stderr.write("\n".join(diff) + "\n")
        for name, source in drifted:
            print(
                f"error: the {name} in {args.readme} has drifted from {source}; "
                "run `python scripts/readme_table.py --write` and commit the result.",
                file=sys.stderr,
            )
        return 1
    print(f"{args.readme}'s generated blocks match {' and '.join(source for _, source in blocks)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
