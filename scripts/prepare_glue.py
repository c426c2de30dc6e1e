#!/usr/bin/env python
"""Write GLUE's original TSV layout from the `datasets` hub copy, for offline runs later.

    python scripts/prepare_glue.py --output-dir GLUE_DIR [--tasks cola sst2 ...] [--splits dev train]

Writes ``GLUE_DIR/<GLUE dir>/<file>`` (e.g. ``GLUE_DIR/CoLA/dev.tsv``, ``GLUE_DIR/MNLI/dev_matched.tsv``)
with top's own GLUE writer, so ``--data-dir GLUE_DIR`` reads back exactly the hub's examples.
``--tasks 20news imdb yelp`` writes the long-document tasks' JSON lines the same way
(``GLUE_DIR/20news/dev.jsonl``: the hub copy's test split). Needs the `datasets` package and the
network (or its cache) once.
"""

import argparse
import sys
from pathlib import Path
from typing import List, Optional, Sequence

try:
    from top.data.tasks import GLUE_TASKS, TASKS, canonical_task_name
    from top.errors import UserError
except ImportError:  # run with a Python that has not installed this project
    sys.exit("error: scripts/prepare_glue.py needs this project installed; run `pip install -e .` from the "
             "repository root (in a virtual environment) and run it again.")

SPLITS = ("dev", "train")
# What this script's own failure offers instead of itself: GLUE's files, had another way.
OTHERWISE = "copy GLUE's own TSV files (e.g. from a machine that has them) into the same layout by hand"


def parse_tasks(values: Optional[Sequence[str]]) -> List[str]:
    """`--tasks cola sst2` or `--tasks cola,SST-2` -> ["cola", "sst2"]; none means every GLUE task."""
    if not values:
        return list(GLUE_TASKS)
    names = [part for value in values for part in value.split(",") if part.strip()]
    return list(dict.fromkeys(canonical_task_name(name) for name in names))


def prepare(tasks: Sequence[str], output_dir: Path, splits: Sequence[str] = SPLITS) -> List[Path]:
    from top.data.glue import write_glue_tsv
    from top.data.hub_copy import load_hub_split

    written = []
    for name in tasks:
        task = TASKS[canonical_task_name(name)]
        for split in splits:
            examples = load_hub_split(task, split, otherwise=OTHERWISE)
            path = output_dir / task.glue_dir / task.file_name(split)
            write_glue_tsv(task, examples, path, split)
            expected = task.dev_size if split == "dev" else task.train_size
            note = "" if len(examples) == expected else f" (tasks.toml counts {expected})"
            print(f"{task.name} {split}: {len(examples)} examples{note} -> {path}", flush=True)
            written.append(path)
    return written


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", required=True, help="GLUE_DIR: one folder per task, as GLUE ships it")
    parser.add_argument("--tasks", nargs="+", help=f"tasks to write, of {', '.join(TASKS)} (default: GLUE's "
                        f"{', '.join(GLUE_TASKS)})")
    parser.add_argument("--splits", nargs="+", choices=SPLITS, default=list(SPLITS))
    args = parser.parse_args(argv)
    try:
        prepare(parse_tasks(args.tasks), Path(args.output_dir), args.splits)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
