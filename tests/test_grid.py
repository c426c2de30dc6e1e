"""`top grid`: expansion, launching, skipping, resuming, results, promotion and bad grid files.

Most tests replace `python -m top train` with a fake trainer (a small script written here)
that leaves what a real run leaves: best/, last/ and summary.json. One test runs the real
`top train` on a tiny model.
"""

import json
import os
import sys
import textwrap
from pathlib import Path

import pytest

from top.cli import main
from top.commands import train as train_command
from top.commands.flags import OneLineParser
from top.errors import UserError
from top.training import grid as grid_module
from top.training import grid_launch

FAKE_TRAINER = textwrap.dedent(
    """
    import json, os, sys, time
    from pathlib import Path

    argv = sys.argv[1:]
    opts = {}
    for i, a in enumerate(argv):
        if a.startswith("--"):
            nxt = argv[i + 1] if i + 1 < len(argv) else None
            opts[a[2:]] = nxt if nxt is not None and not nxt.startswith("--") else True
    out = Path(opts["output-dir"])
    out.mkdir(parents=True, exist_ok=True)
    with open(os.environ["FAKE_CALLS"], "a") as log:
        log.write(json.dumps({"argv": argv, "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"),
                              "start": time.time()}) + "\\n")
    time.sleep(float(os.environ.get("FAKE_SLEEP", "0")))
    # An interruption: the first attempt of the named run dies after saving last/.
    if out.name == os.environ.get("FAKE_INTERRUPT") and not (out / "last").exists():
        (out / "last").mkdir()
        (out / "last" / "state.pt").write_text("step 3")
        sys.exit(137)
    if "resume" in opts and not (out / "last").exists():
        sys.exit("--resume without last/")
    lr, alpha = float(opts["learning-rate"]), float(opts.get("rank-loss-alpha", 0.01))
    score = 0.9 - abs(lr - 3e-5) * 1000 - alpha  # best at lr 3e-5 and the smallest alpha
    (out / "last").mkdir(exist_ok=True)
    (out / "best").mkdir(exist_ok=True)
    (out / "best" / "config.json").write_text(json.dumps({"lr": lr}))
    (out / "best" / "zs.pt").write_text("masks")
    summary = {"metric": "accuracy", "target_sparsity": 0.4, "steps": 10, "seconds": 0.1,
               "best": {"score": score, "step": 10, "expected_sparsity": 0.41,
                        "expected_sequence_sparsity": 0.8, "flops_reduction": 5.0}}
    (out / "summary.json").write_text(json.dumps(summary))
    """
)

SMALL_GRID = """
[grid]
learning_rate = [2e-5, 3e-5]
rank_loss_alpha = [0.01, 0.001]

[fixed]
target_sparsity = 0.4
max_steps = 10
"""


@pytest.fixture
def fake(tmp_path, monkeypatch):
    script = tmp_path / "fake_train.py"
    script.write_text(FAKE_TRAINER)
    calls = tmp_path / "calls.jsonl"
    monkeypatch.setenv("FAKE_CALLS", str(calls))
    monkeypatch.delenv("FAKE_INTERRUPT", raising=False)
    monkeypatch.delenv(grid_module.TRAIN_COMMAND_ENV, raising=False)
    grid_file = tmp_path / "grid.toml"
    grid_file.write_text(SMALL_GRID)

    class Fake:
        command = f"{sys.executable} {script}"
        grid = grid_file
        out = tmp_path / "out"

        @staticmethod
        def calls():
            if not calls.exists():
                return []
            return [json.loads(line) for line in calls.read_text().splitlines()]

        @staticmethod
        def run(*extra):
            argv = ["grid", "--task", "SST-2", "--grid", str(grid_file), "--model", "student-dir",
                    "--output-dir", str(Fake.out), "--train-command", Fake.command, *extra]
            return main(argv)

    return Fake


def _run_ids(calls):
    return [Path(c["argv"][c["argv"].index("--output-dir") + 1]).name for c in calls]


def test_default_grid_is_the_papers():
    grid = grid_module.load_grid()
    assert grid.axes == {
        "learning_rate": [6e-5, 5e-5, 4e-5, 3e-5, 2e-5, 1e-5],
        "reg_learning_rate": [0.04, 0.02, 0.01],
        "rank_loss_alpha": [1e-2, 1e-3, 1e-4, 1e-5],
    }
    runs = grid_module.expand(grid)
    assert len(runs) == 72
    assert len({r.run_id for r in runs}) == 72
    assert runs[0].run_id == "lr6e-05_reglr0.04_alpha0.01"
    assert runs[0].hyperparameters == {"learning_rate": 6e-5, "reg_learning_rate": 0.04, "rank_loss_alpha": 0.01}


