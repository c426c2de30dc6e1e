"""The Python API at ``top``: a pruned checkpoint as a Hugging Face model, and each job as one call.

Done when, on a checkpoint in the layout the authors' code wrote: ``from_pretrained`` gives
``top eval --mode compact``'s predictions, ``pipeline`` the same labels, ``save_pretrained`` and
``from_pretrained`` again the same logits; and ``top.train(top.TrainConfig(...))`` trains.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from builders import original_checkpoint, tiny_checkpoint, write_custom_csv

import top
from top.cli import COMMANDS, build_parser, main
from top.errors import UserError


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> Path:
    return original_checkpoint(tmp_path_factory.mktemp("api") / "published")


@pytest.fixture(scope="module")
def dev(tmp_path_factory) -> Path:
    return write_custom_csv(tmp_path_factory.mktemp("api-dev") / "dev.csv", n=21, seed=3)


def texts_of(path: Path):
    from top.data.custom import load_custom_file

    return [example.text_a for example in load_custom_file(path)[0]]


def test_from_pretrained_runs_compact_and_predicts_as_top_eval(published, dev, tmp_path):
    from transformers import AutoTokenizer
    from transformers.modeling_outputs import SequenceClassifierOutput

    model = top.ToPForSequenceClassification.from_pretrained(published)
    assert model.mode == "compact" and model.is_pruned and not model.training
    assert model.device == torch.device("cpu") and model.config.num_hidden_layers == 4
    assert model.prune_locations == [2, 3]
    tokenizer = AutoTokenizer.from_pretrained(str(published))
    batch = tokenizer(texts_of(dev), padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(**batch)
    assert isinstance(out, SequenceClassifierOutput) and out.logits.shape == (21, 2)

    assert main(["eval", "--checkpoint", str(published), "--validation-file", str(dev), "--mode", "compact",
                 "--max-seq-length", "64", "--device", "cpu", "--no-progress", "--output-dir", str(tmp_path)]) == 0
    lines = [json.loads(line) for line in (tmp_path / "custom.predictions.jsonl").read_text().splitlines()]
    assert out.logits.argmax(-1).tolist() == [line["prediction"] for line in lines]
    assert torch.allclose(out.logits, torch.tensor([line["logits"] for line in lines]), atol=1e-5, rtol=0)

    faithful = top.ToPForSequenceClassification.from_pretrained(published, mode="faithful")
    with torch.no_grad():
        assert faithful(**batch).logits.argmax(-1).tolist() == out.logits.argmax(-1).tolist()


def test_the_model_really_prunes(published):
    """Compact is not the dense model: the same weights without gates give other logits."""
    from top.method.checkpoint import load_checkpoint
    from top.method.modeling import ToPClassifier

    model = top.ToPForSequenceClassification.from_pretrained(published)
    inputs = {"input_ids": torch.randint(5, 30, (3, 40)), "attention_mask": torch.ones(3, 40, dtype=torch.long)}
    dense = ToPClassifier.from_checkpoint(load_checkpoint(published))
    with torch.no_grad():
        assert not torch.allclose(model(**inputs).logits, dense(**inputs).logits)


def test_pipeline_gives_the_same_labels(published, dev):
    from transformers import AutoTokenizer, pipeline

    model = top.ToPForSequenceClassification.from_pretrained(published)
    tokenizer = AutoTokenizer.from_pretrained(str(published))
    texts = texts_of(dev)
    with torch.no_grad():
        expected = model(**tokenizer(texts, padding=True, return_tensors="pt")).logits.argmax(-1).tolist()
    labels = [model.config.id2label[i] for i in expected]
    classify = pipeline("text-classification", model=model, tokenizer=tokenizer)
    assert [r["label"] for r in classify(texts)] == labels
    assert [r["label"] for r in top.pipeline(published)(texts)] == labels


def test_save_pretrained_then_from_pretrained_gives_the_same_logits(published, tmp_path):
    model = top.ToPForSequenceClassification.from_pretrained(published)
    model.save_pretrained(tmp_path / "saved")
    for name in ("config.json", "model.safetensors", "zs.pt", "l0_module.pt", "vocab.txt", "manifest.json"):
        assert (tmp_path / "saved" / name).is_file(), name
    again = top.ToPForSequenceClassification.from_pretrained(tmp_path / "saved")
    inputs = {"input_ids": torch.randint(5, 30, (4, 33)), "attention_mask": torch.ones(4, 33, dtype=torch.long)}
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, again(**inputs).logits)
    assert torch.equal(model.token_z, again.token_z) and torch.equal(model.pruner_z, again.pruner_z)


def test_push_to_hub_uploads_what_save_pretrained_writes(published, monkeypatch):
    import huggingface_hub

    seen = {}

    class FakeApi:
        def __init__(self, token=None):
            seen["token"] = token

        def create_repo(self, repo_id, private=None, exist_ok=False):
            seen["repo"] = (repo_id, private, exist_ok)

        def upload_folder(self, repo_id, folder_path, commit_message):
            seen["files"] = sorted(p.name for p in Path(folder_path).iterdir())
            return "https://hub.example/commit/1"

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    model = top.ToPForSequenceClassification.from_pretrained(published)
    assert model.push_to_hub("me/pruned", token="t") == "https://hub.example/commit/1"
    assert seen["repo"] == ("me/pruned", None, True) and seen["token"] == "t"
    assert {"config.json", "model.safetensors", "zs.pt", "l0_module.pt", "manifest.json"} <= set(seen["files"])


def test_a_checkpoint_without_gates_loads_dense_with_a_warning(tmp_path):
    dense = tiny_checkpoint(tmp_path / "dense", pruned=False)
    with pytest.warns(UserWarning, match="no token gates"):
        model = top.ToPForSequenceClassification.from_pretrained(dense)
    assert not model.is_pruned


def test_from_pretrained_refuses_what_it_cannot_read(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        top.ToPForSequenceClassification.from_pretrained(tmp_path / "missing")
    with pytest.raises(UserError, match="mode='fast'"):
        top.ToPForSequenceClassification.from_pretrained(tmp_path, mode="fast")


def test_top_train_from_python_trains_and_leaves_the_process_as_it_found_it(tiny, tmp_path, capsys):
    heard = []
    before_rng, before_threads = torch.get_rng_state(), torch.get_num_threads()
    before_deterministic = torch.are_deterministic_algorithms_enabled()
    config = top.TrainConfig(
        model=str(tiny["model"]), teacher=str(tiny["model"]), train_file=str(tiny["train"]),
        validation_file=str(tiny["dev"]), output_dir=str(tmp_path / "pruned"), max_steps=6, target_sparsity=0.3,
        sparsity_epsilon=0.3, bin_num=5, topk=3, batch_size=8, max_seq_length=32, eval_steps=3, device="cpu",
        no_progress=True,
    )
    result = top.train(config, callback=heard.append)
    assert result.best_dir == tmp_path / "pruned" / "best" and (result.best_dir / "zs.pt").is_file()
    assert result.summary["steps"] == 6 and result.config.max_steps == 6 and result.config.eval_steps == 3
    assert result.config.prune_location == "2,3" and result.config.device == "cpu"
    assert [e.step for e in heard if e.kind == "step"] == list(range(1, 7))
    assert [e.step for e in heard if e.kind == "evaluation"] == [3, 6]
    run = json.loads((tmp_path / "pruned" / "run.json").read_text())
    assert run["args"]["eval_steps"] == 3 and run["args"]["prune_location"] is None
    assert run["config"]["prune_location"] == "2,3" and "options" not in run and "settings" not in run
    # A library call: nothing on stdout, and the caller's global state as it was.
    assert capsys.readouterr().out == ""
    assert torch.equal(torch.get_rng_state(), before_rng) and torch.get_num_threads() == before_threads
    assert torch.are_deterministic_algorithms_enabled() == before_deterministic
    pruned = top.ToPForSequenceClassification.from_pretrained(result.best_dir)
    assert pruned.is_pruned


def test_every_job_is_a_config_and_a_call():
    for job, config in (("train", "TrainConfig"), ("finetune", "FinetuneConfig"), ("evaluate", "EvalConfig"),
                        ("export", "ExportConfig"), ("bench", "BenchConfig"), ("reproduce", "ReproduceConfig"),
                        ("grid", "GridConfig")):
        assert callable(getattr(top, job)) and hasattr(getattr(top, config), "__dataclass_fields__"), job
    with pytest.raises(AttributeError):
        top.nothing_here  # noqa: B018
    with pytest.raises(UserError, match="EvalConfig\\(mode=...\\)"):
        top.EvalConfig(checkpoint="c", output_dir="o", mode="fast")


def test_evaluate_from_python_returns_its_record(published, dev, tmp_path, capsys):
    result = top.evaluate(top.EvalConfig(checkpoint=str(published), validation_file=str(dev), mode="compact",
                                         max_seq_length=64, device="cpu", no_progress=True, output_dir=str(tmp_path)))
    assert result.path == tmp_path / "custom.json" and result.record["n_examples"] == 21
    assert "FLOPs reduction" in result.summary and capsys.readouterr().out == ""


def test_export_puts_back_the_loggers_it_quietens(published, tmp_path):
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed on this stack")
    root, onnx_logger = logging.getLogger(), logging.getLogger("onnxruntime")
    before = (root.level, list(root.filters), onnx_logger.level)
    result = top.export(top.ExportConfig(checkpoint=str(published), output=str(tmp_path / "m.onnx")))
    assert result.path.is_file() and result.report["pruned"]
    assert (root.level, list(root.filters), onnx_logger.level) == before


def test_import_top_and_top_help_load_no_torch():
    code = (
        "import sys, top, top.cli\n"
        "top.TrainConfig, top.EvalConfig\n"
        "assert top.cli.main(['--version']) == 0 and top.cli.main(['--help']) == 0\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, sorted(sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_help_runs(command, capsys):
    assert main([command, "--help"]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: top {command}") and "Traceback" not in text


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_flag_has_help_text(command):
    parser = build_parser([command])
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    flags = [a for a in sub._actions if a.option_strings and not isinstance(a, argparse._HelpAction)]
    assert flags, command
    for action in flags:
        shown = action.help != argparse.SUPPRESS
        assert action.help and (not shown or len(action.help.strip()) >= 8), (command, action.option_strings)


def test_a_mistyped_command_or_flag_gets_did_you_mean(capsys):
    assert main(["trian"]) == 2
    assert "did you mean 'train'" in capsys.readouterr().err
    assert main(["eval", "--chekpoint", "x", "--output-dir", "o"]) == 2
    assert "did you mean --checkpoint" in capsys.readouterr().err
    # A flag the sub-command does not know, with every flag it needs given: that flag is blamed, not the first.
    assert main(["train", "--model", "m", "--teacher", "m", "--output-dir", "o", "--overwrite-output-dirr"]) == 2
    err = capsys.readouterr().err
    assert "--overwrite-output-dirr is not a flag of top train: did you mean --overwrite-output-dir?" in err, err
