"""scripts/readme_table.py: the README's results table and preset-cost table generated from their TOML files."""

import dataclasses
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

from top.data.published import PUBLISHED_FILE, load_results_table
from top.data.tasks import TASKS
from top.training.training_cost import COST_FILE, cpu_seconds, gpu_seconds, load_training_cost, training_steps

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


EMPTY_COST = "<!-- preset-cost:start -->\n<!-- preset-cost:end -->"


def write_readme(path, block="", cost=EMPTY_COST):
    path.write_text(
        f"# Title\n\nintro\n\n## Results\n\n{block}\n\n## Cost\n\n{cost}\n\n## After\n\ntail text\n",
        encoding="utf-8",
    )


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
    capsys.readouterr()
    write_readme(readme, f"{readme_table.START}\n{readme_table.END}", cost="")
    assert readme_table.main(["--write", "--readme", str(readme)]) == 2
    assert "no <!-- preset-cost:start -->" in capsys.readouterr().err


def test_script_runs_from_the_command_line(tmp_path):
    readme = tmp_path / "README.md"
    write_readme(readme, "<!-- results-table:start -->\n<!-- results-table:end -->")
    run = [sys.executable, str(SCRIPT), "--readme", str(readme)]
    result = subprocess.run(run + ["--check"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "drifted" in result.stderr
    assert subprocess.run(run + ["--write"], capture_output=True, text=True, timeout=120).returncode == 0
    assert subprocess.run(run + ["--check"], capture_output=True, text=True, timeout=120).returncode == 0


def test_the_repository_readme_is_in_sync(readme_table):
    """What `nox -s readme` checks: README.md's blocks are the ones the data files generate."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = readme_table.render_table(load_results_table())
    assert block in text, "README.md has drifted; run `python scripts/readme_table.py --write`"
    cost = readme_table.render_cost_block(load_training_cost(), TASKS)
    assert cost in text, "README.md has drifted; run `python scripts/readme_table.py --write`"
    assert text.index(cost) > text.index("### How long each preset takes") > text.index("## Reproduce the paper")


# ----------------------------------------------------------------------------------------------
# The preset-cost block


def with_step_seconds(text, value):
    """The cost file's text with its measured `top train` step set to ``value``."""
    return re.sub(r"(?m)^train_step_seconds = .*$", f"train_step_seconds = {value}", text, count=1)


def cost_rows(block):
    return [[c.strip() for c in line.strip("|").split("|")] for line in table_rows(block)]


def test_the_cost_rows_come_from_tasks_toml_and_the_measurement(readme_table):
    cost = load_training_cost()
    block = readme_table.render_cost_block(cost, TASKS)
    assert block.startswith(readme_table.COST_START) and block.endswith(readme_table.COST_END)
    rows = cost_rows(block)
    assert [row[0] for row in rows] == [task.glue_dir for task in TASKS.values()]
    for row, task in zip(rows, TASKS.values()):
        assert int(row[1].replace(",", "")) == task.train_size
        assert int(row[2]) == task.preset.epochs
        assert int(row[3].replace(",", "")) == training_steps(task)
        assert int(row[4]) == task.task_length
        hours = cpu_seconds(cost.measurement.model, task, cost.measurement) / 3600
        assert float(row[7].replace(",", "")) == pytest.approx(hours, rel=0.06)  # two figures
        gpu_hours = gpu_seconds(cost.paper_model, task, cost.gpu) / 3600
        assert float(row[9].replace(",", "")) == pytest.approx(gpu_hours, rel=0.06)
    cola = dict(zip((row[0] for row in rows), rows))["CoLA"]
    assert cola[3] == "26,800"  # 268 steps an epoch x 100 epochs
    m = cost.measurement
    assert f"takes {m.train_step_seconds:g} s" in block and m.cpu in block and m.command in block
    assert "estimate" in block and "no GPU was available" in block
    assert f"assumes one {cost.gpu.gpu} sustaining {cost.gpu.sustained_tflops:g} TFLOP/s" in block
    assert "assumed rate (est. GPU-hours)" in block


def test_the_gpu_column_follows_the_assumed_rate_only(readme_table, tmp_path):
    text = COST_FILE.read_text(encoding="utf-8")
    rate = load_training_cost().gpu.sustained_tflops
    changed = tmp_path / "cost.toml"
    changed.write_text(re.sub(r"(?m)^sustained_tflops = .*$", f"sustained_tflops = {2 * rate}", text, count=1))
    before = cost_rows(readme_table.render_cost_block(load_training_cost(), TASKS))
    after = cost_rows(readme_table.render_cost_block(load_training_cost(changed), TASKS))
    for old, new in zip(before, after):
        assert old[:9] == new[:9]
        assert float(new[9].replace(",", "")) == pytest.approx(float(old[9].replace(",", "")) / 2, rel=0.1)


def test_a_changed_measurement_changes_the_cpu_columns_only(readme_table, tmp_path):
    text = COST_FILE.read_text(encoding="utf-8")
    seconds = load_training_cost().measurement.train_step_seconds
    changed = tmp_path / "cost.toml"
    changed.write_text(with_step_seconds(text, 2 * seconds))
    before = cost_rows(readme_table.render_cost_block(load_training_cost(), TASKS))
    after = cost_rows(readme_table.render_cost_block(load_training_cost(changed), TASKS))
    for old, new in zip(before, after):
        assert old[:7] == new[:7]  # steps and FLOPs do not depend on the measurement
        assert float(new[7].replace(",", "")) == pytest.approx(2 * float(old[7].replace(",", "")), rel=0.1)


def test_a_changed_preset_changes_its_row(readme_table):
    cola = TASKS["cola"]
    tasks = dict(TASKS, cola=dataclasses.replace(cola, preset=dataclasses.replace(cola.preset, epochs=50)))
    rows = {row[0]: row for row in cost_rows(readme_table.render_cost_block(load_training_cost(), tasks))}
    assert rows["CoLA"][2:4] == ["50", "13,400"]


def test_the_evaluation_note_names_the_tasks_where_evaluation_dominates(readme_table):
    cost = load_training_cost()
    assert "of QQP's" in readme_table.render_cost_block(cost, TASKS)  # 40,430 dev examples every 100 steps
    tasks = dict(TASKS, qqp=dataclasses.replace(TASKS["qqp"], dev_size=1))
    assert "of QQP's" not in readme_table.render_cost_block(cost, tasks)


def test_cost_drift_is_caught_and_a_bad_cost_file_is_one_sentence(readme_table, tmp_path, capsys):
    readme = tmp_path / "README.md"
    write_readme(readme, f"{readme_table.START}\n{readme_table.END}")
    cost = tmp_path / "cost.toml"
    cost.write_text(COST_FILE.read_text(encoding="utf-8"), encoding="utf-8")
    args = ["--readme", str(readme), "--cost", str(cost)]
    assert readme_table.main(["--write", *args]) == 0
    assert readme_table.main(["--check", *args]) == 0
    capsys.readouterr()

    cost.write_text(with_step_seconds(cost.read_text(), "123.0"))
    assert readme_table.main(["--check", *args]) == 1
    err = capsys.readouterr().err
    assert "the preset-cost table" in err and str(cost) in err and "--write" in err
    assert "results table" not in err and "takes 123 s" in err

    cost.write_text(with_step_seconds(cost.read_text(), '"slow"'))
    assert readme_table.main(["--check", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "measurement.train_step_seconds must be of type float" in err


# ----------------------------------------------------------------------------------------------
# The README as a guide, and the links between the documents


GUIDE = ["## Install", "## Quick start", "## Reproduce the paper", "## Prune your own model", "## Deploy", "## Docker"]


def test_the_readme_is_a_short_guide_in_the_order_a_newcomer_needs():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 300
    headings = [line for line in text.splitlines() if line.startswith("## ")]
    assert [h for h in headings if any(h.startswith(g) for g in GUIDE)] == [
        next(h for h in headings if h.startswith(g)) for g in GUIDE
    ]
    assert headings[0] == "## Install"
    install = text[text.index("## Install"):text.index("## Quick start")]
    assert "pip install -e '.[onnx]'" in install and "nox -s demo" in text and "nox -s tests" in text
    assert "TOP_IMAGE_TARGET" in text and "CHECKPOINT=outputs/cola/best docker compose run --rm eval-cola" in text
    assert "docs/API.md" in text and "import top" in text


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lstrip("#").strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path):
    return {slug(line) for line in path.read_text(encoding="utf-8").splitlines() if line.startswith("#")}


def test_every_link_between_the_documents_resolves():
    documents = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    broken = []
    for document in documents:
        text = re.sub(r"```.*?```", "", document.read_text(encoding="utf-8"), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+://", target):
                continue
            file_part, _, anchor = target.partition("#")
            linked = (document.parent / file_part).resolve() if file_part else document
            if not linked.exists():
                broken.append(f"{document.name}: {target} (no such file)")
            elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
                broken.append(f"{document.name}: {target} (no such heading)")
    assert not broken, broken
