"""The long-document tasks (20news, imdb, yelp at 512 tokens) through every command that takes --task.

Each task's files are built in its layout under --data-dir (JSON lines, one {"text", "label"} per
line; Yelp's stars 1..5 as the original's converter writes them), from the tiny vocabulary, with
documents longer than 512 word pieces, so the 512-token cut is exercised.
"""

from __future__ import annotations

import json
import random
import textwrap
from pathlib import Path
from typing import Dict, List

import pytest
from builders import FINISHED, WORDS, single_thread, tiny_model_dir

from top import cli
from top.data.tasks import get_task
from top.storage.safeload import read_torch_file

one_thread = pytest.fixture(scope="module", autouse=True)(single_thread)

LENGTH = "512"


def documents(task: str, n: int, seed: int) -> List[dict]:
    """``n`` records of 100 to 700 words whose label is told by the first word (a learnable cue)."""
    spec = get_task(task)
    rng = random.Random(seed)
    records = []
    for i in range(n):
        label = i % spec.num_labels
        cue = WORDS[label % len(WORDS)]
        words = [cue] + [rng.choice(WORDS) for _ in range(rng.randint(100, 700))]
        records.append({"text": " ".join(words), "label": int(spec.file_labels[label]) if task == "yelp" else label})
    return records


def write_task(data_dir: Path, task: str, dev_name: str = "dev.jsonl") -> Path:
    folder = data_dir / task
    folder.mkdir(parents=True, exist_ok=True)
    for name, n, seed in (("train.jsonl", 2 * get_task(task).num_labels, 1), (dev_name, 10, 2)):
        (folder / name).write_text("".join(json.dumps(r) + "\n" for r in documents(task, n, seed)), encoding="utf-8")
    return data_dir


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Dict[str, Path]:
    root = tmp_path_factory.mktemp("long")
    data = root / "data"
    write_task(data, "20news")
    write_task(data, "imdb", dev_name="dev.json")  # the name convert_yelp.py gives its files
    write_task(data, "yelp")
    return {"root": root, "data": data, "model": tiny_model_dir(root / "model", layers=3, max_position_embeddings=512)}


def common(world: Dict[str, Path], task: str, out: Path) -> List[str]:
    return ["--task", task, "--data-dir", str(world["data"]), "--max-seq-length", LENGTH, "--device", "cpu",
            "--no-progress", "--output-dir", str(out)]


@pytest.mark.parametrize("task", ["20news", "imdb", "yelp"])
def test_finetune_train_and_eval_take_the_task_at_512(world, task, tmp_path):
    spec = get_task(task)
    dense, pruned, scored = tmp_path / "dense", tmp_path / "pruned", tmp_path / "eval"
    assert cli.main(["finetune", "--model", str(world["model"]), "--max-steps", "2", "--batch-size", "8",
                     *common(world, task, dense)]) == 0
    config = json.loads((dense / "best" / "config.json").read_text())
    assert [config["id2label"][str(i)] for i in range(spec.num_labels)] == list(spec.labels)
    assert cli.main(["train", "--model", str(dense / "best"), "--teacher", str(dense / "best"), "--max-steps", "3",
                     "--batch-size", "8", "--target-sparsity", "0.5", *common(world, task, pruned)]) in FINISHED
    # No --bin-num, --topk or --warmup-epochs: the task's preset gives them.
    settings = json.loads((pruned / "run.json").read_text())
    assert (spec.preset.bin_num, spec.preset.topk) == _settings(settings, "bin_num", "topk")
    gates = read_torch_file(pruned / "last" / "l0_module.pt")
    assert gates["token_loga"].shape[1] == spec.preset.bin_num
    assert cli.main(["eval", "--checkpoint", str(pruned / "last"), "--task", task, "--data-dir", str(world["data"]),
                     "--max-seq-length", LENGTH, "--device", "cpu", "--no-progress", "--output-dir", str(scored)]) == 0
    (record,) = [json.loads(p.read_text()) for p in scored.glob("*.json")]
    assert record["n_examples"] == 10 and "accuracy" in record["metrics"]
    assert record["max_seq_length"] == 512 and record["data"].startswith(str(world["data"] / task))
    # FLOPs are counted against 512 tokens: the shorter documents make the padded reduction exceed 1.
    assert record["exact_flops_reduction"] > 1.05 * record["exact_flops_reduction_unpadded"]


def _settings(record: dict, *keys: str):
    """The values of ``keys`` wherever run.json keeps the resolved settings."""
    found = {}

    def walk(value):
        if isinstance(value, dict):
            for key, inner in value.items():
                if key in keys and not isinstance(inner, (dict, list)) and inner is not None:
                    found.setdefault(key, inner)
                walk(inner)
        elif isinstance(value, list):
            for inner in value:
                walk(inner)

    walk(record.get("settings", record))
    return tuple(found.get(key) for key in keys)


def test_grid_runs_the_task(world, tmp_path):
    dense = tmp_path / "dense"
    assert cli.main(["finetune", "--model", str(world["model"]), "--max-steps", "1", "--batch-size", "8",
                     *common(world, "20news", dense)]) == 0
    grid_file = tmp_path / "g.toml"
    grid_file.write_text(textwrap.dedent(
        f"""
        [grid]
        learning_rate = [2e-5]

        [fixed]
        max_steps = 2
        batch_size = 8
        max_seq_length = {LENGTH}
        target_sparsity = 0.5
        device = "cpu"
        """))
    out = tmp_path / "grid"
    argv = ["grid", "--task", "20_newsgroups", "--grid", str(grid_file), "--model", str(dense / "best"),
            "--data-dir", str(world["data"]), "--output-dir", str(out)]
    code = cli.main(argv)
    log = "\n".join(p.read_text(errors="replace") for p in out.glob("runs/*/train.log"))
    assert code == 0, log
    (row,) = json.loads((out / "grid.json").read_text())["runs"]
    assert row["status"] == "done" and row["metric"] is not None
    run = json.loads((out / "runs" / row["run_id"] / "run.json").read_text())
    assert run["args"]["task"] == "20news" and run["args"]["max_seq_length"] == 512


def test_reproduce_takes_a_results_table_row_for_the_task(world, tmp_path):
    """No checkpoint is published for these tasks; a table of one's own with a row for one runs."""
    from builders import tiny_checkpoint

    tiny_checkpoint(tmp_path / "checkpoints" / "news-pruned", num_labels=20, layers=3, max_position_embeddings=512)
    table = tmp_path / "table.toml"
    table.write_text('[20_newsgroups]\nmetric = "accuracy"\nscore = 5.0\nflops_reduction = 1.5\n'
                     'checkpoint = "someone/news-pruned"\nscore_tolerance = 100.0\nflops_tolerance = 10.0\n'
                     'dev_examples = 10\n')
    out = tmp_path / "reproduce"
    assert cli.main(["reproduce", "--results-table", str(table), "--checkpoint-dir", str(tmp_path / "checkpoints"),
                     "--data-dir", str(world["data"]), "--device", "cpu", "--no-progress",
                     "--output-dir", str(out)]) == 0
    (result,) = json.loads((out / "report.json").read_text())["tasks"]
    assert (result["task"], result["status"], result["n_examples"]) == ("20news", "pass", 10)
