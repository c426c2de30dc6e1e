"""Nothing of a finished run is replaced unasked (issue 33): `top train` and `top finetune` refuse an
output folder that holds another run's best/ or last/, or the model they read; --overwrite-output-dir
moves the old run aside into OUT/previous-N/ (renames only) and a move a kill cut short is finished."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Dict, List

import pytest
from builders import FINISHED, finetune_argv, single_thread, train_argv

from top import cli
from top.errors import UserError
from top.storage import rundir

one_thread = pytest.fixture(scope="module", autouse=True)(single_thread)


def digests(directory: Path) -> Dict[str, str]:
    """{relative path: sha256} of every file under ``directory`` (links followed: what a reader reads)."""
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def error_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [line for line in err.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and err.strip().splitlines()[-1] == lines[0], err
    return lines[0]


@pytest.fixture(scope="module")
def finetuned(tiny, tmp_path_factory) -> Path:
    """A finished `top finetune` run: R/best, R/last, log.jsonl, run.json, summary.json."""
    out = tmp_path_factory.mktemp("finetuned") / "R"
    assert cli.main(finetune_argv(tiny, out, "--max-steps", "2")) == 0
    assert {"best", "last", "log.jsonl", "run.json", "summary.json"} <= {p.name for p in out.iterdir()}
    return out


def copy_run(source: Path, target: Path) -> Path:
    import shutil

    shutil.copytree(str(source), str(target))
    return target


# ------------------------------------------------------------------------------------- the case


@pytest.mark.parametrize("extra", [(), ("--overwrite-output-dir",), ("--resume",)],
                         ids=["plain", "overwrite", "resume"])
def test_train_into_the_folder_of_the_teacher_it_reads_is_refused(tiny, finetuned, tmp_path, capsys, extra):
    """`top finetune --output-dir R`, then `top train --model R/best --teacher R/best --output-dir R`: one
    sentence, exit 2, and R (R/best above all, the teacher being read) is byte for byte as it was."""
    run = copy_run(finetuned, tmp_path / "R")
    before = digests(run)
    argv = train_argv(tiny, run, "--target-sparsity", "0.3", "--max-steps", "2", *extra)
    argv[argv.index("--model") + 1] = argv[argv.index("--teacher") + 1] = str(run / "best")
    assert cli.main(argv) == 2
    line = error_line(capsys.readouterr().err)
    assert f"{run / 'best'}" in line and "choose another --output-dir" in line, line
    assert digests(run) == before
    assert sorted(p.name for p in run.iterdir()) == sorted(p.name for p in finetuned.iterdir())


@pytest.mark.parametrize("where", ["is", "inside", "link"])
def test_an_output_dir_that_is_inside_or_links_to_the_model_is_refused(tiny, tmp_path, capsys, where):
    model = copy_run(tiny["model"], tmp_path / "model")
    before = digests(model)
    if where == "is":
        out = model
    elif where == "inside":
        out = model / "pruned"
    else:  # OUT/best is a link to the model: writing best/ would write there
        out = tmp_path / "out"
        out.mkdir()
        os.symlink(str(model), str(out / "best"))
    argv = finetune_argv(tiny, out, "--max-steps", "1")
    argv[argv.index("--model") + 1] = str(model)
    assert cli.main(argv) == 2
    line = error_line(capsys.readouterr().err)
    assert f"--model {model}" in line and "choose another --output-dir" in line, line
    assert digests(model) == before and not (model / "pruned").exists()


# ------------------------------------------------------------------------------------- a finished run


def test_a_finished_run_is_refused_and_overwrite_moves_it_aside_whole(tiny, finetuned, tmp_path, capsys):
    run = copy_run(finetuned, tmp_path / "R")
    before = digests(run)
    again = finetune_argv(tiny, run, "--max-steps", "2", "--seed", "3")
    assert cli.main(again) == 2
    line = error_line(capsys.readouterr().err)
    assert f"--output-dir {run} holds another run's best/ and last/" in line, line
    assert "--overwrite-output-dir" in line and "--resume" not in line, line  # finetune has no --resume
    assert digests(run) == before

    assert cli.main(again + ["--overwrite-output-dir"]) == 0
    moved = run / "previous-1"
    assert digests(moved) == before  # every file of the old run, unchanged, nothing left out
    assert {"best", "last", "log.jsonl", "run.json", "summary.json"} <= {p.name for p in run.iterdir()}
    assert digests(run / "best") != digests(moved / "best")  # a new run, with another seed

    assert cli.main(again + ["--overwrite-output-dir"]) == 0
    assert (run / "previous-2" / "best").is_dir() and digests(run / "previous-1") == before


def test_train_names_resume_where_last_can_be_resumed(tiny, tmp_path, capsys):
    out = tmp_path / "out"
    (out / "last").mkdir(parents=True)
    (out / "last" / "trainer_state.safetensors").write_bytes(b"state")
    assert cli.main(train_argv(tiny, out, "--target-sparsity", "0.3", "--max-steps", "2")) == 2
    line = error_line(capsys.readouterr().err)
    assert "holds another run's last/" in line and "pass --resume to continue it" in line, line
    assert "--overwrite-output-dir" in line


def test_resume_and_overwrite_together_are_refused_from_python(tiny, tmp_path):
    import top

    config = top.TrainConfig(model=str(tiny["model"]), teacher=str(tiny["model"]), train_file=str(tiny["train"]),
                             validation_file=str(tiny["dev"]), output_dir=str(tmp_path / "out"), resume=True,
                             overwrite_output_dir=True)
    with pytest.raises(UserError, match="either --resume or --overwrite-output-dir"):
        top.train(config)
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------- the library layer


def a_run(out: Path) -> Path:
    for name in ("best", "last"):
        (out / name).mkdir(parents=True)
        (out / name / "config.json").write_text(f'{{"{name}": 1}}')
    for name in ("log.jsonl", "run.json", "summary.json"):
        (out / name).write_text(name)
    return out


def test_overwrite_moves_links_as_links_and_keeps_what_is_not_the_run(tmp_path):
    out = a_run(tmp_path / "out")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("mine")
    (out / "last" / "config.json").unlink()
    (out / "last").rmdir()
    os.symlink(str(elsewhere), str(out / "last"))
    (out / "teacher").mkdir()
    (out / "teacher" / "config.json").write_text("{}")
    with pytest.raises(UserError, match=r"best/ and last \(a link to .*elsewhere\)"):
        rundir.take_over(out, overwrite=False)
    moved = rundir.take_over(out, overwrite=True)
    assert moved == out / "previous-1"
    assert sorted(p.name for p in moved.iterdir()) == ["best", "last", "log.jsonl", "run.json", "summary.json"]
    assert (moved / "last").is_symlink() and (elsewhere / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in out.iterdir()) == ["previous-1", "teacher"]


def test_resume_takes_over_nothing(tmp_path):
    out = a_run(tmp_path / "out")
    assert rundir.take_over(out, overwrite=False, resume=True) is None
    assert (out / "best").is_dir() and not list(out.glob("previous-*"))


def test_a_move_aside_cut_short_by_a_kill_is_finished_by_the_next_claim(tmp_path):
    """A kill after best/ was moved into .previous-1.partial/: the next run's claim finishes the move, so
    the old run is whole in previous-1/ and nothing of it is left in OUT or lost."""
    out = a_run(tmp_path / "out")
    expected = digests(out)
    partial = out / ".previous-1.partial"
    partial.mkdir()
    os.replace(str(out / "best"), str(partial / "best"))
    with rundir.claim(out):
        assert not rundir.held_run(out)
    assert digests(out / "previous-1") == expected
    assert sorted(p.name for p in out.iterdir()) == ["previous-1"]


@pytest.mark.parametrize("model, allowed", [("OUT/teacher/best", True), ("OUT/best", False), ("OUT", False),
                                            ("hub/id", True), ("OUT/teacher-cache", False)])
def test_which_models_an_output_dir_may_hold(tmp_path, model, allowed):
    out = tmp_path / "OUT"
    (out / "teacher" / "best").mkdir(parents=True)
    (out / "best").mkdir()
    (out / "teacher-cache").mkdir()
    value = model if model == "hub/id" else str(tmp_path / model)
    written: List[str] = list(rundir.RUN_FILES) + ["teacher-cache"]
    if allowed:
        rundir.refuse_reading_into(out, {"--teacher": value}, written)
    else:
        with pytest.raises(UserError, match="choose another --output-dir"):
            rundir.refuse_reading_into(out, {"--teacher": value}, written)


def test_a_run_refused_for_its_finished_folder_writes_nothing(tiny, tmp_path, capsys):
    out = a_run(tmp_path / "out")
    before = digests(out)
    assert cli.main(train_argv(tiny, out, "--target-sparsity", "0.3", "--max-steps", "2")) == 2
    error_line(capsys.readouterr().err)
    assert digests(out) == before and sorted(p.name for p in out.iterdir()) == sorted(
        ["best", "last", "log.jsonl", "run.json", "summary.json"])
    assert cli.main(train_argv(tiny, out, "--target-sparsity", "0.3", "--max-steps", "2",
                               "--overwrite-output-dir")) in FINISHED
    assert digests(out / "previous-1") == before
