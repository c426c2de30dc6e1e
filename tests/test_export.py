"""`top export`: the ONNX graph drops the pruned tokens itself and equals the PyTorch compact path.

Needs onnx and onnxruntime (the `onnx` extra; the nox `tests` session installs it). Without them,
as on the pinned Python 3.8 stack, the whole file is skipped.
"""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

onnx = pytest.importorskip("onnx", reason="onnx is not installed (the onnx extra)")
onnxruntime = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (the onnx extra)")

from builders import tiny_checkpoint, write_custom_csv  # noqa: E402

from top.cli import main  # noqa: E402
from top.deploy import export  # noqa: E402
from top.errors import UserError  # noqa: E402
from top.method.checkpoint import load_checkpoint  # noqa: E402
from top.method.compact import CompactPlan, compact_forward, prediction_agreement  # noqa: E402
from top.method.modeling import ToPClassifier  # noqa: E402
from top.storage.model_files import max_input_tokens  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def loaded(path):
    checkpoint = load_checkpoint(path)
    model = ToPClassifier.from_checkpoint(checkpoint)
    return model, checkpoint.token_z, checkpoint.pruner_z


@pytest.fixture(scope="module", params=["bert", "roberta"])
def exported(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"export-{request.param}")
    path = tiny_checkpoint(root / "ckpt", layers=6, keep_bins=5, model_type=request.param)
    model, token_z, pruner_z = loaded(path)
    if request.param == "bert":  # through the command line
        assert main(["export", "--checkpoint", str(path), "--output", str(root / "model.onnx")]) == 0
    else:
        export.export_model(model, token_z, pruner_z, root / "model.onnx")
    session = export.onnxruntime_session(root / "model.onnx", threads=1)
    return {"model": model, "token_z": token_z, "pruner_z": pruner_z, "session": session, "root": root,
            "checkpoint": path}


def compact(model, token_z, pruner_z, input_ids, attention_mask, token_type_ids=None):
    plan = CompactPlan.from_gates(token_z, pruner_z, model.prune_locations, input_ids.shape[1])
    return compact_forward(model, plan, input_ids, attention_mask, token_type_ids)


def compact_logits(exported, inputs):
    return compact(
        exported["model"], exported["token_z"], exported["pruner_z"],
        inputs["input_ids"], inputs["attention_mask"], inputs.get("token_type_ids"),
    )


def test_graph_inputs_and_outputs_follow_the_contract(exported):
    session = exported["session"]
    names = [i.name for i in session.get_inputs()]
    bert = exported["model"].config.model_type == "bert"
    assert names == (["input_ids", "attention_mask", "token_type_ids"] if bert else ["input_ids", "attention_mask"])
    for i in session.get_inputs():
        assert i.type == "tensor(int64)" and i.shape == ["batch", "sequence"]
    (out,) = session.get_outputs()
    assert out.name == "logits" and out.shape[0] == "batch" and out.shape[1] == 2


def test_onnx_logits_equal_compact_over_many_lengths_and_batches(exported):
    config = exported["model"].config
    longest = max_input_tokens(config)
    gen = torch.Generator().manual_seed(5)
    lengths = [2, 3, longest] + [int(n) for n in torch.randint(2, longest + 1, (157,), generator=gen)]
    agree, worst = [], 0.0
    with torch.no_grad():
        # Batch 1 at every length, then padded batches of 8 (the graph re-pads after each prune step).
        groups = [[n] for n in lengths[:40]] + [lengths[i : i + 8] for i in range(40, len(lengths), 8)]
        for seed, group in enumerate(groups):
            inputs = export.sample_inputs(config, group, seed=seed)
            reference = compact_logits(exported, inputs).logits
            got = export.run_session(exported["session"], inputs)
            assert got.shape == reference.shape
            worst = max(worst, float((got - reference).abs().max()))
            agree.extend(prediction_agreement(got, reference))
    assert len(agree) == 160
    assert worst <= 1e-4
    assert sum(agree) / len(agree) >= 0.995


def test_padding_past_the_longest_example_changes_nothing(exported):
    config = exported["model"].config
    tight = export.sample_inputs(config, [9, 30, 4], seed=3)
    pad = {"input_ids": config.pad_token_id, "attention_mask": 0, "token_type_ids": 0}
    padded = {k: torch.nn.functional.pad(v, (0, 34), value=pad[k]) for k, v in tight.items()}
    assert padded["input_ids"].shape == (3, 64)
    a = export.run_session(exported["session"], tight)
    b = export.run_session(exported["session"], padded)
    assert torch.allclose(a, b, atol=1e-5, rtol=0)


