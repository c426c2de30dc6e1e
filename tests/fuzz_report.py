"""Fuzz ``top eval`` with seeded mutations of a tiny checkpoint and a data file; print the closing note's table.

    PYTHONPATH=$PWD python tests/fuzz_report.py --count 400 --seed 24

The mutations, the verdicts and the table are ``tests/fuzzing.py``'s, which ``tests/test_fuzz.py`` runs
in CI with a smaller count; ``--count`` is the trials of the largest category (the others take a
share of it). Exits 1 when any trial failed (a traceback, a hang, a wrong answer, another exit).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import fuzzing  # tests/ is this script's own directory, so Python finds it first
import torch


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=fuzzing.COUNT, help="trials of the largest category")
    parser.add_argument("--seed", type=int, default=fuzzing.SEED)
    parser.add_argument("--verbose", action="store_true", help="print every trial")
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="top-fuzz-") as root:
        world = fuzzing.build_world(Path(root))

        def show(outcome):
            if args.verbose or outcome.verdict in fuzzing.FAILURES:
                print(f"{outcome.category} #{outcome.trial}: {outcome.verdict} (exit {outcome.code}, "
                      f"{outcome.seconds:.2f} s) {outcome.error}", file=sys.stderr, flush=True)

        outcomes = fuzzing.run_all(world, args.count, args.seed, progress=show)
    print(fuzzing.table(outcomes))
    slowest = max(outcomes, key=lambda o: o.seconds)
    print(f"\nseed {args.seed}, count {args.count}: {len(outcomes)} trials in {time.perf_counter() - started:.0f} s; "
          f"slowest trial {slowest.seconds:.2f} s ({slowest.category}); peak RSS {fuzzing.peak_rss() / 2**20:.0f} MiB "
          f"(limit {fuzzing.MEMORY_LIMIT >> 20} MiB)")
    return 1 if any(o.verdict in fuzzing.FAILURES for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
