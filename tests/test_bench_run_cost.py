"""scripts/bench_run_cost.py: whole `top train` and `top finetune` runs on one schedule, alternated."""

import importlib.util
from pathlib import Path

import pytest

from top import cli

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("bench_run_cost", ROOT / "scripts" / "bench_run_cost.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def paths(tmp_path):
    return {name: tmp_path / name for name in ("train", "dev", "model", "teacher")}


def parsed(argv):
    """The command's own parser on the argv the bench runs (so every flag exists and parses)."""
    return cli.build_parser(argv).parse_args(argv)


def test_both_commands_run_the_same_schedule(script, tmp_path):
    finetune = parsed(script.finetune_argv(paths(tmp_path), tmp_path / "f"))
    train = parsed(script.train_argv(paths(tmp_path), tmp_path / "t", "--no-teacher-cache"))
    for flag in ("train_file", "validation_file", "epochs", "batch_size", "max_seq_length", "eval_steps", "device"):
        assert getattr(finetune, flag) == getattr(train, flag), flag
    assert finetune.epochs == script.SCHEDULE["epochs"] and finetune.batch_size == script.SCHEDULE["batch_size"]
    assert finetune.eval_steps == 16  # 512 sentences / 32: once per epoch
    assert train.teacher_cache is False and parsed(script.train_argv(paths(tmp_path), tmp_path / "t")).teacher_cache


def test_rounds_alternate_in_a_rotating_order(script, tmp_path, monkeypatch):
    ran = []

    def fake_run(argv, prefix=("-m", "top")):
        ran.append((argv[0], "--no-teacher-cache" in argv))
        return float(len(ran))

    monkeypatch.setattr(script, "run_command", fake_run)
    seconds = script.time_rounds(paths(tmp_path), tmp_path, rounds=3, eager_too=False)
    names = ["finetune", "train (teacher cache)", "train (no teacher cache)"]
    assert list(seconds) == names and all(len(v) == 3 for v in seconds.values())
    kinds = {("finetune", False): names[0], ("train", False): names[1], ("train", True): names[2]}
    order = [kinds[r] for r in ran]
    assert order == names + names[1:] + names[:1] + names[2:] + names[:2]
    summary = script.summarise(seconds)
    assert summary["finetune"]["ratio_to_finetune"] == 1.0
    assert summary["train (teacher cache)"]["median_seconds"] == 4.0  # it ran 2nd, 4th and 9th: 2, 4 and 9 s
    assert "| train (no teacher cache) |" in script.render({
        "schedule_text": "s", "machine_text": "m", "commands": summary, "goal_verdict": "met (1.00x)"})
