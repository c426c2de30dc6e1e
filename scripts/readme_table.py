"""The README's results table, generated from ``top/published.toml``.

    python scripts/readme_table.py --check   # exit 1 when README.md has drifted (nox -s readme)
    python scripts/readme_table.py --write   # rewrite the block between the markers
    python scripts/readme_table.py           # print the block

The block sits between ``<!-- results-table:start -->`` and ``<!-- results-table:end -->``;
everything outside the markers is left alone.
"""

import argparse
import difflib
import sys
from pathlib import Path
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing the package

from top.errors import UserError  # noqa: E402
from top.published import PUBLISHED_FILE, PublishedResult, load_results_table  # noqa: E402
from top.tasks import METRIC_LABELS, TASKS  # noqa: E402

START = "<!-- results-table:start -->"
END = "<!-- results-table:end -->"
README = ROOT / "README.md"
HUB = "https://huggingface.co/"


def _tolerances(table: Dict[str, PublishedResult]) -> str:
    scores = sorted({row.score_tolerance for row in table.values()})
    flops = sorted({row.flops_tolerance for row in table.values()})
    if len(scores) == 1 and len(flops) == 1:
        return f"±{scores[0]:g} points on the score and ±{100 * flops[0]:g}% on the FLOPs reduction"
    return "the per-task tolerances in `top/published.toml`"


def _lengths(table: Dict[str, PublishedResult]) -> str:
    lengths = [str(n) for n in sorted({TASKS[task].task_length for task in table})]
    words = lengths[0] if len(lengths) == 1 else ", ".join(lengths[:-1]) + " or " + lengths[-1]
    return f"{words} tokens"


def render_table(table: Dict[str, PublishedResult], source: str = "top/published.toml") -> str:
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
        f"({_lengths(table)}, `task_length` in `top/tasks.toml`), and the reduction is one over the mean "
        "of that ratio, so skipped padding counts as saved. Against the real (unpadded) tokens the "
        "reduction is smaller; `top reproduce` reports both, the unpadded figure beside the paper's, "
        f"and asserts {_tolerances(table)}.",
        END,
    ]
    return "\n".join(lines)


def find_block(text: str, path: Path) -> Optional[List[int]]:
    """[start, end) character offsets of the block, markers included."""
    starts, ends = text.count(START), text.count(END)
    if starts == 0 and ends == 0:
        return None
    if starts != 1 or ends != 1 or text.index(START) > text.index(END):
        raise UserError(
            f"{path} must hold {START} once, followed by {END} once; fix the markers and run --write again."
        )
    return [text.index(START), text.index(END) + len(END)]


def updated_readme(text: str, block: str, path: Path) -> str:
    span = find_block(text, path)
    if span is None:
        raise UserError(f"{path} has no {START} … {END} markers; add them under the results heading.")
    return text[: span[0]] + block + text[span[1]:]


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="exit 1 when the README's table has drifted")
    mode.add_argument("--write", action="store_true", help="rewrite the README's table")
    parser.add_argument("--readme", type=Path, default=README)
    parser.add_argument("--table", type=Path, default=PUBLISHED_FILE, help="the results table TOML")
    args = parser.parse_args(argv)
    try:
        source = args.table.resolve()
        label = source.relative_to(ROOT).as_posix() if ROOT in source.parents else str(args.table)
        block = render_table(load_results_table(args.table), label)
        if not (args.check or args.write):
            print(block)
            return 0
        if args.write and not args.readme.exists():
            args.readme.write_text(f"## Results\n\n{block}\n", encoding="utf-8")
            print(f"wrote {args.readme}")
            return 0
        try:
            text = args.readme.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise UserError(f"{args.readme} does not exist; run with --write to create it.") from None
        new = updated_readme(text, block, args.readme)
        if args.write:
            if new != text:
                args.readme.write_text(new, encoding="utf-8")
                print(f"wrote the results table into {args.readme}")
            else:
                print(f"{args.readme} is up to date")
            return 0
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if new != text:
        diff = difflib.unified_diff(
            text.splitlines(), new.splitlines(), str(args.readme), "generated", lineterm="", n=1
        )
        sys.stderr.write("\n".join(diff) + "\n")
        print(
            f"error: the results table in {args.readme} has drifted from {args.table}; "
            "run `python scripts/readme_table.py --write` and commit the result.",
            file=sys.stderr,
        )
        return 1
    print(f"{args.readme}'s results table matches {args.table}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