def layer_widths(model_path, inputs, layers):
    """The number of tokens each layer attends over, read from the running graph.

    Every layer has one attention: a written-out Softmax (the probabilities, ``[batch, heads, n, n]``)
    or a fused ``com.microsoft`` Attention or its int8 QAttention (``[batch, n, hidden]``); nodes
    are in execution order,
    so the k-th of them belongs to layer k.
    """
    model = onnx.load(str(model_path))
    fused = ("Attention", "QAttention")
    attentions = [(n.output[0], n.op_type) for n in model.graph.node
                  if n.op_type == "Softmax" or (n.domain == "com.microsoft" and n.op_type in fused)]
    assert len(attentions) == layers
    names = [name for name, _ in attentions]
    model.graph.output.extend(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
                              for name in names)
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feed = {i.name: inputs[i.name].numpy() for i in session.get_inputs()}
    values = session.run(names, feed)
    widths = []
    for value, (_, op) in zip(values, attentions):
        if op == "Softmax":
            assert value.shape[-1] == value.shape[-2]
            widths.append(value.shape[-1])
        else:
            widths.append(value.shape[1])
    return widths


def test_the_graph_really_computes_fewer_tokens_in_later_layers(exported):
    config = exported["model"].config
    inputs = export.sample_inputs(config, [120], seed=11)
    widths = layer_widths(exported["root"] / "model.onnx", inputs, config.num_hidden_layers)
    kept = compact_logits(exported, inputs).kept_lengths[0].tolist()
    assert widths == kept
    assert widths[0] == 120 and widths[-1] < widths[2] < widths[1]
    # A padded batch: each layer is as wide as its longest survivor row.
    batch = export.sample_inputs(config, [120, 40, 7], seed=12, pad_to=150)
    widths = layer_widths(exported["root"] / "model.onnx", batch, config.num_hidden_layers)
    assert widths == compact_logits(exported, batch).kept_lengths.max(dim=0).values.tolist()


def operator_types(path):
    return {(node.domain or "ai.onnx", node.op_type) for node in onnx.load(str(path)).graph.node}


def test_the_written_graph_is_fused_unless_asked_not_to(exported, tmp_path):
    # The default graph (the fixture's) carries onnxruntime's fused feed-forward operators ...
    fused = operator_types(exported["root"] / "model.onnx")
    assert {("com.microsoft", "SkipLayerNormalization"), ("com.microsoft", "BiasGelu")} <= fused
    # ... and the layers that rank nothing (the first, before any prune location) fused attention.
    graph = onnx.load(str(exported["root"] / "model.onnx")).graph
    fused_attention = [n for n in graph.node if n.domain == "com.microsoft" and n.op_type == "Attention"]
    ranking = [n for n in graph.node if n.op_type == "Softmax"]
    layers = exported["model"].config.num_hidden_layers
    assert len(fused_attention) >= 1 and len(fused_attention) + len(ranking) == layers
    # ... and --no-optimize writes plain ONNX only, which equals compact just the same.
    output = tmp_path / "plain.onnx"
    assert main(["export", "--checkpoint", str(exported["checkpoint"]), "--output", str(output),
                 "--no-optimize"]) == 0
    assert {domain for domain, _ in operator_types(output)} == {"ai.onnx"}
    session = export.onnxruntime_session(output)
    inputs = export.sample_inputs(exported["model"].config, [30, 7, 19], seed=5)
    expected = compact_logits(exported, inputs).logits
    assert torch.allclose(export.run_session(session, inputs), expected, atol=1e-4, rtol=0)


def test_dense_export_keeps_every_token_and_its_padding(exported, tmp_path):
    model, config = exported["model"], exported["model"].config
    report = export.export_model(model, exported["token_z"], exported["pruner_z"], tmp_path / "d.onnx", dense=True)
    assert report["pruned"] is False
    inputs = export.sample_inputs(config, [50, 20], seed=2, pad_to=64)
    assert layer_widths(tmp_path / "d.onnx", inputs, config.num_hidden_layers) == [64] * config.num_hidden_layers
    session = export.onnxruntime_session(tmp_path / "d.onnx")
    with torch.no_grad():
        stock = model.hf_model(**inputs).logits
    assert torch.allclose(export.run_session(session, inputs), stock, atol=1e-4, rtol=0)