def test_grid_runs_every_point_and_marks_the_best(fake):
    assert fake.run() == 0
    calls = fake.calls()
    assert sorted(_run_ids(calls)) == sorted(
        ["lr2e-05_alpha0.01", "lr2e-05_alpha0.001", "lr3e-05_alpha0.01", "lr3e-05_alpha0.001"])
    argv = calls[0]["argv"]
    assert argv[:2] == ["--task", "sst2"]
    for flag, value in [("--model", "student-dir"), ("--teacher", "student-dir"), ("--target-sparsity", "0.4"),
                        ("--max-steps", "10"), ("--learning-rate", "2e-05"), ("--rank-loss-alpha", "0.01")]:
        assert argv[argv.index(flag) + 1] == value
    assert "--resume" not in argv

    result = json.loads((fake.out / "grid.json").read_text())
    rows = result["runs"]
    assert [r["run_id"] for r in rows] == ["lr2e-05_alpha0.01", "lr2e-05_alpha0.001",
                                          "lr3e-05_alpha0.01", "lr3e-05_alpha0.001"]
    assert result["best"] == "lr3e-05_alpha0.001"
    assert [r["best"] for r in rows] == [False, False, False, True]
    winner = rows[3]
    assert winner["status"] == "done"
    assert winner["best_score"] == pytest.approx(0.9 - 0.001)
    assert winner["sparsity"] == pytest.approx(0.41)
    assert winner["flops_reduction"] == pytest.approx(5.0)
    assert winner["metric"] == "accuracy"
    assert winner["wall_s"] > 0
    table = (fake.out / "grid.md").read_text().splitlines()
    assert len(table) == 2 + 4
    assert "**best**" in table[-1] and "lr3e-05_alpha0.001" in table[-1]
    assert "5.00x" in table[-1]
    assert sum("**best**" in line for line in table) == 1


def test_finished_runs_are_skipped(fake):
    assert fake.run() == 0
    assert len(fake.calls()) == 4
    assert fake.run() == 0
    assert len(fake.calls()) == 4  # nothing launched again
    rows = json.loads((fake.out / "grid.json").read_text())["runs"]
    assert all(r["status"] == "done" for r in rows)


def test_an_interrupted_run_resumes_from_last(fake, monkeypatch, capsys):
    monkeypatch.setenv("FAKE_INTERRUPT", "lr3e-05_alpha0.01")
    assert fake.run() == 1  # one run died
    assert "lr3e-05_alpha0.01" in capsys.readouterr().err
    rows = {r["run_id"]: r for r in json.loads((fake.out / "grid.json").read_text())["runs"]}
    assert rows["lr3e-05_alpha0.01"]["status"] == "failed"
    assert rows["lr3e-05_alpha0.01"]["best_score"] is None
    assert len(fake.calls()) == 4

    assert fake.run() == 0
    calls = fake.calls()
    assert _run_ids(calls[4:]) == ["lr3e-05_alpha0.01"]  # only the interrupted one runs again
    assert calls[4]["argv"][-1] == "--resume"
    assert "--resume" not in calls[0]["argv"]
    status = json.loads((fake.out / "runs" / "lr3e-05_alpha0.01" / grid_module.STATUS_FILE).read_text())
    assert status["attempts"] == 2 and status["status"] == "done"


def test_runs_go_out_one_per_gpu_in_parallel(fake, monkeypatch):
    monkeypatch.setenv("FAKE_SLEEP", "1.0")
    assert fake.run("--devices", "0,1") == 0
    calls = fake.calls()
    assert sorted(c["cuda"] for c in calls) == ["0", "0", "1", "1"]
    starts = sorted(c["start"] for c in calls)
    assert starts[1] - starts[0] < 1.0  # the second began before the first (1 s long) ended


