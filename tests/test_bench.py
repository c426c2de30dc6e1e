"""`top bench` on a tiny checkpoint in the published layout: bench.json has every key, sane values."""

import csv
import json

import pytest
import torch
from builders import WORDS, tiny_config, tiny_tokenizer

from top.cli import main
from top.evaluation.torch_timing import sorted_batches
from top.method import prepacked
from top.method.checkpoint import save_checkpoint
from top.method.modeling import ToPClassifier


def make_checkpoint(root):
    tokenizer = tiny_tokenizer(root / "vocab")
    config = tiny_config(2, 4, max_position_embeddings=64)
    torch.manual_seed(0)
    model = ToPClassifier.from_config(config, prune_locations=[2, 3])
    token_z = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    path = root / "ckpt"
    save_checkpoint(path, model_state_dict=model.hf_model.state_dict(), config=config,
                    token_z=token_z, pruner_z=torch.ones(2), tokenizer=tokenizer)
    return path


def make_dev_file(root, n=13):
    gen = torch.Generator().manual_seed(1)
    path = root / "dev.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sentence", "label"])
        for i in range(n):
            length = int(torch.randint(2, 20, (1,), generator=gen))
            words = [WORDS[int(j)] for j in torch.randint(0, len(WORDS), (length,), generator=gen)]
            writer.writerow([" ".join(words), i % 2])
    return path


