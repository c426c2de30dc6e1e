"""`top finetune`: the dense teacher in Hugging Face layout, best and last, with the paper's defaults."""

from __future__ import annotations

import json

import pytest
import torch
from builders import FINISHED, finetune_argv, read_log, single_thread, write_data

from top import cli
from top.storage.safeload import read_state_dict

one_thread = pytest.fixture(scope="module", autouse=True)(single_thread)




def test_finetune_keeps_the_best_and_the_last_in_hf_layout(tiny, tmp_path):
    out = tmp_path / "ft"
    assert cli.main(finetune_argv(tiny, out, "--epochs", "3")) == 0

    evals = [r for r in read_log(out) if "eval" in r]
    assert [r["step"] for r in evals] == [4, 8, 12]  # 64 examples / 16 = 4 steps an epoch: once per epoch
    best_score = max(r["score"] for r in evals)
    first_best = next(r for r in evals if r["score"] == best_score)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["best"] == {"score": best_score, "step": first_best["step"]}
    assert json.loads((out / "best" / "trainer_state.json").read_text())["step"] == first_best["step"]

    start = read_state_dict(tiny["model"])
    for name in ("best", "last"):
        directory = out / name
        assert (directory / "config.json").is_file() and (directory / "vocab.txt").is_file()
        assert not (directory / "zs.pt").exists() and not (directory / "l0_module.pt").exists()
        assert (directory / "model.safetensors").is_file() and not (directory / "pytorch_model.bin").exists()
        trained = read_state_dict(directory)
        # The embeddings stay frozen, as in the original; everything after them trains.
        for key in start:
            if "embeddings" in key:
                assert torch.equal(trained[key], start[key]), key
        assert not torch.equal(trained["classifier.weight"], start["classifier.weight"])
        assert not torch.equal(
            trained["bert.encoder.layer.0.output.dense.weight"], start["bert.encoder.layer.0.output.dense.weight"]
        )
    assert json.loads((out / "last" / "trainer_state.json").read_text())["step"] == 12

    # The fine-tuned model is what `top train` takes as student and teacher.
    pruned = tmp_path / "pruned"
    assert (
        cli.main(
            [
                "train",
                "--model",
                str(out / "best"),
                "--teacher",
                str(out / "best"),
                "--train-file",
                str(tiny["train"]),
                "--validation-file",
                str(tiny["dev"]),
                "--target-sparsity",
                "0.3",
                "--max-steps",
                "4",
                "--eval-steps",
                "2",
                "--bin-num",
                "5",
                "--topk",
                "5",
                "--batch-size",
                "16",
                "--device",
                "cpu",
                "--no-progress",
                "--output-dir",
                str(pruned),
            ]
        )
        in FINISHED
    )
    assert (pruned / "last" / "zs.pt").is_file()


def test_finetune_runs_are_deterministic(tiny, tmp_path):
    for name in ("a", "b"):
        assert cli.main(finetune_argv(tiny, tmp_path / name, "--max-steps", "3")) == 0
    a, b = (read_state_dict(tmp_path / n / "last") for n in "ab")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_defaults_follow_the_preft_script():
    from top.training.config import FinetuneConfig

    config = FinetuneConfig(model="m", output_dir="o")
    assert (config.learning_rate, config.batch_size, config.max_seq_length, config.seed) == (2e-5, 32, 256, 57)
    assert config.epochs is None and config.eval_steps is None  # per task; once per epoch


def test_the_command_line_becomes_the_config_once():
    from top.commands import finetune
    from top.commands.flags import OneLineParser, config_from_args
    from top.training.config import FinetuneConfig

    parser = OneLineParser(prog="top finetune")
    finetune.add_arguments(parser)
    args = parser.parse_args(["--model", "m", "--output-dir", "o", "--device", "cpu"])
    config = config_from_args(FinetuneConfig, args)
    assert config == FinetuneConfig(model="m", output_dir="o", device="cpu")


@pytest.mark.parametrize(
    "task, epochs",
    [("mrpc", 10), ("rte", 10), ("stsb", 10), ("cola", 10), ("sst2", 3), ("qnli", 3), ("qqp", 3), ("mnli", 3)],
)
def test_epochs_default_by_task_size(task, epochs):
    from top.data.loading import TaskData
    from top.data.tasks import get_task
    from top.training.finetune import default_epochs

    data = TaskData(get_task(task), [], [], "unused")
    assert default_epochs(data) == epochs


def test_finetune_data_without_labels_exits_2(tiny, tmp_path, capsys):
    argv = finetune_argv(tiny, tmp_path / "ft", "--epochs", "1")
    argv[argv.index("--validation-file") + 1] = str(write_data(tmp_path / "nolabel.csv", 5, 4, labels=False))
    assert cli.main(argv) == 2
    assert "label" in capsys.readouterr().err
