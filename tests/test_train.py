"""`top train` on a tiny random BERT: reaches its target, deterministic, resumable after SIGKILL, bad input."""

from __future__ import annotations

import dataclasses
import json
import logging
import signal
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest
from builders import (
    FINISHED,
    KILLER,
    PAPER_FLAGS,
    SHORT,
    assert_bit_identical,
    read_log,
    single_thread,
    subprocess_env,
    tiny_model_dir,
    train_argv,
    write_data,
)

from top import cli
from top.errors import UserError
from top.training.config import NO_BEST_EXIT

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------- builders




one_thread = pytest.fixture(scope="module", autouse=True)(single_thread)




















# Warm-up (8 steps) plus 50: the paper's controller overshoots a target of 0.3 on this schedule.
OVERSHOOT = (
    *PAPER_FLAGS,
    "--target-sparsity", "0.3", "--max-steps", "60", "--warmup-epochs", "1", "--reg-learning-rate", "0.2",
    "--eval-steps", "5", "--save-steps", "20", "--logging-steps", "5",
)


class Warnings(logging.Handler):
    """The warnings ``top train`` logs (through the ``top`` loggers) while it is attached."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: List[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def run_logging_warnings(argv: List[str]) -> List[str]:
    handler = Warnings()
    logger = logging.getLogger("top")
    logger.addHandler(handler)
    try:
        assert cli.main(argv) in FINISHED
    finally:
        logger.removeHandler(handler)
    return handler.messages


@pytest.fixture(scope="session")
def overshoot_run(tiny, tmp_path_factory):
    """The paper's controller on OVERSHOOT: the output directory and the warnings it logged."""
    out = tmp_path_factory.mktemp("overshoot") / "out"
    return out, run_logging_warnings(train_argv(tiny, out, *OVERSHOOT))


