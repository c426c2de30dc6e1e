#!/usr/bin/env python
"""Download the published ToP checkpoints with huggingface_hub (no git-lfs needed).

    python scripts/download_checkpoints.py [--tasks cola sst2 ...] --output-dir DIR

Each checkpoint lands in ``DIR/<repo name>`` (e.g. ``DIR/bert-base-uncased-top-pruned-cola``),
the layout ``top reproduce --checkpoint-dir DIR`` reads. Running it again resumes a partial
download. Every copy is checked afterwards: it must load as a published-layout checkpoint.
"""

import argparse
import sys
from pathlib import Path
from typing import List, Optional, Sequence

try:
    from top.data.published import load_results_table
    from top.data.tasks import canonical_task_name
    from top.errors import UserError
except ImportError:  # run with a Python that has not installed this project
    sys.exit("error: scripts/download_checkpoints.py needs this project installed; run `pip install -e .` from the "
             "repository root (in a virtual environment) and run it again.")


def parse_tasks(values: Optional[Sequence[str]]) -> Optional[List[str]]:
    """`--tasks cola sst2` or `--tasks cola,SST-2` -> ["cola", "sst2"]; None means all."""
    if not values:
        return None
    names = [part for value in values for part in value.split(",") if part.strip()]
    return list(dict.fromkeys(canonical_task_name(name) for name in names))


def verify(path: Path) -> None:
    """Raise UserError unless `path` holds config.json and weights that load as a ToP checkpoint."""
    from top.method.checkpoint import load_checkpoint

    if not (path / "config.json").is_file():
        raise UserError(f"{path} has no config.json; delete {path} and run this script again.")
    try:
        load_checkpoint(path)
    except UserError as exc:
        raise UserError(f"{path} does not load ({str(exc).rstrip('.')}); delete {path} and run again.") from None


def download(tasks: Optional[List[str]], output_dir: Path, progress: bool = True) -> List[Path]:
    from top.storage import hub

    table = load_results_table()
    unknown = [t for t in tasks or [] if t not in table]
    if unknown:
        raise UserError(f"{unknown[0]} has no row in the results table; use one of {', '.join(table)}.")
    explicit = tasks is not None
    paths = []
    for task in tasks or list(table):
        repo_id = table[task].checkpoint
        if not repo_id:
            if explicit:
                raise UserError(f"The authors published no checkpoint for {task}; leave it out of --tasks.")
            print(f"{task}: skipped (the authors published no checkpoint)")
            continue
        print(f"{task}: {repo_id}", flush=True)
        path = hub.download_checkpoint(repo_id, output_dir, progress=progress)
        verify(path)
        print(f"{task}: ok -> {path}")
        paths.append(path)
    return paths


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", help="tasks to fetch (default: every published checkpoint)")
    parser.add_argument("--output-dir", required=True, help="checkpoints go to DIR/<repo name>")
    parser.add_argument("--no-progress", action="store_true", help="hide the download bars")
    args = parser.parse_args(argv)
    try:
        download(parse_tasks(args.tasks), Path(args.output_dir), progress=not args.no_progress)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
