"""The seed-compatible shell entry points and the two chore scripts.

The shell scripts run with a stub `python` first on PATH that records its argv (and answers
the CUDA probe), so the tests check the exact `top` command each maps to, and that `top`'s own
parsers accept it. The GLUE round trip runs on a small dataset built here.
"""

import importlib.util
import json
import os
import random
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

from top.cli import build_parser
from top.data.tasks import canonical_task_name

ROOT = Path(__file__).resolve().parents[1]
EVAL_SCRIPT = ROOT / "scripts" / "run_Evaluation.sh"
TRAIN_SCRIPT = ROOT / "run_token_prune.sh"
SEED_VARIABLES = ("TASK SPARSITY PRUNE_LOCATION LEARNING_RATE REG_LEARNING_RATE DISTILL_RANK_LOSS_ALPHA "
                  "WARMUP_EPOCHS BIN_NUM TOPK EPOCHS EVAL_STEP DISTILLATION_PATH SPARSITY_EPSILON EX_CATE "
                  "SUFFIX GLUE_DIR OUTPUT_DIR PYTHON CUDA_VISIBLE_DEVICES").split()

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")

RECORDER = """
import json, os, sys
if sys.argv[1:2] == ["-c"]:  # the scripts' CUDA probe
    print(os.environ.get("STUB_CUDA", "0"))
    sys.exit(0)
with open(os.environ["STUB_LOG"], "a") as log:
    log.write(json.dumps({"argv": sys.argv[1:], "cuda": os.environ.get("CUDA_VISIBLE_DEVICES")}) + "\\n")
"""


