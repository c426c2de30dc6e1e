"""``top eval`` end to end on checkpoints in the published layout that the tests build."""

import json
import re
import subprocess
import sys

import pytest
import torch
from builders import tiny_checkpoint, tiny_config, write_cola_dev, write_custom_csv

from top.cli import main
from top.errors import UserError
from top.method.checkpoint import load_checkpoint, save_checkpoint
from top.method.modeling import ToPClassifier, stock_model_from_checkpoint

EVAL_KEYS = {
    "task", "mode", "n_examples", "metrics", "expected_sparsity", "expected_sequence_sparsity",
    "flops_reduction", "flops_reduction_unpadded", "remaining_token_ratio",
    "exact_flops_reduction", "exact_flops_reduction_unpadded",
}


@pytest.fixture(scope="module")
def cola_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    checkpoint = tiny_checkpoint(root / "ckpt", layers=4, bin_num=10, keep_bins=5)
    write_cola_dev(root / "glue", n=37)
    return root, checkpoint


@pytest.mark.parametrize("mode", ["faithful", "compact"])
def test_eval_writes_json_and_predictions(cola_setup, mode):
    root, checkpoint = cola_setup
    out = root / f"out-{mode}"
    code = main(["eval", "--task", "CoLA", "--checkpoint", str(checkpoint), "--data-dir", str(root / "glue"),
                 "--mode", mode, "--max-seq-length", "32", "--batch-size", "8", "--device", "cpu",
                 "--output-dir", str(out), "--no-progress"])
    assert code == 0
    record = json.loads((out / "cola.json").read_text())
    assert EVAL_KEYS <= set(record)
    assert record["task"] == "cola" and record["mode"] == mode and record["n_examples"] == 37
    assert set(record["metrics"]) == {"matthews_correlation", "accuracy"}
    assert 0.0 <= record["metrics"]["accuracy"] <= 1.0
    # Half the bins are off at two locations: a real reduction, larger against the padded length.
    assert record["flops_reduction_unpadded"] > 1.0
    assert record["flops_reduction_same_inputs"] == record["flops_reduction_unpadded"]  # one number, two names
    assert record["flops_reduction"] > record["flops_reduction_unpadded"]
    assert record["flops_reduction"] == pytest.approx(1 / (1 - record["expected_sequence_sparsity"]))
    assert len(record["remaining_token_ratio"]) == 4
    assert record["remaining_token_ratio"][:2] == [1.0, 1.0] and record["remaining_token_ratio"][3] < 1.0
    lines = (out / "cola.predictions.jsonl").read_text().splitlines()
    assert len(lines) == 37
    rows = [json.loads(line) for line in lines]
    assert [r["index"] for r in rows] == list(range(37))
    assert all(r["prediction"] == max(range(2), key=lambda k: r["logits"][k]) for r in rows)


def test_faithful_and_compact_agree_on_predictions(cola_setup):
    root, _ = cola_setup
    preds = {}
    for mode in ("faithful", "compact"):
        rows = (root / f"out-{mode}" / "cola.predictions.jsonl").read_text().splitlines()
        preds[mode] = [json.loads(r)["prediction"] for r in rows]
    agree = sum(a == b for a, b in zip(preds["faithful"], preds["compact"])) / len(preds["faithful"])
    assert agree >= 0.9


def test_dense_checkpoint_has_no_reduction_unpadded(tmp_path):
    checkpoint = tiny_checkpoint(tmp_path / "dense", pruned=False)
    data = write_custom_csv(tmp_path / "dev.csv", n=12)
    assert main(["eval", "--checkpoint", str(checkpoint), "--validation-file", str(data), "--max-seq-length", "24",
                 "--output-dir", str(tmp_path / "out"), "--no-progress", "--device", "cpu"]) == 0
    record = json.loads((tmp_path / "out" / "custom.json").read_text())
    assert record["task"] == "custom" and set(record["metrics"]) == {"accuracy"}
    assert record["flops_reduction_unpadded"] == pytest.approx(1.0)
    assert record["exact_flops_reduction_unpadded"] == pytest.approx(1.0)


def headline(capsys):
    """The line `top eval` prints about the run (the one before "wrote ...")."""
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[1].startswith("wrote "), lines
    return lines[0]


def reductions(line):
    return [float(x) for x in re.findall(r"(\d+(?:\.\d+)?)x", line)]


@pytest.mark.parametrize("data", ["custom", "cola"])
def test_a_dense_checkpoint_claims_no_reduction_above_one(tmp_path, capsys, data):
    checkpoint = tiny_checkpoint(tmp_path / "dense", pruned=False)
    source = (["--validation-file", str(write_custom_csv(tmp_path / "dev.csv", n=12))] if data == "custom"
              else ["--task", "cola", "--data-dir", str(write_cola_dev(tmp_path / "glue", n=12).parent.parent)])
    assert main(["eval", "--checkpoint", str(checkpoint), *source, "--max-seq-length", "64",
                 "--output-dir", str(tmp_path / "out"), "--no-progress", "--device", "cpu"]) == 0
    line = headline(capsys)
    record = json.loads((tmp_path / "out" / f"{'custom' if data == 'custom' else 'cola'}.json").read_text())
    assert record["flops_reduction"] > 1.5  # short inputs against the padded length: the figure kept out of the line
    assert "no pruning" in line and reductions(line) == [1.0]


