"""scripts/readme_table.py: the README's results table generated from the results table TOML."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from top.published import PUBLISHED_FILE, load_results_table
from top.tasks import TASKS

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "readme_table.py"


@pytest.fixture(scope="module")
def readme_table():
    spec = importlib.util.spec_from_file_location("readme_table", str(SCRIPT))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def table_rows(block):
    return [line for line in block.splitlines() if line.startswith("| ") and not line.startswith(("| Task", "| ---"))]


def test_every_row_comes_from_the_toml_in_its_order(readme_table):
    table = load_results_table()
    block = readme_table.render_table(table)
    assert block.startswith(readme_table.START) and block.endswith(readme_table.END)
    rows = table_rows(block)
    assert len(rows) == len(table)
    for row, result in zip(rows, table.values()):
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[0] == TASKS[result.task].glue_dir
        assert float(cells[2]) == result.score
        assert float(cells[3].rstrip("x")) == pytest.approx(result.flops_reduction)
        if result.checkpoint:
            assert cells[4] == f"[{result.checkpoint}](https://huggingface.co/{result.checkpoint})"
        else:
            assert cells[4] == "not published"
    assert "padded" in block and "unpadded" in block


def test_the_note_follows_the_data(readme_table, tmp_path):
    path = tmp_path / "t.toml"
    text = PUBLISHED_FILE.read_text()
    path.write_text(text.replace("flops_tolerance = 0.05", "flops_tolerance = 0.1"))
    note = readme_table.render_table(load_results_table(path))
    assert "±10% on the FLOPs reduction" in note and "64, 128 or 256 tokens" in note
    path.write_text(text.replace("score_tolerance = 0.5\n", "score_tolerance = 1.0\n", 1))
    assert "per-task tolerances" in readme_table.render_table(load_results_table(path))


def write_readme(path, block=""):
    path.write_text(f"# Title\n\nintro\n\n## Results\n\n{block}\n\n## After\n\ntail text\n", encoding="utf-8")


def test_write_then_check_and_drift(readme_table, tmp_path, capsys):
    readme = tmp_path / "README.md"
    write_readme(readme, f"{readme_table.START}\nold\n{readme_table.END}")
    table = tmp_path / "t.toml"
    table.write_text(PUBLISHED_FILE.read_text())
    args = ["--readme", str(readme), "--table", str(table)]
    assert readme_table.main(["--check", *args]) == 1
    assert readme_table.main(["--write", *args]) == 0
    text = readme.read_text()
    assert text.startswith("# Title\n\nintro\n\n## Results\n\n") and text.endswith("\n\n## After\n\ntail text\n")
    assert "old" not in text and "| CoLA | Matthews corr. | 60.3 | 10.39x |" in text
    assert readme_table.main(["--check", *args]) == 0
    capsys.readouterr()

    # The data changes: the README is stale.
    table.write_text(PUBLISHED_FILE.read_text().replace("score = 60.3", "score = 61.0"))
    assert readme_table.main(["--check", *args]) == 1
    err = capsys.readouterr().err
    assert "has drifted" in err and str(readme) in err and "--write" in err
    assert "-| CoLA | Matthews corr. | 60.3" in err and "+| CoLA | Matthews corr. | 61.0" in err

    # A hand edit inside the block is drift too.
    table.write_text(PUBLISHED_FILE.read_text())
    readme.write_text(text.replace("10.39x", "10.4x"))
    assert readme_table.main(["--check", *args]) == 1


def test_bad_markers_and_missing_readme(readme_table, tmp_path, capsys):
    readme = tmp_path / "README.md"
    write_readme(readme)
    assert readme_table.main(["--check", "--readme", str(readme)]) == 2
    assert "no <!-- results-table:start -->" in capsys.readouterr().err
    write_readme(readme, f"{readme_table.END}\n{readme_table.START}")
    assert readme_table.main(["--write", "--readme", str(readme)]) == 2
    write_readme(readme, f"{readme_table.START}\n{readme_table.START}\n{readme_table.END}")
    assert readme_table.main(["--check", "--readme", str(readme)]) == 2
    assert "once" in capsys.readouterr().err
    absent = tmp_path / "new" / "README.md"
    assert readme_table.main(["--check", "--readme", str(absent)]) == 2
    absent.parent.mkdir()
    assert readme_table.main(["--write", "--readme", str(absent)]) == 0
    assert absent.read_text().startswith("## Results\n\n" + readme_table.START)
    assert readme_table.main(["--check", "--readme", str(absent)]) == 0


def test_script_runs_from_the_command_line(tmp_path):
    readme = tmp_path / "README.md"
    write_readme(readme, "<!-- results-table:start -->\n<!-- results-table:end -->")
    run = [sys.executable, str(SCRIPT), "--readme", str(readme)]
    result = subprocess.run(run + ["--check"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "drifted" in result.stderr
    assert subprocess.run(run + ["--write"], capture_output=True, text=True, timeout=120).returncode == 0
    assert subprocess.run(run + ["--check"], capture_output=True, text=True, timeout=120).returncode == 0


def test_the_repository_readme_is_in_sync(readme_table):
    """What `nox -s readme` checks: README.md's table is the one top/published.toml generates."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = readme_table.render_table(load_results_table())
    assert block in text, "README.md has drifted; run `python scripts/readme_table.py --write`"