@pytest.fixture(scope="module")
def bench_result(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    output = root / "bench.json"
    code = main([
        "bench", "--task", "cola", "--checkpoint", str(make_checkpoint(root)),
        "--validation-file", str(make_dev_file(root)), "--batch-size", "4", "--threads", "1",
        "--passes", "5", "--warmup-passes", "0", "--output", str(output),
    ])
    assert code == 0
    return json.loads(output.read_text())


def test_bench_json_has_the_contract_keys_and_sane_values(bench_result):
    r = bench_result
    assert r["task"] == "cola" and r["batch_size"] == 4 and r["device"] == "cpu" and r["threads"] == 1
    assert r["compact"]["ms_per_batch"] > 0
    for name in ("dense_padded", "dense_dynamic"):
        entry = r["baselines"][name]
        assert entry["ms_per_batch"] > 0 and entry["speedup"] > 0
        assert entry["flops_ratio"] >= 1.0
        assert entry["speedup"] == pytest.approx(entry["ms_per_batch"] / r["compact"]["ms_per_batch"])
    # Padding to the task length (64) costs more than padding to each batch's longest.
    assert r["baselines"]["dense_padded"]["flops_ratio"] > r["baselines"]["dense_dynamic"]["flops_ratio"]
    assert r["flops_reduction"] > r["flops_reduction_unpadded"] > 1.0
    assert 0.0 <= r["agreement_with_faithful"] <= 1.0
    assert r["max_abs_logit_diff_vs_reference_compact"] < 1e-4
    assert r["n_examples"] == 13 and r["n_timed_batches"] == 3 and r["passes"] == 5
    assert all(len(v) == 5 for v in r["per_pass_ms"].values())
    peaks = r["peak_memory_mb"]
    methods = {"dense_padded", "dense_dynamic", "compact"}
    if prepacked.enabled():  # the stock model on compact's kernels, beside the others
        methods.add("dense_dynamic_prepacked")
        entry = r["baselines"]["dense_dynamic_prepacked"]
        assert entry["flops_ratio"] == r["baselines"]["dense_dynamic"]["flops_ratio"]
        assert entry["speedup"] == pytest.approx(entry["ms_per_batch"] / r["compact"]["ms_per_batch"])
        assert r["prepacked_weight_mb"] > 0 and "prepacked" in r["compact_linear_kernels"]
    else:
        assert r["prepacked_weight_mb"] == 0 and r["compact_linear_kernels"] == "F.linear"
    assert set(peaks) == methods and set(r["per_pass_ms"]) == methods
    # On the CPU each method's probe runs in a fresh process; a probe that failed would be None.
    assert all(isinstance(v, float) and v >= 0 for v in peaks.values()), peaks
    assert "fresh process" in r["peak_memory_measure"]


def test_sorted_batches_cover_every_example_once_trimmed_to_their_longest():
    mask = torch.zeros(7, 10, dtype=torch.long)
    for row, n in enumerate([3, 9, 1, 5, 5, 10, 2]):
        mask[row, :n] = 1
    ids = torch.arange(70).view(7, 10) * mask
    batches = sorted_batches({"input_ids": ids, "attention_mask": mask}, 3)
    assert [b["size"] for b in batches] == [3, 3, 1]
    lengths = [b["trimmed"]["attention_mask"].sum(dim=1).tolist() for b in batches]
    assert lengths == [[10, 9, 5], [5, 3, 2], [1]]
    assert [b["trimmed"]["input_ids"].shape[1] for b in batches] == [10, 5, 1]
    assert all(b["full"]["input_ids"].shape[1] == 10 for b in batches)
    firsts = sorted(int(row[0]) for b in batches for row in b["full"]["input_ids"])
    assert firsts == sorted(int(x) for x in ids[:, 0])


def test_bench_without_a_dev_set_is_a_user_error(tmp_path, capsys):
    code = main(["bench", "--task", "cola", "--checkpoint", str(tmp_path), "--output", str(tmp_path / "b.json")])
    assert code == 2
    assert "--data-dir" in capsys.readouterr().err


def test_bench_times_a_file_of_your_own_without_a_task(tmp_path, capsys):
    """No --task: the file's name names the run and --max-seq-length is the padded baseline's length."""
    checkpoint, dev = make_checkpoint(tmp_path), make_dev_file(tmp_path)
    argv = ["bench", "--checkpoint", str(checkpoint), "--validation-file", str(dev), "--batch-size", "4",
            "--threads", "1", "--passes", "5", "--warmup-passes", "0", "--no-memory",
            "--output", str(tmp_path / "b.json")]
    assert main(argv) == 2
    assert "--max-seq-length" in capsys.readouterr().err
    assert main(argv + ["--max-seq-length", "48"]) == 0
    r = json.loads((tmp_path / "b.json").read_text())
    assert r["task"] == "dev" and r["task_length"] == 48 and r["n_examples"] == 13
    assert r["baselines"]["dense_padded"]["flops_ratio"] > r["baselines"]["dense_dynamic"]["flops_ratio"]


def test_bench_needs_a_pruned_checkpoint(tmp_path, capsys):
    ckpt = make_checkpoint(tmp_path)
    (ckpt / "zs.pt").unlink()
    (ckpt / "manifest.json").unlink()  # which would report zs.pt missing: this dense checkpoint is made by hand
    code = main(["bench", "--task", "cola", "--checkpoint", str(ckpt), "--validation-file",
                 str(make_dev_file(tmp_path)), "--output", str(tmp_path / "b.json")])
    assert code == 2
    assert "no token gates" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_the_logit_check_is_an_independent_statement_of_the_oracle(kind):
    from reference_compact import reference_compact
    from transformers import BertConfig, RobertaConfig

    from top.evaluation.torch_timing import unpadded_reference_logits
    from top.method.compact import CompactPlan

    # Weights ten times the default scale, so that pruning moves the logits visibly.
    common = dict(vocab_size=40, hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=37,
                  num_labels=2, initializer_range=0.2)
    config = RobertaConfig(pad_token_id=1, max_position_embeddings=40, **common) if kind == "roberta" else \
        BertConfig(max_position_embeddings=40, **common)
    torch.manual_seed(0)
    model = ToPClassifier.from_config(config, prune_locations=[1, 3]).eval()
    lengths = [30, 2, 17, 17, 9, 30, 5]
    ids = torch.randint(5, 40, (len(lengths), 32), generator=torch.Generator().manual_seed(2))
    mask = (torch.arange(32)[None, :] < torch.tensor(lengths)[:, None]).long()
    ids = torch.where(mask.bool(), ids, torch.full_like(ids, config.pad_token_id))
    token_z = torch.tensor([[1.0, 0.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    pruner_z = torch.tensor([1.0, 1.0])
    with torch.no_grad():
        ours = unpadded_reference_logits(model, CompactPlan.from_gates(token_z, pruner_z, [1, 3], 32), ids, mask)
    oracle = reference_compact(model, ids, mask, None, token_z, pruner_z)
    assert torch.allclose(ours, oracle.logits, atol=1e-4, rtol=0)
    # It really prunes: without gates it gives other logits.
    with torch.no_grad():
        dense = unpadded_reference_logits(model, CompactPlan.from_gates(None, None, [1, 3], 32), ids, mask)
    assert (dense - ours).abs().max() > 1e-3