def test_a_pruned_checkpoint_on_your_own_data_prints_the_unpadded_reduction(tmp_path, capsys):
    checkpoint = tiny_checkpoint(tmp_path / "pruned", layers=4, bin_num=10, keep_bins=5)
    data = write_custom_csv(tmp_path / "dev.csv", n=12)
    assert main(["eval", "--checkpoint", str(checkpoint), "--validation-file", str(data), "--max-seq-length", "64",
                 "--output-dir", str(tmp_path / "out"), "--no-progress", "--device", "cpu"]) == 0
    line = headline(capsys)
    record = json.loads((tmp_path / "out" / "custom.json").read_text())
    assert record["flops_reduction"] > 2 * record["flops_reduction_unpadded"] > 2  # padding would inflate it
    assert "at the same inputs" in line
    assert reductions(line) == [pytest.approx(record["flops_reduction_unpadded"], abs=0.005)]


def test_a_pruned_checkpoint_on_a_paper_task_prints_the_papers_figure_and_the_unpadded_one(cola_setup, capsys):
    root, checkpoint = cola_setup
    assert main(["eval", "--task", "cola", "--checkpoint", str(checkpoint), "--data-dir", str(root / "glue"),
                 "--max-seq-length", "64", "--output-dir", str(root / "headline"), "--no-progress",
                 "--device", "cpu"]) == 0
    line = headline(capsys)
    record = json.loads((root / "headline" / "cola.json").read_text())
    assert "against dense at the task length" in line
    assert reductions(line) == [pytest.approx(record["flops_reduction"], abs=0.005),
                                pytest.approx(record["flops_reduction_unpadded"], abs=0.005)]


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "top", *args], capture_output=True, text=True, timeout=120)


def test_bad_inputs_get_one_sentence_and_exit_2(tmp_path, cola_setup):
    root, checkpoint = cola_setup
    cases = {
        "unknown task": ["eval", "--task", "wnli2", "--checkpoint", str(checkpoint), "--data-dir", str(root / "glue")],
        "missing checkpoint": ["eval", "--task", "cola", "--checkpoint", str(tmp_path / "nope"),
                               "--data-dir", str(root / "glue")],
        "labels": ["eval", "--task", "mnli", "--checkpoint", str(checkpoint), "--data-dir", str(root / "glue")],
        "empty file": ["eval", "--checkpoint", str(checkpoint), "--validation-file", str(tmp_path / "empty.csv")],
        "columns": ["eval", "--checkpoint", str(checkpoint), "--validation-file", str(tmp_path / "cols.csv")],
    }
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "cols.csv").write_text("text,target\nhello,1\n")
    write_glue_mnli = root / "glue" / "MNLI"
    write_glue_mnli.mkdir(parents=True, exist_ok=True)
    (write_glue_mnli / "dev_matched.tsv").write_text(
        "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\t"
        "sentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label\n"
        "0\t1\t1\tfic\t(a)\t(b)\t(a)\t(b)\tthe movie\ta film\tneutral\tneutral\n"
    )
    for name, args in cases.items():
        result = run_cli(*args, "--output-dir", str(tmp_path / "o"), "--device", "cpu")
        assert result.returncode == 2, (name, result.stderr)
        message = result.stderr.strip().splitlines()
        assert len(message) == 1 and message[0].startswith("error: "), (name, result.stderr)
        assert "Traceback" not in result.stderr


def test_compact_mode_runs_compact_py_with_one_plan_and_matches_the_oracle(cola_setup, monkeypatch):
    import torch
    from reference_compact import reference_compact

    from top.data import batching, loading
    from top.evaluation import evaluate as evaluate_module
    from top.evaluation.evaluate import load_model, score
    from top.method import compact

    root, checkpoint = cola_setup
    built, calls = [], []
    from_gates, compact_forward = compact.CompactPlan.from_gates, compact.compact_forward
    monkeypatch.setattr(compact.CompactPlan, "from_gates",
                        lambda *a, **k: built.append(a) or from_gates(*a, **k))
    # Counted where `top eval` calls it.
    monkeypatch.setattr(evaluate_module, "compact_forward", lambda *a, **k: calls.append(a) or compact_forward(*a, **k))
    loaded = load_model(checkpoint, torch.device("cpu"))
    eval_data = loading.load_task_data("cola", str(root / "glue"), max_seq_length=32, splits=("dev",))
    record = score(loaded, eval_data, "compact", max_seq_length=32, batch_size=8, progress=False)
    assert len(built) == 1 and len(calls) == 5  # one plan for the gates, five batches of 37 examples
    encoded = batching.encode(eval_data.dev, loaded.tokenizer, 32, padding="max_length")
    reference = reference_compact(loaded.model, encoded["input_ids"], encoded["attention_mask"],
                                  encoded.get("token_type_ids"), loaded.token_z, loaded.pruner_z)
    logits = torch.tensor([p["logits"] for p in record["predictions"]])
    assert torch.allclose(logits, reference.logits, atol=1e-4, rtol=0)
    kept = [round(float(v), 4) for v in reference.kept_lengths.float().mean(0)]
    assert record["mean_kept_tokens_per_layer"] == kept