def test_a_graph_that_disagrees_is_refused_and_nothing_is_written(exported, tmp_path, monkeypatch):
    model, token_z, pruner_z = loaded(exported["checkpoint"])
    real_export = export._onnx_export

    def export_then_corrupt(module, config, opset):
        data = real_export(module, config, opset)
        with torch.no_grad():  # the PyTorch side changes after the graph was made
            module.model.hf_model.classifier.weight.add_(0.05) if config.model_type == "bert" else \
                module.model.hf_model.classifier.out_proj.weight.add_(0.05)
        return data

    monkeypatch.setattr(export, "_onnx_export", export_then_corrupt)
    output = tmp_path / "model.onnx"
    output.write_bytes(b"the previous model")
    with pytest.raises(UserError, match="differ from the PyTorch compact path"):
        export.export_model(model, token_z, pruner_z, output)
    assert output.read_bytes() == b"the previous model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_export_command_errors_are_one_sentence(tmp_path, capsys, monkeypatch):
    dense_ckpt = tiny_checkpoint(tmp_path / "dense", pruned=False)
    assert main(["export", "--checkpoint", str(dense_ckpt), "--output", str(tmp_path / "m.onnx")]) == 2
    assert "--dense" in capsys.readouterr().err
    assert main(["export", "--checkpoint", str(dense_ckpt), "--output", str(tmp_path / "m.onnx"),
                 "--opset", "11"]) == 2
    err = capsys.readouterr().err
    assert "--opset" in err and "at least 14" in err
    monkeypatch.setattr(export, "_importable", lambda name: name != "onnxruntime")
    assert main(["export", "--checkpoint", str(dense_ckpt), "--output", str(tmp_path / "m.onnx")]) == 2
    assert "pip install -e '.[onnx]' in a clone of this project" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()


def test_bench_onnxruntime_times_the_pruned_graph_against_dense_graphs(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "ckpt", layers=4, keep_bins=5)
    data = write_custom_csv(tmp_path / "dev.csv", n=12)
    output = tmp_path / "bench.json"
    assert main(["bench", "--task", "cola", "--checkpoint", str(ckpt), "--validation-file", str(data),
                 "--batch-size", "4", "--threads", "1", "--passes", "5", "--warmup-passes", "0",
                 "--runtime", "onnxruntime", "--quantize", "int8", "--output", str(output)]) == 0
    r = json.loads(output.read_text())
    assert r["runtime"] == "onnxruntime" and r["batch_size"] == 4 and r["n_timed_batches"] == 3
    assert r["compact"]["ms_per_batch"] > 0
    assert set(r["baselines"]) == {"dense_padded", "dense_dynamic", "optimized_dense_padded", "optimized_dense_dynamic"}
    for name in r["baselines"]:
        entry = r["baselines"][name]
        assert entry["speedup"] == pytest.approx(entry["ms_per_batch"] / r["compact"]["ms_per_batch"])
        assert entry["flops_ratio"] > 1.0
    assert r["max_abs_logit_diff_onnx_vs_compact"] <= 1e-4
    assert r["onnx_agreement_with_faithful"] == r["agreement_with_faithful"]
    checks = r["onnx_export_check"]
    assert checks["compact"]["pruned"] and not checks["dense"]["pruned"] and not checks["optimized_dense"]["pruned"]
    # The deployed dense baseline: the stock export with attention fused; the --dense one unfused.
    stock = checks["optimized_dense"]
    assert stock["graph"] == "stock" and stock["fused_operators"]["Attention"] == 4
    assert checks["dense"]["optimized"] is False and checks["dense"]["fused_operators"] == {}
    assert checks["compact"]["fused_operators"]["SkipLayerNormalization"] == 2 * 4
    assert r["baselines"]["optimized_dense_padded"]["flops_ratio"] == r["baselines"]["dense_padded"]["flops_ratio"]
    floor = r["weight_read_floor"]
    model, _, _ = loaded(ckpt)
    expected_bytes = sum(p.numel() * 4 for n, p in model.named_parameters() if ".embeddings." not in n)
    assert floor["weight_bytes"] == expected_bytes
    assert floor["read_bandwidth_gb_s"] > 0 and floor["two_token_ms"] > 0
    assert r["peak_memory_mb"] is None
    int8 = r["int8"]
    assert int8["speedup"] == pytest.approx(int8["optimized_dense_dynamic_ms_per_batch"] / int8["compact_ms_per_batch"])
    assert int8["flops_ratio"] == r["baselines"]["optimized_dense_dynamic"]["flops_ratio"]
    assert 0.0 <= int8["agreement_with_float_compact"] <= 1.0
    assert all(check["agreement_with_float_compact"] >= export.INT8_MIN_AGREEMENT
               for check in int8["export_check"].values())