def test_several_gpus_per_run_use_torchrun():
    assert grid_module.device_slots("0,1,2,3", 2) == ["0,1", "2,3"]
    assert grid_module.device_slots(None, 1) == [None]
    prefix = grid_module.train_command_prefix(2)
    assert prefix[0] == "torchrun"
    assert prefix[prefix.index("--nproc_per_node") + 1] == "2"
    assert prefix[-3:] == ["-m", "top", "train"]
    assert grid_module.train_command_prefix(1)[1:] == ["-m", "top", "train"]
    with pytest.raises(UserError, match="multiple"):
        grid_module.device_slots("0,1,2", 2)
    with pytest.raises(UserError, match="--devices"):
        grid_module.device_slots(None, 2)
    with pytest.raises(UserError, match="GPU numbers"):
        grid_module.device_slots("0,gpu1", 1)


def test_dry_run_prints_commands_and_runs_nothing(fake, capsys):
    assert fake.run("--dry-run") == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4
    assert all("--output-dir" in line and "--learning-rate" in line for line in lines)
    assert fake.calls() == []


def test_promote_copies_the_winners_best(fake):
    stale = fake.out / "best"
    stale.mkdir(parents=True)
    (stale / "old.txt").write_text("old")
    assert fake.run("--promote") == 0
    best = fake.out / "best"
    assert sorted(p.name for p in best.iterdir()) == ["config.json", "zs.pt"]
    assert json.loads((best / "config.json").read_text()) == {"lr": 3e-5}


def test_the_train_command_can_come_from_the_environment(fake, monkeypatch):
    monkeypatch.setenv(grid_module.TRAIN_COMMAND_ENV, fake.command)
    grid = grid_module.load_grid(fake.grid)
    rows = grid_module.run_grid("sst2", grid, fake.out, options={"model": "m"})
    assert len(fake.calls()) == 4
    assert sum(r["best"] for r in rows) == 1


def test_a_model_is_required(fake, capsys):
    code = main(["grid", "--task", "sst2", "--grid", str(fake.grid), "--output-dir", str(fake.out),
                 "--train-command", fake.command])
    assert code == 2
    assert "--model" in capsys.readouterr().err


BAD_GRIDS = {
    "syntax": ("[grid]\nlearning_rate = [1e-5,\n", "not valid TOML"),
    "no grid table": ("[fixed]\nepochs = 3\n", "no [grid] table"),
    "unknown option": ("[grid]\nlearnin_rate = [1e-5]\n", "grid.learnin_rate is not an option"),
    "not a list": ("[grid]\nlearning_rate = 1e-5\n", "non-empty list"),
    "empty list": ("[grid]\nlearning_rate = []\n", "non-empty list"),
    "string value": ("[grid]\nlearning_rate = ['fast']\n", "grid.learning_rate = 'fast' is refused by `top train`"),
    "bool value": ("[grid]\nbin_num = [true]\n", "takes one number or string"),
    "not finite": ("[grid]\nlearning_rate = [nan]\n", "finite"),
    "bad choice": ("[grid]\nlearning_rate = [1e-5]\n[fixed]\ndevice = 'tpu'\n", "fixed.device = 'tpu' is refused"),
    "switch value": ("[grid]\nlearning_rate = [1e-5]\n[fixed]\nno_progress = 1\n", "write true or false"),
    "set by the grid": ("[grid]\nlearning_rate = [1e-5]\n[fixed]\noutput_dir = 'x'\n", "fixed.output_dir is not"),
    "duplicate": ("[grid]\nlearning_rate = [1e-5, 1e-5]\n", "twice"),
    "both tables": ("[grid]\nlearning_rate = [1e-5]\n[fixed]\nlearning_rate = 2e-5\n", "both in [grid] and [fixed]"),
    "unknown table": ("[grid]\nlearning_rate = [1e-5]\n[extra]\nx = 1\n", "unknown table"),
    "fixed-only in grid": ("[grid]\nmodel = ['a', 'b']\n", "put it under [fixed]"),
    "bad fixed": ("[grid]\nlearning_rate = [1e-5]\n[fixed]\nwarmup = 3\n", "fixed.warmup is not"),
    "sparsity out of range": ("[grid]\ntarget_sparsity = [0.3, 1.5]\n", "grid.target_sparsity = 1.5 is refused"),
    "zero bins": ("[grid]\nlearning_rate = [1e-5]\n[fixed]\nbin_num = 0\n", "fixed.bin_num = 0 is refused"),
    "unknown control": ("[grid]\nsparsity_control = ['pid']\n", "grid.sparsity_control = 'pid' is refused"),
    "epochs and steps": ("[grid]\nepochs = [1]\n[fixed]\nmax_steps = 3\n", "gives both epochs and max_steps"),
    "negative learning rate": ("[grid]\nlearning_rate = [-1e-5, 2e-5]\n",
                               "grid.learning_rate = -1e-05 is refused by `top train` (--learning-rate): -1e-05 is "
                               "out of range; give a number at least 0."),
    "overwrite set by the grid": ("[grid]\nlearning_rate = [1e-5]\n[fixed]\noverwrite_output_dir = true\n",
                                  "fixed.overwrite_output_dir is not"),
    "too many points": ("[grid]\nlearning_rate = [" + ", ".join(f"{i + 1}e-7" for i in range(101)) + "]\n"
                        "rank_loss_alpha = [" + ", ".join(f"{i + 1}e-6" for i in range(100)) + "]\n",
                        "has 10,100 points (101 x 100), more than the 10,000 a grid may have"),
}