@pytest.fixture(scope="session")
def reference_run(tiny, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reference") / "out"
    assert cli.main(train_argv(tiny, out, *SHORT)) in FINISHED
    return out


# ------------------------------------------------------------------------------------- end to end


def test_reaches_target_sparsity_and_outputs_evaluate(tiny, overshoot_run, tmp_path):
    out, _ = overshoot_run

    run = json.loads((out / "run.json").read_text())
    assert run["prune_locations"] == [2, 3]  # 2..L-1 for 4 layers
    assert run["config"]["bin_num"] == 10 and run["total_steps"] == 60 and run["warmup_steps"] == 8
    assert run["args"]["bin_num"] == 10 and run["args"]["target_sparsity"] == 0.3 and run["config"]["max_steps"] == 60

    summary = json.loads((out / "summary.json").read_text())
    best = summary["best"]
    assert best["score"] is not None, "no evaluation reached the target sparsity"
    assert best["expected_sparsity"] >= 0.3 - 0.01
    assert best["flops_reduction"] > 1.0 and 1.0 < best["flops_reduction_same_inputs"] < best["flops_reduction"]

    log = read_log(out)
    steps = [r for r in log if "eval" not in r]
    for key in ("loss", "task_loss", "lagrangian", "lambda_1", "lambda_2", "expected_sparsity", "target"):
        assert key in steps[-1]
    assert steps[-1]["target"] == pytest.approx(0.3)  # warm-up over: the full target
    assert steps[0]["target"] < 0.3  # ramping from 0
    evals = [r for r in log if "eval" in r]
    best_evals = [r for r in evals if r["is_best"]]
    assert best_evals and best_evals[-1]["step"] == best["step"]
    assert all(r["expected_sparsity"] >= 0.29 for r in best_evals)

    from top.method.checkpoint import load_checkpoint

    for name in ("best", "last"):
        checkpoint = load_checkpoint(out / name)
        assert checkpoint.is_pruned and checkpoint.prune_locations == [2, 3] and checkpoint.bin_num == 10
        assert (out / name / "vocab.txt").is_file()
    assert json.loads((out / "last" / "trainer_state.json").read_text())["step"] == 60

    # `top eval` reads best/ and finds the sparsity the training run reported.
    assert (
        cli.main(
            [
                "eval",
                "--checkpoint",
                str(out / "best"),
                "--validation-file",
                str(tiny["dev"]),
                "--device",
                "cpu",
                "--no-progress",
                "--output-dir",
                str(tmp_path / "eval"),
            ]
        )
        == 0
    )
    record = json.loads((tmp_path / "eval" / "custom.json").read_text())
    assert record["expected_sparsity"] == pytest.approx(best["expected_sparsity"], abs=1e-6)
    assert record["metrics"]["accuracy"] == pytest.approx(best["score"])


def test_a_sparsity_off_target_is_a_warning_and_in_the_summary(overshoot_run):
    out, warnings = overshoot_run
    evals = [r for r in read_log(out) if "eval" in r]
    final = evals[-1]["expected_sparsity"]
    assert evals[-1]["step"] == 60 and final > 0.3 + 0.1  # the paper's controller overshoots here
    summary = json.loads((out / "summary.json").read_text())
    assert summary["final_expected_sparsity"] == final
    assert summary["reached_target"] is False and summary["sparsity_epsilon"] == 0.01
    assert summary["best"]["score"] is not None  # best/ still follows the default rule

    # Step 11 is the first at the full target (2 steps before pruning, 8 of warm-up): still short of it.
    after_warmup = [w for w in warnings if w.startswith("After the warm-up (step 11)")]
    at_end = [w for w in warnings if w.startswith("At the end (step 60)")]
    assert len(after_warmup) == 1 and len(at_end) == 1, warnings
    assert "below the target 0.3" in after_warmup[0] and "--reg-learning-rate" in after_warmup[0]
    assert f"{final:.4f}, above the target 0.3" in at_end[0]
    for lever in ("--sparsity-control adaptive", "--warmup-epochs", "--reg-learning-rate", "more steps"):
        assert lever in at_end[0]


def test_a_sparsity_within_the_band_is_no_warning(tiny, tmp_path):
    """With the band wide enough to hold both sparsities, neither check warns."""
    out = tmp_path / "out"
    warnings = run_logging_warnings(train_argv(tiny, out, *SHORT, "--sparsity-epsilon", "0.99"))
    assert not [w for w in warnings if "expected sparsity" in w], warnings
    # 12 steps, the target full from step 11: two steps left, too few for five evaluations at any cadence.
    assert [w for w in warnings if w.startswith("--eval-steps 4 gives 1 evaluation") and "more steps" in w]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["reached_target"] is True
    assert summary["final_expected_sparsity"] == [r for r in read_log(out) if "eval" in r][-1]["expected_sparsity"]


def test_adaptive_control_lands_on_the_target_where_the_papers_overshoots(tiny, overshoot_run, tmp_path):
    """Warm-up plus 50 steps: the paper's controller ends far above 0.3, the adaptive one within 0.02."""
    paper_out, _ = overshoot_run
    out = tmp_path / "adaptive"
    warnings = run_logging_warnings(
        train_argv(tiny, out, *OVERSHOOT, "--sparsity-control", "adaptive", "--sparsity-epsilon", "0.02")
    )
    paper = json.loads((paper_out / "summary.json").read_text())
    adaptive = json.loads((out / "summary.json").read_text())
    assert paper["final_expected_sparsity"] > 0.3 + 0.02  # overshoots
    assert abs(adaptive["final_expected_sparsity"] - 0.3) <= 0.02
    assert adaptive["reached_target"] is True
    assert not [w for w in warnings if w.startswith("At the end")], warnings
    # It settles rather than passing through: every evaluation of the last 20 steps is within the band.
    late = [r["expected_sparsity"] for r in read_log(out) if "eval" in r and r["step"] >= 40]
    assert len(late) == 5 and all(abs(s - 0.3) <= 0.02 for s in late), late
    assert json.loads((out / "run.json").read_text())["config"]["sparsity_control"] == "adaptive"
    assert json.loads((paper_out / "run.json").read_text())["config"]["sparsity_control"] == "paper"


def test_the_obvious_command_on_own_data_lands_and_one_that_cannot_exits_3(tiny, tmp_path, capsys):
    """Own data with nothing but a target: tasks.toml's [custom] recipe lands on it (40 epochs of 2 steps
    at batch 32); a run too short to land writes no best/, exits 3 and names the levers."""
    out = tmp_path / "obvious"
    obvious = ["train", "--model", str(tiny["model"]), "--teacher", str(tiny["model"]),
               "--train-file", str(tiny["train"]), "--validation-file", str(tiny["dev"]),
               "--output-dir", str(out), "--target-sparsity", "0.3", "--device", "cpu", "--no-progress"]
    assert cli.main(obvious) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["total_steps"] == 80 and run["warmup_steps"] == 20  # a quarter of the run
    # run.json's config shows what own data resolved to; its args, that none of it was given.
    config = run["config"]
    assert (config["sparsity_control"], config["best_rule"], config["eval_steps"]) == ("adaptive", "nearest-target", 5)
    assert (config["learning_rate"], config["sparsity_epsilon"], config["layer_gate_init"]) == (1e-4, 0.02, 10.0)
    assert config["reg_learning_rate"] == pytest.approx(8.0 / 20) and config["warmup_epochs"] == 10.0
    assert run["args"]["sparsity_control"] is None and run["args"]["eval_steps"] is None
    summary = json.loads((out / "summary.json").read_text())
    assert summary["reached_target"] and abs(summary["final_expected_sparsity"] - 0.3) <= 0.02, summary
    assert abs(summary["best"]["expected_sparsity"] - 0.3) <= 0.02 and (out / "best" / "config.json").is_file()
    steps = [r for r in read_log(out) if "evaluated_sparsity" in r]
    assert steps and all(0.0 <= r["evaluated_sparsity"] < 1.0 for r in steps)
    capsys.readouterr()

    short = [*obvious, "--max-steps", "6"]
    short[short.index("--output-dir") + 1] = str(tmp_path / "short")
    assert cli.main(short) == NO_BEST_EXIT
    message = capsys.readouterr().out.strip().splitlines()[-1]
    assert "best/ was not written" in message and f"exits with {NO_BEST_EXIT}" in message, message
    assert "--reg-learning-rate" in message and "more steps" in message
    assert "--sparsity-control adaptive" not in message  # it already runs adaptive
    assert not (tmp_path / "short" / "best").exists() and (tmp_path / "short" / "last" / "config.json").is_file()


def test_eval_steps_auto_gives_enough_evaluations_after_the_warm_up(tiny, tmp_path):
    """30 steps, the target full from step 11: auto evaluates every 2 steps, 10 times after the warm-up."""
    flags = ("--target-sparsity", "0.3", "--max-steps", "30", "--warmup-epochs", "1", "--reg-learning-rate", "0.2")
    out = tmp_path / "auto"
    enough = run_logging_warnings(train_argv(tiny, out, *flags, "--eval-steps", "auto"))
    assert not [w for w in enough if "--eval-steps" in w], enough
    run = json.loads((out / "run.json").read_text())
    assert run["args"]["eval_steps"] == "auto" and run["config"]["eval_steps"] == 2
    evaluated = [r["step"] for r in read_log(out) if "eval" in r]
    assert evaluated == list(range(2, 31, 2)) and len([s for s in evaluated if s >= 11]) == 10


def test_few_evaluations_after_the_warm_up_is_a_warning_naming_the_cadence(caplog):
    from top.training.plan import warn_few_evaluations

    with caplog.at_level(logging.WARNING, logger="top"):
        warn_few_evaluations(100, 100, 30, 11)  # every 100 steps over a 30-step run: only the final one
    assert len(caplog.messages) == 1
    assert caplog.messages[0].startswith("--eval-steps 100 gives 1 evaluation after the warm-up (steps 11-30)")
    assert "pass --eval-steps 2 or --eval-steps auto" in caplog.messages[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="top"):
        warn_few_evaluations("auto", 2, 30, 11)  # ten after the warm-up: enough
        warn_few_evaluations(4, 4, 12, 11)  # two steps after the warm-up: too few at any cadence
        warn_few_evaluations(100, 100, 8, 11)  # the warm-up outlasts the run
    assert len(caplog.messages) == 2
    assert caplog.messages[0].startswith("--eval-steps 4 gives 1 evaluation") and "more steps" in caplog.messages[0]
    assert caplog.messages[1].startswith("The warm-up lasts past the run's 8 steps")


def test_evaluation_counts_and_the_auto_cadence():
    from top.training.config import EVAL_STEPS
    from top.training.plan import evaluations_from, resolve_eval_steps

    assert evaluations_from(11, 20, 60) == 3  # 20, 40, 60
    assert evaluations_from(11, 7, 60) == 8  # 14, 21, ..., 56 and the last step, 60
    assert evaluations_from(61, 5, 60) == 0  # the warm-up outlasts the run
    assert resolve_eval_steps(7, 60, 11) == 7
    assert resolve_eval_steps("auto", 60, 11) == 5 and evaluations_from(11, 5, 60) == 10
    assert resolve_eval_steps("auto", 14, 11) == 1  # 4 steps after the warm-up: every one
    assert resolve_eval_steps("auto", 8, 11) == EVAL_STEPS  # none after it: only the final evaluation
    # Every paper preset, batch 32 on one process, keeps the default cadence under auto.
    import math

    from top.data.tasks import TASKS, get_task
    from top.training.step import PREPRUNING_STEPS

    for name in TASKS:
        task = get_task(name)
        steps_per_epoch = math.ceil(task.train_size / 32)
        total = math.ceil(task.preset.epochs * steps_per_epoch)
        first = PREPRUNING_STEPS + round(task.preset.warmup_epochs * steps_per_epoch) + 1
        assert resolve_eval_steps("auto", total, first) == EVAL_STEPS, name


# ------------------------------------------------------------------------------------- determinism


def test_same_seed_gives_bit_identical_runs(tiny, reference_run, tmp_path):
    again = tmp_path / "again"
    assert cli.main(train_argv(tiny, again, *SHORT)) in FINISHED
    assert_bit_identical(reference_run / "last", again / "last")
    assert [r for r in read_log(again) if "eval" in r] == [r for r in read_log(reference_run) if "eval" in r]

    other = tmp_path / "other-seed"
    assert cli.main(train_argv(tiny, other, *SHORT, "--seed", "58")) in FINISHED
    with pytest.raises(AssertionError):
        assert_bit_identical(reference_run / "last", other / "last")


def test_fused_attention_changes_only_rounding(tiny, tmp_path):
    """--attention sdpa (the default) against eager, without dropout: the same run up to float rounding."""
    runs = {}
    for attention in ("eager", "sdpa"):
        out = tmp_path / attention
        argv = train_argv(tiny, out, *SHORT, "--attention", attention, model_key="model_no_dropout")
        assert cli.main(argv) in FINISHED
        runs[attention] = read_log(out)
    assert [sorted(r) for r in runs["eager"]] == [sorted(r) for r in runs["sdpa"]]
    for eager, fused in zip(runs["eager"], runs["sdpa"]):
        for key in ("task_loss", "rank_loss", "lagrangian", "lambda_1", "expected_sparsity", "score"):
            if key in eager:
                assert fused[key] == pytest.approx(eager[key], rel=1e-4, abs=1e-6), (eager["step"], key)


# ------------------------------------------------------------------------------------- resume



@pytest.mark.parametrize(
    "mode, at, saved_step",
    [
        # AdamW steps: 1 per step before pruning starts (steps 0-1), then 3 (weights, gates, lambdas);
        # call 19 is the gates step of step index 7, after last/ was written at step 6.
        ("step", 19, 6),
        # Four file writes per last/ (weights, masks, gates, state); call 6 is inside the
        # step-6 write, so last/ must still be the whole step-3 one.
        ("save", 6, 3),
    ],
    ids=["mid-step", "mid-checkpoint-write"],
)
def test_resume_after_sigkill_is_bit_identical(tiny, reference_run, tmp_path, mode, at, saved_step):
    out = tmp_path / "out"
    env = subprocess_env()
    killed = subprocess.run(
        [sys.executable, "-c", KILLER, mode, str(at), *train_argv(tiny, out, *SHORT)],
        cwd=str(tmp_path),
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert json.loads((out / "last" / "trainer_state.json").read_text())["step"] == saved_step

    assert cli.main(train_argv(tiny, out, *SHORT, "--resume")) in FINISHED
    assert_bit_identical(reference_run / "last", out / "last")
    assert (out / "best").exists() == (reference_run / "best").exists()
    if (reference_run / "best").exists():
        assert_bit_identical(reference_run / "best", out / "best")
    assert read_log(out) == read_log(reference_run)


def test_adaptive_control_resumes_bit_identically(tiny, tmp_path):
    """The controller's state (the previous gap) travels in last/: a kill mid-step resumes exactly."""
    flags = (*SHORT, "--sparsity-control", "adaptive")
    whole = tmp_path / "whole"
    assert cli.main(train_argv(tiny, whole, *flags)) in FINISHED
    out = tmp_path / "out"
    # AdamW steps: 1 per step before pruning (steps 0-1), then 2 (weights, gates; the controller is
    # no AdamW); call 14 is the gates step of step index 7, after last/ was written at step 6.
    killed = subprocess.run(
        [sys.executable, "-c", KILLER, "step", "14", *train_argv(tiny, out, *flags)],
        cwd=str(tmp_path), env=subprocess_env(), capture_output=True, text=True, timeout=120,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert json.loads((out / "last" / "trainer_state.json").read_text())["step"] == 6
    assert cli.main(train_argv(tiny, out, *flags, "--resume")) in FINISHED
    assert_bit_identical(whole / "last", out / "last")
    assert read_log(out) == read_log(whole)
    assert any(r.get("lambda_1", 0.0) != 0.0 for r in read_log(out))


def test_resuming_with_another_sparsity_control_exits_2(tiny, reference_run, tmp_path, capsys):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(str(reference_run), str(out))
    assert cli.main(train_argv(tiny, out, *SHORT, "--sparsity-control", "adaptive", "--resume")) == 2
    assert "resume with --sparsity-control paper" in capsys.readouterr().err


# ------------------------------------------------------------------------------------- bad input


@pytest.fixture(scope="session")
def odd_teachers(tiny) -> Dict[str, Path]:
    root = tiny["root"]
    return {
        "labels": tiny_model_dir(root / "teacher-3-labels", num_labels=3),
        "vocab": tiny_model_dir(root / "teacher-vocab", vocab_extra=7),
    }


@pytest.mark.parametrize(
    "case, flags, needle",
    [
        ("target zero", ["--target-sparsity", "0"], "--target-sparsity"),
        ("target above one", ["--target-sparsity", "1.5"], "--target-sparsity"),
        ("prune location beyond depth", ["--target-sparsity", "0.3", "--prune-location", "2,4"], "--prune-location"),
        ("bin_num below one", ["--target-sparsity", "0.3", "--bin-num", "0"], "--bin-num"),
        ("resume without last", ["--target-sparsity", "0.3", "--resume"], "--resume"),
        ("eval steps neither a number nor auto", ["--target-sparsity", "0.3", "--eval-steps", "soon"], "--eval-steps"),
    ],
)
def test_bad_flags_exit_2(tiny, tmp_path, capsys, case, flags, needle):
    argv = train_argv(tiny, tmp_path / "out", *flags)
    # the later flag wins, so --bin-num 0 overrides the helper's --bin-num 10
    assert cli.main(argv) == 2
    assert needle in capsys.readouterr().err


@pytest.mark.parametrize("which, needle", [("labels", "labels"), ("vocab", "vocabulary")])
def test_mismatched_teacher_exits_2(tiny, odd_teachers, tmp_path, capsys, which, needle):
    argv = train_argv(tiny, tmp_path / "out", "--target-sparsity", "0.3")
    argv[argv.index("--teacher") + 1] = str(odd_teachers[which])
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and "teacher" in err


def test_data_without_labels_exits_2(tiny, tmp_path, capsys):
    unlabelled = write_data(tmp_path / "unlabelled.csv", 10, seed=3, labels=False)
    argv = train_argv(tiny, tmp_path / "out", "--target-sparsity", "0.3")
    argv[argv.index("--train-file") + 1] = str(unlabelled)
    assert cli.main(argv) == 2
    assert "label" in capsys.readouterr().err


# ------------------------------------------------------------------------------------- settings


def _config(**flags):
    """`top train`'s config at its defaults but for ``flags``."""
    from top.training.config import TrainConfig

    return TrainConfig(model="m", teacher="t", output_dir="o", **flags)


def test_presets_come_from_the_task_file_and_flags_override():
    from top.data.loading import TaskData
    from top.data.tasks import get_task
    from top.training.plan import preset_of, resolve_presets

    mrpc = get_task("mrpc")
    preset = preset_of(_config(), TaskData(mrpc, [], [], "mrpc"))
    assert resolve_presets(_config(), preset) == {
        "target_sparsity": mrpc.preset.sparsity, "bin_num": mrpc.preset.bin_num, "topk": mrpc.preset.topk,
        "warmup_epochs": mrpc.preset.warmup_epochs, "epochs": mrpc.preset.epochs,
    }
    flags = dict(target_sparsity=0.5, bin_num=7, topk=3, warmup_epochs=2, epochs=4)
    assert resolve_presets(_config(**flags), preset) == flags
    custom = preset_of(_config(), TaskData(dataclasses.replace(mrpc, name="custom"), [], [], "file"))
    with pytest.raises(UserError, match="--target-sparsity"):
        resolve_presets(_config(), custom)  # custom data has no preset target


def test_defaults_follow_the_paper_for_its_tasks_and_the_custom_preset_for_own_data():
    from top.data.tasks import CUSTOM_PRESET
    from top.training.config import PAPER_RECIPE, RECIPE
    from top.training.plan import resolve_recipe

    config = _config()
    assert (config.rank_loss_alpha, config.distill_temperature) == (0.01, 2.0)
    assert (config.batch_size, config.max_seq_length, config.seed) == (32, 256, 57)
    assert all(getattr(config, name) is None for name in RECIPE)  # the recipe waits for the data
    paper = resolve_recipe(config, custom=False, warmup_steps=63)
    assert paper == {"learning_rate": 1e-5, "reg_learning_rate": 0.02, "sparsity_control": "paper",
                     "sparsity_epsilon": 0.01, "best_rule": "score", "layer_gate_init": -10.0, "eval_steps": 100}
    assert paper == PAPER_RECIPE
    own = resolve_recipe(config, custom=True, warmup_steps=63)
    assert own == {"learning_rate": 1e-4, "reg_learning_rate": pytest.approx(8.0 / 63),
                   "sparsity_control": "adaptive", "sparsity_epsilon": 0.02, "best_rule": "nearest-target",
                   "layer_gate_init": 10.0, "eval_steps": "auto"}
    # --reg-learning-rate follows the warm-up, within bounds for very long and very short ones...
    assert resolve_recipe(config, custom=True, warmup_steps=10_000)["reg_learning_rate"] == 0.02
    assert resolve_recipe(config, custom=True, warmup_steps=0)["reg_learning_rate"] == 0.5
    # ...and a flag given is kept, on either kind of data.
    given = _config(learning_rate=3e-5, reg_learning_rate=0.07, sparsity_control="paper", eval_steps=40)
    for custom in (False, True):
        kept = resolve_recipe(given, custom=custom, warmup_steps=63)
        assert (kept["learning_rate"], kept["reg_learning_rate"], kept["sparsity_control"], kept["eval_steps"]) == (
            3e-5, 0.07, "paper", 40)
    # The custom preset's values are ones `top train` takes: a config holding them checks clean.
    _config(**{name: getattr(CUSTOM_PRESET, name) for name in RECIPE if name != "reg_learning_rate"})


def test_the_tests_paper_flags_are_the_papers_recipe():
    """builders.PAPER_FLAGS is written out (the behaviour pins import it under an older top): held equal here."""
    from top.commands.flags import config_from_args
    from top.training.config import PAPER_RECIPE, TrainConfig

    args = train_parser().parse_args(["--model", "m", "--teacher", "t", "--output-dir", "o", *PAPER_FLAGS])
    config = config_from_args(TrainConfig, args)
    assert {name: getattr(config, name) for name in PAPER_RECIPE} == PAPER_RECIPE


def test_own_data_warms_up_for_a_share_of_the_run(tiny, tmp_path):
    """The custom preset's warm-up is a quarter of the run, counted in --max-steps too; a flag wins."""
    from top.training import distributed
    from top.training.config import TrainConfig
    from top.training.plan import plan_train

    def planned(**flags):
        config = TrainConfig(model=str(tiny["model"]), teacher=str(tiny["model"]), train_file=str(tiny["train"]),
                             validation_file=str(tiny["dev"]), output_dir=str(tmp_path / "o"), target_sparsity=0.5,
                             batch_size=8, device="cpu", **flags)
        return plan_train(config, distributed.Distributed())

    config, plan = planned(epochs=4)  # 8 steps an epoch: 32 steps, 8 of warm-up
    assert (plan.total_steps, plan.step.warmup_steps, config.warmup_epochs) == (32, 8, 1.0)
    assert config.reg_learning_rate == 0.5  # 8 / 8, at the bound
    config, plan = planned(max_steps=80)
    assert (plan.total_steps, plan.step.warmup_steps, config.warmup_epochs) == (80, 20, 2.5)
    assert config.reg_learning_rate == pytest.approx(8 / 20)
    config, plan = planned(max_steps=120, warmup_epochs=5)
    assert plan.step.warmup_steps == 40 and config.reg_learning_rate == pytest.approx(8 / 40)
    assert config.epochs == 15.0 and config.sparsity_control == "adaptive"


def test_help_shows_the_papers_defaults_and_own_datas():
    text = " ".join(train_parser().format_help().split())
    assert "(default: 1e-05 for the paper's tasks; for your own data 0.0001)" in text
    assert "(default: paper for the paper's tasks; for your own data adaptive)" in text
    assert "8 / the warm-up's steps, within 0.02..0.5" in text and "0.25 of the run for your own data" in text
    assert "[custom] in top/data/tasks.toml" in text and "3 when no evaluation qualified for best/" in text


def train_parser():
    from top.commands import train
    from top.commands.flags import OneLineParser

    parser = OneLineParser(prog="top train")
    train.add_arguments(parser)
    return parser


def test_droprate_init_is_accepted_recorded_and_ignored_with_a_warning(tmp_path, caplog):
    """The original passes --droprate_init 0.01 and never reads it for the token gates; nor do we."""
    from top.commands.flags import config_from_args
    from top.training.config import TrainConfig

    parser = train_parser()
    args = parser.parse_args(["--model", "m", "--teacher", "t", "--output-dir", "o", "--droprate-init", "0.3"])
    assert config_from_args(TrainConfig, args).droprate_init == 0.3
    assert parser.parse_args(["--model", "m", "--teacher", "t", "--output-dir", "o"]).droprate_init == 0.01
    assert "--droprate-init" not in parser.format_help()  # deprecated: accepted, not advertised
    data = write_data(tmp_path / "data.csv", 6, seed=1)
    with caplog.at_level(logging.WARNING, logger="top"):
        code = cli.main(["train", "--model", str(tmp_path / "none"), "--teacher", str(tmp_path / "none"),
                         "--train-file", str(data), "--validation-file", str(data), "--target-sparsity", "0.5",
                         "--output-dir", str(tmp_path / "o"), "--droprate-init", "0.3"])
    assert code == 2 and "--droprate-init 0.3 has no effect" in caplog.text


def test_the_command_line_becomes_the_config_once():
    """run()'s edge: the parsed flags build the same object, the defaults being the config's own."""
    from top.commands.flags import config_from_args
    from top.training.config import TrainConfig

    args = train_parser().parse_args(["--model", "m", "--teacher", "t", "--output-dir", "o", "--topk", "3",
                                      "--epochs", "2", "--device", "cpu"])
    assert config_from_args(TrainConfig, args) == _config(topk=3, epochs=2.0, device="cpu")


def test_a_config_from_python_is_checked_as_the_command_line_is():
    message = r"TrainConfig\(target_sparsity=\.\.\.\): 1.5 is out of range.*--target-sparsity"
    with pytest.raises(UserError, match=message):
        _config(target_sparsity=1.5)
    with pytest.raises(UserError, match="--prune-location"):
        _config(prune_location="x")
    with pytest.raises(UserError, match="--sparsity-control"):
        _config(sparsity_control="pid")
    assert _config(prune_location=[2, 3]).prune_location == "2,3"
    from top.training.config import TrainConfig

    assert TrainConfig(model="m", teacher="t", output_dir=Path("o")).output_dir == "o"


def test_prune_locations_default_to_two_through_depth_minus_one():
    from top.training.plan import default_locations, prune_locations

    assert default_locations(12) == list(range(2, 12))
    assert default_locations(6) == [2, 3, 4, 5]
    assert prune_locations("1,3", 6) == [1, 3]
    for bad in ("6", "0,2", "3,2"):
        with pytest.raises(UserError, match="--prune-location"):
            prune_locations(bad, 6)


# ------------------------------------------------------------------------------------- loop pieces


def test_warmup_ramp_raises_the_target_and_lowers_the_rank_weight():
    from top.training.step import warmup_ramp

    assert warmup_ramp(0, 8, 0.3, 0.01) == (0.0, 0.01)
    assert warmup_ramp(4, 8, 0.3, 0.01) == (0.15, 0.005)
    # After the warm-up: the full target, and the rank weight held at 1% of alpha.
    assert warmup_ramp(8, 8, 0.3, 0.01) == warmup_ramp(100, 8, 0.3, 0.01) == (0.3, 0.01 * 0.01)
    assert warmup_ramp(0, 0, 0.3, 0.01) == (0.3, 0.01 * 0.01)  # no warm-up: the target at once


def test_best_rule_keeps_the_best_score_among_evaluations_that_reached_the_target():
    from top.training.best import NO_BEST, apply_best_rule

    def evaluation(step, score, sparsity=None):
        record = {"step": step, "eval": {"accuracy": score}, "score": score}
        if sparsity is not None:
            record.update(expected_sparsity=sparsity, expected_sequence_sparsity=sparsity / 2, flops_reduction=1.5)
        return record

    best = dict(NO_BEST)
    dense = evaluation(2, 0.9)  # before pruning: no sparsity, never best
    best = apply_best_rule(dense, best, target=0.5, epsilon=0.01)
    assert best == NO_BEST and not dense["reached_target"] and not dense["is_best"]
    first = evaluation(4, 0.7, sparsity=0.495)  # within epsilon of the target
    best = apply_best_rule(first, best, target=0.5, epsilon=0.01)
    assert first["is_best"] and best["step"] == 4 and best["score"] == 0.7
    below = evaluation(6, 0.95, sparsity=0.45)  # a better score, but short of the target
    best = apply_best_rule(below, best, target=0.5, epsilon=0.01)
    assert not below["reached_target"] and not below["is_best"] and best["step"] == 4
    worse = evaluation(8, 0.6, sparsity=0.6)
    best = apply_best_rule(worse, best, target=0.5, epsilon=0.01)
    assert worse["reached_target"] and not worse["is_best"] and best["step"] == 4
    better = evaluation(10, 0.8, sparsity=0.55)
    best = apply_best_rule(better, best, target=0.5, epsilon=0.01)
    assert better["is_best"] and best == {
        "score": 0.8, "step": 10, "expected_sparsity": 0.55, "expected_sequence_sparsity": 0.275,
        "flops_reduction": 1.5, "flops_reduction_same_inputs": None,
    }


def test_nearest_target_rule_keeps_the_evaluation_nearest_the_target_within_the_band():
    from top.training.best import NO_BEST, apply_best_rule

    def evaluation(step, score, sparsity):
        return {"step": step, "eval": {}, "score": score, "expected_sparsity": sparsity,
                "expected_sequence_sparsity": sparsity, "flops_reduction": 1.0}

    def steps_kept(evaluations, rule):
        best, kept = dict(NO_BEST), []
        for record in evaluations:
            best = apply_best_rule(record, best, target=0.5, epsilon=0.02, rule=rule)
            kept.append(best["step"])
        return kept

    evaluations = [
        evaluation(1, 0.70, 0.519),  # in the band
        evaluation(2, 0.90, 0.60),  # reached the target, far above it: the default rule takes it
        evaluation(3, 0.60, 0.5078125),  # nearer: nearest-target takes it despite the lower score
        evaluation(4, 0.65, 0.4921875),  # as near: the better score wins the tie
        evaluation(5, 0.99, 0.47),  # outside the band
        evaluation(6, None, 0.50),  # undefined score: never the best
    ]
    assert steps_kept([dict(e) for e in evaluations], "score") == [1, 2, 2, 2, 2, 2]
    assert steps_kept([dict(e) for e in evaluations], "nearest-target") == [1, 1, 3, 4, 4, 4]


def test_a_short_run_trains_and_evaluates_on_the_device(tiny, tmp_path, device):
    """The whole loop (teacher cache, pruning, evaluations, best/ and last/) on `--device` (a GPU under nox -s gpu)."""
    out = tmp_path / "out"
    argv = train_argv(tiny, out, *SHORT)
    argv[argv.index("--device") + 1] = device.type
    assert cli.main(argv) in FINISHED
    evaluations = [r for r in read_log(out) if "eval" in r]
    assert evaluations[-1]["step"] == 12 and "expected_sparsity" in evaluations[-1]
    assert json.loads((out / "run.json").read_text())["config"]["device"] == device.type
    assert (out / "last" / "trainer_state.safetensors").is_file()