def test_bench_quantize_needs_the_onnxruntime_runtime(tmp_path, capsys):
    ckpt = tiny_checkpoint(tmp_path / "ckpt", layers=4, keep_bins=5)
    data = write_custom_csv(tmp_path / "dev.csv", n=12)
    assert main(["bench", "--task", "cola", "--checkpoint", str(ckpt), "--validation-file", str(data),
                 "--quantize", "int8", "--output", str(tmp_path / "b.json")]) == 2
    assert "--runtime onnxruntime" in capsys.readouterr().err
    assert not (tmp_path / "b.json").exists()


def test_int8_export_keeps_pruning_and_agrees_with_float_compact(exported, tmp_path):
    output = tmp_path / "int8.onnx"
    assert main(["export", "--checkpoint", str(exported["checkpoint"]), "--output", str(output),
                 "--quantize", "int8"]) == 0
    ops = {op for _, op in operator_types(output)}
    assert ops & {"MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat"}  # int8 products
    config = exported["model"].config
    # Still prunes inside the graph: later layers are narrower, as in compact.
    inputs = export.sample_inputs(config, [120], seed=11)
    widths = layer_widths(output, inputs, config.num_hidden_layers)
    assert widths[0] == 120 and widths[-1] < widths[1]
    # Inputs the export's own check never saw: predictions agree with float compact.
    session = export.onnxruntime_session(output)
    gen = torch.Generator().manual_seed(42)
    agree = []
    for index in range(16):
        lengths = [int(n) for n in torch.randint(2, 100, (8,), generator=gen)]
        batch = export.sample_inputs(config, lengths, seed=1000 + index)
        agree += prediction_agreement(export.run_session(session, batch), compact_logits(exported, batch).logits)
    assert sum(agree) / len(agree) >= 0.97


def test_an_int8_graph_that_disagrees_is_refused(exported, tmp_path, monkeypatch):
    monkeypatch.setattr(export, "INT8_MIN_AGREEMENT", 1.01)  # no graph can pass
    model, token_z, pruner_z = loaded(exported["checkpoint"])
    output = tmp_path / "int8.onnx"
    with pytest.raises(UserError, match="without --quantize"):
        export.export_model(model, token_z, pruner_z, output, quantize="int8")
    assert not output.exists()


def deploy_script() -> str:
    text = (ROOT / "docs" / "DEPLOY.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "docs/DEPLOY.md has no python code block"
    return blocks[0]


def test_the_deploy_example_runs_without_torch_and_matches_compact(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "ckpt", layers=4, keep_bins=5)
    assert main(["export", "--checkpoint", str(ckpt), "--output", str(tmp_path / "model.onnx")]) == 0
    script = tmp_path / "classify.py"
    script.write_text(deploy_script())
    sentences = ["the movie was very good", "a dull boring plot", "great actor , awful story , quite slow music"]
    # torch is made unimportable in the child, so the example cannot lean on it.
    runner = (
        "import runpy, sys; sys.modules['torch'] = None; "
        f"sys.argv = {[str(script), str(tmp_path / 'model.onnx'), str(ckpt / 'tokenizer.json')] + sentences!r}; "
        f"runpy.run_path({str(script)!r}, run_name='__main__')"
    )
    result = subprocess.run([sys.executable, "-c", runner], capture_output=True, text=True, cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr
    lines = [line.split("\t") for line in result.stdout.strip().splitlines()]
    assert [line[-1] for line in lines] == sentences

    from transformers import AutoTokenizer

    model, token_z, pruner_z = loaded(ckpt)
    tokenizer = AutoTokenizer.from_pretrained(str(ckpt))
    with torch.no_grad():
        for (label, probability, _), sentence in zip(lines, sentences):
            enc = tokenizer(sentence, return_tensors="pt")
            logits = compact(model, token_z, pruner_z, enc["input_ids"], enc["attention_mask"],
                             enc["token_type_ids"]).logits[0]
            probs = torch.softmax(logits, dim=-1)
            assert int(label) == int(probs.argmax())
            assert float(probability) == pytest.approx(float(probs.max()), abs=1e-4)