@pytest.mark.parametrize("name", sorted(BAD_GRIDS))
def test_bad_grid_files_give_one_clear_error(tmp_path, capsys, name):
    text, expected = BAD_GRIDS[name]
    path = tmp_path / "bad.toml"
    path.write_text(text)
    code = main(["grid", "--task", "sst2", "--grid", str(path), "--model", "m", "--output-dir", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert expected in err
    assert str(path) in err
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_every_top_train_option_is_accepted_as_top_train_parses_it(fake):
    """Options the grid once copied by hand and missed, and a switch, reach the runs as given."""
    fake.grid.write_text(SMALL_GRID + textwrap.dedent(
        """
        layer_gate_init = 10.0
        distill_temperature = 3
        weight_decay = 0.01
        max_grad_norm = 0.5
        eval_batch_size = 64
        sparsity_control = "adaptive"
        best_rule = "nearest-target"
        eval_steps = "auto"
        no_progress = true
        """))
    assert fake.run() == 0
    argv = fake.calls()[0]["argv"]
    for flag, value in [("--layer-gate-init", "10"), ("--distill-temperature", "3"), ("--weight-decay", "0.01"),
                        ("--max-grad-norm", "0.5"), ("--eval-batch-size", "64"),
                        ("--sparsity-control", "adaptive"), ("--best-rule", "nearest-target"),
                        ("--eval-steps", "auto")]:
        assert argv[argv.index(flag) + 1] == value
    assert "--no-progress" in argv
    # and what the grid builds, `top train` itself accepts
    parsed = train_parser().parse_args(argv)
    assert parsed.layer_gate_init == 10.0 and parsed.eval_batch_size == 64 and parsed.no_progress is True
    assert parsed.sparsity_control == "adaptive" and parsed.best_rule == "nearest-target"
    assert parsed.eval_steps == "auto"



def train_parser() -> OneLineParser:
    """`top train`'s own command line, as `top train` builds it."""
    parser = OneLineParser(prog="top train")
    train_command.add_arguments(parser)
    return parser


def test_a_switch_on_by_default_is_turned_off_by_false(fake):
    fake.grid.write_text(SMALL_GRID + "teacher_cache = false\n")
    assert fake.run() == 0
    argv = fake.calls()[0]["argv"]
    assert "--no-teacher-cache" in argv and train_parser().parse_args(argv).teacher_cache is False


def test_a_missing_grid_file_is_a_user_error(tmp_path, capsys):
    code = main(["grid", "--task", "sst2", "--grid", str(tmp_path / "nope.toml"), "--model", "m",
                 "--output-dir", str(tmp_path / "o")])
    assert code == 2
    assert "does not exist" in capsys.readouterr().err


def test_an_unknown_task_is_a_user_error(fake, capsys):
    code = main(["grid", "--task", "sst3", "--grid", str(fake.grid), "--model", "m", "--output-dir", str(fake.out),
                 "--train-command", fake.command])
    assert code == 2
    assert "sst3" in capsys.readouterr().err


def test_the_real_top_train_runs_under_the_grid(tmp_path, monkeypatch):
    from builders import tiny_checkpoint, write_custom_csv

    monkeypatch.delenv(grid_module.TRAIN_COMMAND_ENV, raising=False)
    model = tiny_checkpoint(tmp_path / "dense", layers=3, pruned=False)
    train_file = write_custom_csv(tmp_path / "train.csv", n=16, seed=1)
    dev_file = write_custom_csv(tmp_path / "dev.csv", n=8, seed=2)
    grid_file = tmp_path / "g.toml"
    grid_file.write_text(textwrap.dedent(
        f"""
        [grid]
        learning_rate = [2e-5]
        rank_loss_alpha = [0.01, 0.001]

        [fixed]
        train_file = "{train_file.as_posix()}"
        validation_file = "{dev_file.as_posix()}"
        max_steps = 2
        eval_steps = 1
        save_steps = 1
        batch_size = 8
        max_seq_length = 16
        bin_num = 4
        topk = 2
        target_sparsity = 0.1
        device = "cpu"
        """))
    out = tmp_path / "out"
    code = main(["grid", "--task", "sst2", "--grid", str(grid_file), "--model", str(model), "--output-dir", str(out)])
    log = "\n".join(p.read_text(errors="replace") for p in out.glob("runs/*/train.log"))
    assert code == 0, log
    rows = json.loads((out / "grid.json").read_text())["runs"]
    assert [r["status"] for r in rows] == ["done", "done"]
    for row in rows:
        run_dir = out / "runs" / row["run_id"]
        assert (run_dir / "summary.json").is_file()
        assert (run_dir / "last").is_dir()
        assert row["metric"] is not None
    # A second call finds both runs finished and launches nothing.
    before = [(out / "runs" / r["run_id"] / "train.log").stat().st_size for r in rows]
    assert main(["grid", "--task", "sst2", "--grid", str(grid_file), "--model", str(model),
                 "--output-dir", str(out)]) == 0
    assert [(out / "runs" / r["run_id"] / "train.log").stat().st_size for r in rows] == before
    # A run that died after its first best/ and before its first last/ starts again: what it left is moved
    # aside into previous-1/, not deleted, and the grid's own files stay where they are.
    died = out / "runs" / rows[0]["run_id"]
    if not (died / "best").exists():  # (this short run may qualify no evaluation for best/)
        (died / "last").rename(died / "best")
    else:
        (died / "last").rename(tmp_path / "last-gone")
    status = json.loads((died / grid_module.STATUS_FILE).read_text())
    (died / grid_module.STATUS_FILE).write_text(json.dumps(dict(status, status="failed")))
    old_best = (died / "best" / "model.safetensors").read_bytes()
    assert main(["grid", "--task", "sst2", "--grid", str(grid_file), "--model", str(model),
                 "--output-dir", str(out)]) == 0
    assert (died / "previous-1" / "best" / "model.safetensors").read_bytes() == old_best
    assert (died / "last").is_dir() and (died / grid_module.LOG_FILE).stat().st_size > before[0]
    assert json.loads((died / grid_module.STATUS_FILE).read_text())["attempts"] == 2


def test_the_ray_backend_without_ray_says_what_to_install(fake, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails, as where Ray is not installed
    assert fake.run("--backend", "ray") == 2
    err = capsys.readouterr().err
    assert "pip install -e '.[ray]' in a clone of this project" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert fake.calls() == []


@pytest.mark.parametrize("extra, named", [(("--address", "auto"), "--address"),
                                          (("--backend", "ray", "--devices", "0,1"), "--devices"),
                                          (("--backend", "ray", "--max-failures", "-1"), "--max-failures")])
def test_options_of_the_other_backend_are_refused(fake, capsys, extra, named):
    assert fake.run(*extra) == 2
    err = capsys.readouterr().err
    assert named in err and len(err.strip().splitlines()) == 1
    assert fake.calls() == []


def test_the_ray_reporter_sends_each_evaluation_once(tmp_path):
    from top.training.grid_ray import EvalReporter

    log = tmp_path / "log.jsonl"
    sent = []
    reporter = EvalReporter(log, sent.append, "r1")
    reporter()  # no log yet
    log.write_text('{"step": 1, "loss": 0.5}\n{"step": 2, "score": 0.7, "expected_sparsity": 0.3}\n{"step": 3, "sc')
    reporter()
    assert sent == [{"run_id": "r1", "step": 2, "score": 0.7, "expected_sparsity": 0.3,
                     "expected_sequence_sparsity": None}]
    # a resume rewrites the log (a new file, as top train's atomic write leaves it) cut back to step 2,
    # and writes on: step 2 is not sent again
    fresh = tmp_path / "log.tmp"
    fresh.write_text('{"step": 2, "score": 0.7, "expected_sparsity": 0.3}\n{"step": 4, "score": 0.8}\n')
    os.replace(fresh, log)
    reporter()
    assert [r["step"] for r in sent] == [2, 4]


def test_a_fresh_start_moves_aside_what_an_attempt_left_and_a_resume_does_not(fake, monkeypatch):
    """The grid owns runs/<id>/: a run started afresh gets --overwrite-output-dir (an attempt that died
    before its first last/ may have left a best/), a resumed one --resume alone."""
    monkeypatch.setenv("FAKE_INTERRUPT", "lr3e-05_alpha0.01")
    assert fake.run() == 1
    assert fake.run() == 0
    calls = fake.calls()
    assert all(c["argv"][-1] == "--overwrite-output-dir" for c in calls[:4])
    assert calls[4]["argv"][-1] == "--resume" and "--overwrite-output-dir" not in calls[4]["argv"]
    assert train_parser().parse_args(calls[0]["argv"]).overwrite_output_dir is True


def grid_state(out: Path):
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("extra, named", [
    (("--model", "other-dir"), "--model student-dir, not other-dir"),
    (("--teacher", "teacher-dir"), "--teacher student-dir, not teacher-dir"),
    (("--train-file", "t.csv", "--validation-file", "d.csv"), "--task sst2, not None"),
])
def test_a_rerun_with_other_inputs_is_refused_and_the_old_results_stay(fake, capsys, extra, named):
    """Rerunning into the folder with another model (or teacher, or data) never reports the old model's
    runs as this grid's finished ones, nor promotes them: one sentence, exit 2, nothing launched or written."""
    assert fake.run() == 0
    capsys.readouterr()
    before = grid_state(fake.out)
    argv = ["grid", "--task", "SST-2", "--grid", str(fake.grid), "--output-dir", str(fake.out), "--train-command",
            fake.command, "--promote"]
    if "--model" not in extra:
        argv += ["--model", "student-dir"]
    for dry_run in ((), ("--dry-run",)):
        assert main(argv + list(extra) + list(dry_run)) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("error: ") and named in err, err
        assert "another --output-dir" in err and str(fake.out / "runs") in err
    assert len(fake.calls()) == 4 and grid_state(fake.out) == before


def test_a_rerun_with_another_fixed_option_is_refused_and_one_with_another_device_goes_on(fake, capsys):
    assert fake.run() == 0
    capsys.readouterr()
    fake.grid.write_text(SMALL_GRID.replace("max_steps = 10", "max_steps = 20"))
    assert fake.run() == 2
    assert "--max-steps 10, not 20" in capsys.readouterr().err
    fake.grid.write_text(SMALL_GRID)
    assert fake.run("--device", "cpu") == 0  # how a run runs, not what it is trained from
    assert len(fake.calls()) == 4


def test_a_model_changed_in_place_is_refused(fake, tmp_path, capsys):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "bert"}')
    argv = ["grid", "--task", "sst2", "--grid", str(fake.grid), "--model", str(model), "--output-dir", str(fake.out),
            "--train-command", fake.command]
    assert main(argv) == 0
    status = json.loads((fake.out / "runs" / "lr2e-05_alpha0.01" / grid_module.STATUS_FILE).read_text())
    assert status["inputs"]["options"]["model"] == str(model.resolve()) and status["inputs"]["contents"]["model"]
    (model / "config.json").write_text('{"model_type": "bert", "hidden_size": 8}')
    assert main(argv) == 2
    assert "its files have changed since" in capsys.readouterr().err
    assert len(fake.calls()) == 4


def test_a_status_from_before_inputs_were_recorded_is_compared_by_its_command(fake, capsys):
    assert fake.run() == 0
    capsys.readouterr()
    for file in fake.out.glob(f"runs/*/{grid_module.STATUS_FILE}"):
        status = json.loads(file.read_text())
        del status["inputs"]
        status["command"] = [c for c in status["command"] if c != "--overwrite-output-dir"]
        file.write_text(json.dumps(status))
    assert fake.run() == 0 and len(fake.calls()) == 4  # the same command: still this grid's
    assert fake.run("--teacher", "t") == 2
    assert "other options (see" in capsys.readouterr().err


def test_a_resumed_attempt_records_its_step(fake, monkeypatch):
    monkeypatch.setenv("FAKE_INTERRUPT", "lr3e-05_alpha0.01")
    assert fake.run() == 1
    assert fake.run() == 0
    status = json.loads((fake.out / "runs" / "lr3e-05_alpha0.01" / grid_module.STATUS_FILE).read_text())
    assert [a["resume"] for a in status["attempt_log"]] == [False, True]
    assert [a["returncode"] for a in status["attempt_log"]] == [137, 0]
    assert grid_launch.resumed_step(b"x\n12:00 INFO top: resumed from /o/last at step 8\n") == 8