@pytest.fixture
def stub(tmp_path):
    """A `python` on PATH that records each call; `stub.run(script, *args, env)` runs a script."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    recorder = tmp_path / "recorder.py"
    recorder.write_text(RECORDER)
    python = bin_dir / "python"
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{recorder}" "$@"\n')
    python.chmod(0o755)
    log = tmp_path / "calls.jsonl"

    class Stub:
        @staticmethod
        def run(script, *args, **env):
            base = {k: v for k, v in os.environ.items() if k not in SEED_VARIABLES}
            base.update(PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", STUB_LOG=str(log))
            base.update({k: str(v) for k, v in env.items()})
            return subprocess.run(["bash", str(script), *args], env=base, cwd=str(tmp_path),
                                  capture_output=True, text=True, timeout=60)

        @staticmethod
        def calls():
            return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    return Stub


def _options(argv):
    """`--flag value` pairs after `-m top <command>` into a dict (flags without a value -> True)."""
    opts, i = {}, 0
    while i < len(argv):
        if argv[i].startswith("--"):
            if i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                opts[argv[i]] = argv[i + 1]
                i += 2
                continue
            opts[argv[i]] = True
        i += 1
    return opts


# --------------------------------------------------------------------------- run_Evaluation.sh


def test_evaluation_maps_onto_top_eval_with_the_original_settings(stub):
    result = stub.run(EVAL_SCRIPT, "CoLA", "ckpt/bert-base-uncased-top-pruned-cola", "1", STUB_CUDA=1)
    assert result.returncode == 0, result.stderr
    assert "notice" not in result.stderr
    (call,) = stub.calls()
    assert call["cuda"] == "1"
    argv = call["argv"]
    assert argv[:3] == ["-m", "top", "eval"]
    opts = _options(argv[3:])
    assert opts["--task"] == "CoLA"
    assert opts["--checkpoint"] == "ckpt/bert-base-uncased-top-pruned-cola"
    assert (opts["--mode"], opts["--max-seq-length"], opts["--batch-size"]) == ("faithful", "256", "32")
    assert opts["--device"] == "cuda"
    assert "--data-dir" not in opts  # no GLUE_DIR: the hub copy
    parsed = build_parser(argv[2:]).parse_args(argv[2:])  # `top eval` accepts exactly this
    assert parsed.mode == "faithful" and parsed.max_seq_length == 256 and parsed.batch_size == 32


def test_evaluation_falls_back_to_cpu_with_a_notice(stub):
    result = stub.run(EVAL_SCRIPT, "sst2", "ckpt", "0", STUB_CUDA=0)
    assert result.returncode == 0, result.stderr
    assert "notice" in result.stderr and "CPU" in result.stderr
    (call,) = stub.calls()
    assert _options(call["argv"][3:])["--device"] == "cpu"


def test_evaluation_reads_glue_dir(stub, tmp_path):
    result = stub.run(EVAL_SCRIPT, "MNLI", "ckpt", "0", GLUE_DIR=tmp_path / "glue", OUTPUT_DIR=tmp_path / "o")
    assert result.returncode == 0, result.stderr
    opts = _options(stub.calls()[0]["argv"][3:])
    assert opts["--data-dir"] == str(tmp_path / "glue")
    assert opts["--output-dir"] == str(tmp_path / "o")


@pytest.mark.parametrize("spelling,task", [("CoLA", "cola"), ("SST2", "sst2"), ("STSB", "stsb"), ("MNLI", "mnli"),
                                           ("QQP", "qqp"), ("mrpc", "mrpc"), ("rte", "rte"), ("qnli", "qnli")])
def test_evaluation_accepts_the_seeds_task_spellings(stub, spelling, task):
    assert stub.run(EVAL_SCRIPT, spelling, "ckpt", "0").returncode == 0
    assert canonical_task_name(_options(stub.calls()[0]["argv"][3:])["--task"]) == task


def test_evaluation_dry_run_prints_the_command(stub):
    result = stub.run(EVAL_SCRIPT, "--dry-run", "STSB", "my ckpt", "3", STUB_CUDA=1)
    assert result.returncode == 0, result.stderr
    line = result.stdout.strip()
    assert line.startswith("CUDA_VISIBLE_DEVICES=3 python -m top eval --task STSB --checkpoint my\\ ckpt")
    assert stub.calls() == []


def test_evaluation_usage_errors(stub):
    result = stub.run(EVAL_SCRIPT, "CoLA")
    assert result.returncode == 2
    assert "usage" in result.stderr
    assert stub.calls() == []


def test_evaluation_end_to_end_prints_metric_and_flops(tmp_path):
    """The seed's command, unchanged, with the real `top eval` on a tiny checkpoint."""
    from builders import tiny_checkpoint, write_cola_dev

    checkpoint = tiny_checkpoint(tmp_path / "bert-base-uncased-top-pruned-cola", layers=3, prune_locations=[1, 2])
    glue = tmp_path / "glue"
    write_cola_dev(glue, n=12)
    env = {k: v for k, v in os.environ.items() if k not in SEED_VARIABLES}
    env.update(PYTHON=sys.executable, GLUE_DIR=str(glue), OUTPUT_DIR=str(tmp_path / "out"), CUDA_VISIBLE_DEVICES="")
    result = subprocess.run(["bash", str(EVAL_SCRIPT), "CoLA", str(checkpoint), ""], env=env, cwd=str(tmp_path),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "matthews_correlation" in result.stdout and "FLOPs reduction" in result.stdout
    record = json.loads((tmp_path / "out" / "cola.json").read_text())
    assert record["n_examples"] == 12 and record["mode"] == "faithful" and record["max_seq_length"] == 256


# --------------------------------------------------------------------------- run_token_prune.sh

SST2_EXAMPLE = {
    "--task": "SST2", "--target-sparsity": "0.4", "--prune-location": "2,3,4,5,6,7,8,9,10,11",
    "--learning-rate": "1e-5", "--reg-learning-rate": "0.02", "--rank-loss-alpha": "0.01",
    "--warmup-epochs": "10", "--bin-num": "25", "--topk": "20", "--epochs": "40", "--eval-steps": "100",
    "--model": "senfu/bert-base-uncased-finetuned-sst2", "--teacher": "senfu/bert-base-uncased-finetuned-sst2",
    "--sparsity-epsilon": "0.01",
    "--output-dir": "out/token_prune/SST2/run_fix/s0.4_lr1e-5_reglr0.02_alpha0.01_warmup10_bin25",
}


def _train_call(stub):
    (call,) = stub.calls()
    assert call["argv"][:3] == ["-m", "top", "train"]
    return call["argv"], _options(call["argv"][3:])


def _check_top_train_accepts(argv):
    if not (ROOT / "top" / "train.py").exists():
        return
    args = build_parser(argv[2:]).parse_args(argv[2:])
    assert args.command == "train"


def test_token_prune_defaults_are_the_seeds_sst2_example(stub):
    result = stub.run(TRAIN_SCRIPT)
    assert result.returncode == 0, result.stderr
    argv, opts = _train_call(stub)
    assert opts == SST2_EXAMPLE
    _check_top_train_accepts(argv)


VARIABLES = {
    "SPARSITY": ("--target-sparsity", "0.55"),
    "PRUNE_LOCATION": ("--prune-location", "3,4,5,6,7,8,9,10,11"),
    "LEARNING_RATE": ("--learning-rate", "3e-5"),
    "REG_LEARNING_RATE": ("--reg-learning-rate", "0.04"),
    "DISTILL_RANK_LOSS_ALPHA": ("--rank-loss-alpha", "0.001"),
    "WARMUP_EPOCHS": ("--warmup-epochs", "5"),
    "BIN_NUM": ("--bin-num", "50"),
    "TOPK": ("--topk", "10"),
    "EPOCHS": ("--epochs", "3"),
    "EVAL_STEP": ("--eval-steps", "7"),
    "SPARSITY_EPSILON": ("--sparsity-epsilon", "0.02"),
    "GLUE_DIR": ("--data-dir", "/data/glue"),
    "OUTPUT_DIR": ("--output-dir", "/runs/x"),
}


@pytest.mark.parametrize("name", sorted(VARIABLES))
def test_token_prune_maps_each_variable(stub, name):
    flag, value = VARIABLES[name]
    result = stub.run(TRAIN_SCRIPT, **{name: value})
    assert result.returncode == 0, result.stderr
    argv, opts = _train_call(stub)
    assert opts[flag] == value
    expected = dict(SST2_EXAMPLE, **{flag: value})
    expected.pop("--output-dir")
    opts.pop("--output-dir")
    assert opts == expected  # nothing else moved
    _check_top_train_accepts(argv)


def test_token_prune_empty_values_and_max_steps_leave_flags_out(stub):
    assert stub.run(TRAIN_SCRIPT, "BIN_NUM=", "--", "--max-steps", "5").returncode == 0
    argv, opts = _train_call(stub)
    assert "--bin-num" not in opts and "--epochs" not in opts
    assert opts["--max-steps"] == "5" and opts["--topk"] == "20"
    _check_top_train_accepts(argv)


def test_token_prune_distillation_path_is_student_and_teacher(stub):
    assert stub.run(TRAIN_SCRIPT, DISTILLATION_PATH="/models/sst2-dense").returncode == 0
    _, opts = _train_call(stub)
    assert opts["--model"] == opts["--teacher"] == "/models/sst2-dense"


def test_token_prune_name_value_arguments_win_over_the_environment(stub):
    result = stub.run(TRAIN_SCRIPT, "LEARNING_RATE=4e-5", "TOPK=5", "--", "--device", "cpu", "--max-steps", "9",
                      LEARNING_RATE="6e-5")
    assert result.returncode == 0, result.stderr
    argv, opts = _train_call(stub)
    assert opts["--learning-rate"] == "4e-5" and opts["--topk"] == "5"
    assert argv[-4:] == ["--device", "cpu", "--max-steps", "9"]
    assert "lr4e-5" in opts["--output-dir"]


def test_token_prune_other_tasks_take_the_task_preset(stub):
    result = stub.run(TRAIN_SCRIPT, TASK="CoLA", DISTILLATION_PATH="/models/cola-dense")
    assert result.returncode == 0, result.stderr
    argv, opts = _train_call(stub)
    assert opts["--task"] == "CoLA"
    for flag in ("--target-sparsity", "--bin-num", "--topk", "--warmup-epochs", "--epochs", "--prune-location"):
        assert flag not in opts  # left to `top train`, which reads the CoLA preset
    assert opts["--learning-rate"] == "1e-5" and opts["--eval-steps"] == "100"
    _check_top_train_accepts(argv)


def test_token_prune_other_tasks_need_a_teacher(stub):
    result = stub.run(TRAIN_SCRIPT, TASK="MNLI")
    assert result.returncode == 2
    assert "DISTILLATION_PATH" in result.stderr
    assert stub.calls() == []


def test_token_prune_rejects_unknown_settings(stub):
    result = stub.run(TRAIN_SCRIPT, "BINNUM=3")
    assert result.returncode == 2
    assert "BINNUM" in result.stderr and "BIN_NUM" in result.stderr
    assert stub.calls() == []


@pytest.mark.parametrize("name,meant", [("TOP_K", "TOPK"), ("SPARSITIY", "SPARSITY"), ("EVAL_STEPS", "EVAL_STEP"),
                                        ("EPOCH", "EPOCHS"), ("LEARNIG_RATE", "LEARNING_RATE"),
                                        ("distillation_path", "DISTILLATION_PATH")])
def test_token_prune_reports_misspelt_environment_variables(stub, name, meant):
    result = stub.run(TRAIN_SCRIPT, **{name: "1"})
    assert result.returncode == 2
    assert f"{name} (did you mean {meant}?)" in result.stderr
    assert stub.calls() == []


@pytest.mark.parametrize("how", ["argument", "environment"])
def test_token_prune_reports_the_seeds_retired_variables(stub, how):
    if how == "argument":
        result = stub.run(TRAIN_SCRIPT, "DISTILL_LAYER_LOSS_ALPHA=0.9")
    else:
        result = stub.run(TRAIN_SCRIPT, PRUNING_TYPE="token+pruner")
    assert result.returncode == 2
    assert "not used by token pruning" in result.stderr
    assert stub.calls() == []


def test_token_prune_ignores_unrelated_environment_variables(stub):
    result = stub.run(TRAIN_SCRIPT, MY_TASK_LIST="a", TMP="/tmp", TERM="xterm", HOME="/root", LANG="C", USER="u")
    assert result.returncode == 0, result.stderr


def test_token_prune_dry_run_prints_the_command(stub):
    result = stub.run(TRAIN_SCRIPT, "--dry-run", "SPARSITY=0.5")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("python -m top train --task SST2 ")
    assert "--target-sparsity 0.5" in result.stdout
    assert stub.calls() == []


def test_token_prune_end_to_end_with_the_real_top_train(tmp_path):
    """The seed's command with the real `top train` on a tiny model and SST-2-layout files."""
    from builders import FINISHED, sentences, tiny_checkpoint

    from top.data.files import Example
    from top.data.glue import write_glue_tsv

    model = tiny_checkpoint(tmp_path / "dense", layers=3, pruned=False)
    glue = tmp_path / "glue"
    for split, n in (("train", 16), ("dev", 8)):
        rows = [Example(s, None, i % 2) for i, s in enumerate(sentences(n, seed=n))]
        write_glue_tsv("sst2", rows, glue / "SST-2" / f"{split}.tsv", split)
    env = {k: v for k, v in os.environ.items() if k not in SEED_VARIABLES}
    env.update(PYTHON=sys.executable, GLUE_DIR=str(glue), DISTILLATION_PATH=str(model), PRUNE_LOCATION="1,2",
               BIN_NUM="4", TOPK="2", EVAL_STEP="1", OUTPUT_DIR=str(tmp_path / "run"))
    result = subprocess.run(["bash", str(TRAIN_SCRIPT), "--", "--max-steps", "2", "--device", "cpu",
                             "--batch-size", "8", "--max-seq-length", "16", "--no-progress"],
                            env=env, cwd=str(tmp_path), capture_output=True, text=True, timeout=300)
    assert result.returncode in FINISHED, result.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["metric"] == "accuracy" and summary["steps"] == 2
    assert (tmp_path / "run" / "last").is_dir()


# --------------------------------------------------------------------------- the chore scripts


def _load_script(name):
    spec = importlib.util.spec_from_file_location(f"script_{name}", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_download_checkpoints_fetches_into_repo_name_dirs_and_verifies(tmp_path, monkeypatch, capsys):
    from builders import tiny_checkpoint

    from top.storage import hub

    download = _load_script("download_checkpoints")
    fetched = []

    def fake_download(repo_id, output_dir, progress=True):
        fetched.append(repo_id)
        return tiny_checkpoint(Path(output_dir) / hub.repo_name(repo_id), layers=2, prune_locations=[1])

    monkeypatch.setattr(hub, "download_checkpoint", fake_download)
    assert download.main(["--tasks", "CoLA,sst2", "--output-dir", str(tmp_path / "ckpts"), "--no-progress"]) == 0
    assert fetched == ["senfu/bert-base-uncased-top-pruned-cola", "senfu/bert-base-uncased-top-pruned-sst2"]
    assert (tmp_path / "ckpts" / "bert-base-uncased-top-pruned-cola" / "config.json").is_file()

    fetched.clear()
    assert download.main(["--output-dir", str(tmp_path / "all"), "--no-progress"]) == 0
    assert "rte: skipped" in capsys.readouterr().out
    assert len(fetched) == 7 and not any(r.endswith("-rte") for r in fetched)


def test_download_checkpoints_reports_a_damaged_copy(tmp_path, monkeypatch, capsys):
    from builders import tiny_checkpoint

    from top.storage import hub

    download = _load_script("download_checkpoints")

    def broken_download(repo_id, output_dir, progress=True):
        path = tiny_checkpoint(Path(output_dir) / hub.repo_name(repo_id), layers=2, prune_locations=[1])
        weights = next(p for p in path.iterdir() if p.name in ("pytorch_model.bin", "model.safetensors"))
        weights.write_bytes(weights.read_bytes()[:100])  # a truncated file
        return path

    monkeypatch.setattr(hub, "download_checkpoint", broken_download)
    assert download.main(["--tasks", "mrpc", "--output-dir", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "bert-base-uncased-top-pruned-mrpc" in err and "run again" in err


def test_download_checkpoints_rejects_tasks_without_a_checkpoint(tmp_path, capsys):
    download = _load_script("download_checkpoints")
    assert download.main(["--tasks", "rte", "--output-dir", str(tmp_path)]) == 2
    assert "rte" in capsys.readouterr().err
    assert download.main(["--tasks", "sst3", "--output-dir", str(tmp_path)]) == 2


def _hub_rows(task, split, n, seed):
    """Rows as the `datasets` glue builder gives them, with quotes and odd characters."""
    rng = random.Random(seed)
    words = ['the', 'film', '"quoted"', "isn't", 'good', 'bad', 'naïve', '--', "''", 'a', 'plot']
    sentence = lambda: " ".join(rng.choice(words) for _ in range(rng.randint(1, 9)))  # noqa: E731
    rows = {"idx": list(range(n))}
    if task.hub_text_b:
        rows[task.hub_text_a] = [sentence() for _ in range(n)]
        rows[task.hub_text_b] = [sentence() for _ in range(n)]
    else:
        rows[task.hub_text_a] = [sentence() for _ in range(n)]
    if task.is_regression:
        rows["label"] = [rng.uniform(0, 5) for _ in range(n)]
    else:
        rows["label"] = [rng.randrange(task.num_labels) for _ in range(n)]
    return rows


@pytest.mark.parametrize("task_name", ["cola", "sst2", "mnli", "stsb", "qqp", "mrpc", "rte", "qnli",
                                       "20news", "imdb", "yelp"])
def test_prepare_glue_round_trips_through_top_eval_loader(tmp_path, monkeypatch, task_name):
    try:
        import datasets

        def as_dataset(rows):
            return datasets.Dataset.from_dict(rows)
    except ImportError:  # the pinned stack has no `datasets`: a stand-in module that yields row dicts
        datasets = types.ModuleType("datasets")
        monkeypatch.setitem(sys.modules, "datasets", datasets)

        def as_dataset(rows):
            return [dict(zip(rows, values)) for values in zip(*rows.values())]
    from top.data.glue import load_glue_split
    from top.data.hub_copy import load_hub_split
    from top.data.loading import load_task_data
    from top.data.tasks import get_task

    task = get_task(task_name)
    requests = []

    def fake_load_dataset(path, config, split):
        requests.append((path, config, split))
        seed = {"train": 1}.get(split, 2)
        return as_dataset(_hub_rows(task, split, 25 if split == "train" else 11, seed))

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset, raising=False)
    prepare = _load_script("prepare_glue")
    glue = tmp_path / "glue"
    assert prepare.main(["--output-dir", str(glue), "--tasks", task_name.upper()]) == 0
    config = task.hub_config or None
    assert sorted(requests, key=str) == sorted([(task.hub_path, config, task.hub_dev_split),
                                                (task.hub_path, config, "train")], key=str)
    assert (glue / task.glue_dir / task.dev_file).is_file()
    for split in ("dev", "train"):
        from_files = load_glue_split(task, glue, split)
        assert from_files == load_hub_split(task, split)
        assert len(from_files) == (25 if split == "train" else 11)
    # What `top eval` reads with --data-dir equals what it reads from the hub.
    offline = load_task_data(task_name, str(glue), max_seq_length=128, splits=("dev",))
    online = load_task_data(task_name, None, max_seq_length=128, splits=("dev",))
    assert offline.dev == online.dev
    assert offline.num_labels == online.num_labels


def test_prepare_glue_reports_an_unknown_task(tmp_path, capsys):
    prepare = _load_script("prepare_glue")
    assert prepare.main(["--output-dir", str(tmp_path), "--tasks", "wnli"]) == 2
    assert "wnli" in capsys.readouterr().err


@pytest.mark.parametrize("failure", ["no datasets", "hub unreachable"])
def test_prepare_glue_does_not_tell_the_user_to_run_itself(tmp_path, monkeypatch, capsys, failure):
    if failure == "no datasets":
        monkeypatch.setitem(sys.modules, "datasets", None)  # `import datasets` raises ImportError
    else:
        datasets = types.ModuleType("datasets")

        def unreachable(*args, **kwargs):
            raise ConnectionError("Couldn't reach 'glue' on the Hub (LocalEntryNotFoundError)")

        datasets.load_dataset = unreachable
        monkeypatch.setitem(sys.modules, "datasets", datasets)
    prepare = _load_script("prepare_glue")
    assert prepare.main(["--output-dir", str(tmp_path / "glue"), "--tasks", "cola", "--splits", "dev"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert "prepare_glue" not in err and "by hand" in err
    if failure == "no datasets":
        assert "pip install -e '.[data]'" in err