@pytest.mark.parametrize("change", [{"position_embedding_type": "relative_key"}, {"is_decoder": True}])
def test_compact_mode_refuses_what_it_cannot_run_in_one_sentence(tmp_path, capsys, change):
    from builders import gate_state, tiny_config, tiny_tokenizer
    from transformers import BertForSequenceClassification

    from top.method.checkpoint import save_checkpoint

    config = tiny_config()
    for key, value in change.items():
        setattr(config, key, value)
    model = BertForSequenceClassification(config)
    checkpoint = save_checkpoint(tmp_path / "ckpt", model_state_dict=model.state_dict(), config=config,
                                 gate_state=gate_state([2, 3], 10, 5), tokenizer=tiny_tokenizer(tmp_path / "vocab"))
    data = write_custom_csv(tmp_path / "dev.csv", n=6)
    args = ["eval", "--checkpoint", str(checkpoint), "--validation-file", str(data), "--max-seq-length", "24",
            "--output-dir", str(tmp_path / "out"), "--no-progress", "--device", "cpu"]
    assert main(args + ["--mode", "compact"]) == 2
    message = capsys.readouterr().err.strip().splitlines()
    assert len(message) == 1 and "--mode compact cannot run" in message[0] and "--mode faithful" in message[0]
    assert main(args + ["--mode", "faithful"]) == 0


# --------------------------------------------------------------------------- model loading


def test_from_checkpoint_loads_every_weight_and_the_prune_locations(cola_setup):
    _, path = cola_setup
    checkpoint = load_checkpoint(path)
    model = ToPClassifier.from_checkpoint(checkpoint)
    assert not model.training and model.prune_locations == checkpoint.prune_locations == [2, 3]
    loaded = model.hf_model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in checkpoint.state_dict.items())
    dense = stock_model_from_checkpoint(checkpoint)
    assert not dense.training and all(torch.equal(dense.state_dict()[k], v) for k, v in loaded.items())
    # The checkpoint's config is left as read: only the ToP copy is forced to eager attention.
    assert model.config is not checkpoint.config and dense.config is not checkpoint.config


def test_a_dense_checkpoint_prunes_nowhere(tmp_path):
    checkpoint = load_checkpoint(tiny_checkpoint(tmp_path / "dense", pruned=False))
    assert ToPClassifier.from_checkpoint(checkpoint).prune_locations == []


def _saved_without(directory, drop=(), num_labels=2):
    from transformers import BertForSequenceClassification

    model = BertForSequenceClassification(tiny_config(num_labels=2))
    state = {k: v for k, v in model.state_dict().items() if not k.startswith(drop)}
    return load_checkpoint(save_checkpoint(directory, model_state_dict=state, config=tiny_config(num_labels)))


@pytest.mark.parametrize("load", [ToPClassifier.from_checkpoint, stock_model_from_checkpoint])
def test_a_missing_classifier_head_is_an_error_naming_the_file_and_keys(tmp_path, load):
    checkpoint = _saved_without(tmp_path / "headless", drop=("classifier.",))
    with pytest.raises(UserError) as info:
        load(checkpoint)
    message = str(info.value)
    assert "classifier.weight" in message and "classifier.bias" in message and "missing" in message
    assert str(checkpoint.path) in message and ("model.safetensors" in message or "pytorch_model.bin" in message)


@pytest.mark.parametrize("load", [ToPClassifier.from_checkpoint, stock_model_from_checkpoint])
def test_a_weight_of_the_wrong_shape_is_an_error_naming_it(tmp_path, load):
    checkpoint = _saved_without(tmp_path / "three-labels", num_labels=3)
    with pytest.raises(UserError) as info:
        load(checkpoint)
    assert "classifier" in str(info.value) and "(2," in str(info.value) and "(3," in str(info.value)


def test_weights_that_do_not_fit_a_built_model_name_what_they_must_fit(cola_setup):
    _, path = cola_setup
    student = ToPClassifier.from_config(tiny_config(layers=3), prune_locations=[2])
    with pytest.raises(UserError) as info:
        student.load_checkpoint_weights(load_checkpoint(path), fix="resume as before", against="the --model model")
    message = str(info.value)
    assert "unexpected bert.encoder.layer.3." in message and "the --model model" in message
    assert message.endswith("resume as before.")
