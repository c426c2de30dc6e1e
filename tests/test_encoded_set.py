"""The compact encoded set (issue 33): the same tensors as the tokenizer's own padding, in a fraction of
the memory, and a tokenizer's failure while encoding as one sentence."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from builders import FINISHED, REPOSITORY, sentences, subprocess_env, tiny_checkpoint, tiny_model_dir, tiny_tokenizer

from top.data import batching
from top.data.batching import EncodedSet, encode, encode_set
from top.data.files import Example
from top.errors import UserError
from top.storage.tokenizer_failures import rust_panics_quiet
from top.training.batch_order import BatchOrder


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    """BERT's word-piece tokenizer, fast and slow, and RoBERTa's (its padding id is 1)."""
    from transformers import AutoTokenizer, BertTokenizer

    root = tmp_path_factory.mktemp("tokenizers")
    fast = tiny_tokenizer(root / "bert")
    roberta = tiny_checkpoint(root / "roberta", layers=2, pruned=False, model_type="roberta")
    return {
        "bert-fast": fast,
        "bert-slow": BertTokenizer(vocab_file=str(root / "bert" / "vocab.txt"), do_lower_case=True),
        "roberta": AutoTokenizer.from_pretrained(str(roberta)),
    }


def examples(n: int, pairs: bool, seed: int = 0):
    first, second = sentences(n, seed, low=1, high=40), sentences(n, seed + 1, low=1, high=40)
    return [Example(a, b if pairs else None, i % 3) for i, (a, b) in enumerate(zip(first, second))]


@pytest.mark.parametrize("padding", ["max_length", "longest"])
@pytest.mark.parametrize("pairs", [False, True], ids=["single", "pairs"])
@pytest.mark.parametrize("kind", ["bert-fast", "bert-slow", "roberta"])
def test_the_set_pads_as_the_tokenizer_pads(tokenizers, kind, pairs, padding, monkeypatch):
    """Tokenised a few examples at a time and padded when taken, the set gives exactly the tensors of one
    tokenizer call with padding (what every batch held before), whatever the chunk size."""
    tokenizer = tokenizers[kind]
    data = examples(300, pairs)
    monkeypatch.setattr(batching, "ENCODE_CHUNK", 64)
    expected = tokenizer([e.text_a for e in data], [e.text_b for e in data] if pairs else None, padding=padding,
                         truncation=True, max_length=24, return_tensors="pt")
    padded = encode(data, tokenizer, 24, padding=padding)
    assert set(padded) == {k for k in expected if k in batching.MODEL_INPUT_KEYS} | {"labels"}
    for key in set(padded) - {"labels"}:
        assert padded[key].dtype == torch.long and torch.equal(padded[key], expected[key]), key
    assert padded["labels"].tolist() == [i % 3 for i in range(300)]


def test_a_step_batch_is_the_padded_rows_cut_to_the_global_batch(tokenizers):
    data = examples(97, pairs=True)
    tokenizer = tokenizers["bert-fast"]
    compact, padded = encode_set(data, tokenizer, 32), encode(data, tokenizer, 32)
    order = BatchOrder(len(data), 4, seed=3, world_size=2, rank=1)
    for step in range(order.steps_per_epoch):
        local, chunk = order.indices(step)
        length = int(padded["attention_mask"][chunk].sum(dim=1).max())
        got = batching.step_batch(compact, local, chunk, torch.device("cpu"))
        assert set(got) == set(padded)
        for key, value in padded.items():
            want = value[local][:, :length] if key != "labels" else value[local]
            assert torch.equal(got[key], want), (step, key)
    assert torch.equal(compact.lengths, padded["attention_mask"].sum(dim=1))


def test_batches_of_the_set_and_of_the_padded_dict_agree(tokenizers):
    data = examples(23, pairs=False)
    compact = encode_set(data, tokenizers["roberta"], 20)
    from_set = list(batching.batches(compact, 5))
    from_dict = list(batching.batches(compact.padded(), 5))
    assert [len(b["input_ids"]) for b in from_set] == [5, 5, 5, 5, 3]
    for left, right in zip(from_set, from_dict):
        assert all(torch.equal(left[k], right[k]) for k in left)


def test_a_hand_made_padded_dict_comes_back_exactly(tokenizers):
    """A dict whose padding is not one value per field (ids swapped by hand) is kept whole, row by row."""
    padded = encode(examples(30, pairs=False), tokenizers["bert-fast"], 16)
    ids = padded["input_ids"]
    swapped = dict(padded, input_ids=torch.where(ids == 0, torch.ones_like(ids), ids))
    swapped["input_ids"][3, -1] = 7  # padding that differs in one place
    for source in (padded, swapped):
        back = EncodedSet.from_padded(source).padded()
        assert all(torch.equal(back[k], source[k]) for k in source)


def test_the_set_is_small(tokenizers):
    """Six bytes a token at most (ids in int32, token types and mask in uint8), plus offsets and lengths."""
    compact = encode_set(examples(2000, pairs=True), tokenizers["bert-fast"], 64)
    tokens = int(compact.offsets[-1])
    stored = sum(values.nbytes for values in compact.fields.values())
    assert stored <= 6 * tokens
    assert {values.dtype for values in compact.fields.values()} <= {np.dtype(np.uint8), np.dtype(np.int32)}
    # What the tensors padded to max_seq_length held: int64, and mostly padding.
    padded = sum(value.numel() * value.element_size() for key, value in compact.padded().items() if key != "labels")
    assert 5 * stored < padded


def test_check_token_ids_sees_the_padding_too(tokenizers):
    """As on the padded tensors: the padding id counts (a RoBERTa pad of 1 against a vocabulary of 1 is too big)."""
    from types import SimpleNamespace

    compact = encode_set(examples(5, pairs=False), tokenizers["roberta"], 64)
    with pytest.raises(UserError, match="gives input_ids up to"):
        batching.check_token_ids(compact, SimpleNamespace(vocab_size=1), "the model")
    batching.check_token_ids(compact, SimpleNamespace(vocab_size=10_000, type_vocab_size=2), "the model")


# ------------------------------------------------------------------------------------- tokenizers that fail


def broken_tokenizer(tmp_path: Path, how: str):
    from transformers import AutoTokenizer

    directory = tiny_model_dir(tmp_path / how)
    if how == "empty-vocab":
        (directory / "tokenizer.json").unlink()
        (directory / "vocab.txt").write_text("")
    else:
        spec = json.loads((directory / "tokenizer.json").read_text())
        spec["pre_tokenizer"] = {"type": "Split", "pattern": {"Regex": "(a+)+c"}, "behavior": "Isolated",
                                 "invert": False}
        (directory / "tokenizer.json").write_text(json.dumps(spec))
    return AutoTokenizer.from_pretrained(str(directory)), directory


@pytest.mark.parametrize("how, number, detail", [("empty-vocab", 1, "Missing [UNK]"),
                                                  ("backtracking-regex", 4, "retry-limit")])
def test_a_tokenizer_that_fails_is_one_sentence_naming_it_and_the_example(tmp_path, capfd, how, number, detail):
    """Its error (for the regex a panic, a BaseException) becomes a UserError; the panic's report is not printed."""
    tokenizer, directory = broken_tokenizer(tmp_path, how)
    data = [Example("the film", None, 0)] * 3 + [Example("a" * 40 + "b", None, 1)] + [Example("good", None, 1)]
    with pytest.raises(UserError) as raised:
        encode_set(data, tokenizer, 32, what="the training data")
    message = str(raised.value)
    assert message.startswith(f"The tokenizer of {directory} fails on example {number} of the training data (")
    assert detail in message and "\n" not in message
    assert "panicked" not in capfd.readouterr().err


def test_stderr_written_below_python_is_kept_when_the_call_succeeds(capfd):
    with rust_panics_quiet():
        os.write(2, b"a warning from native code\n")
    assert capfd.readouterr().err == "a warning from native code\n"
    with pytest.raises(ValueError):
        with rust_panics_quiet():
            os.write(2, b"thread panicked at ...\n")
            raise ValueError("the call failed")
    assert capfd.readouterr().err == ""


# ------------------------------------------------------------------------------------- a million rows


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads the peak from /proc (Linux)")
@pytest.mark.parametrize("command", ["finetune", "train"])
def test_a_million_short_rows_train_under_the_bound(tmp_path, command):
    """10**6 two-word rows (12.8 MB): top finetune and top train of a tiny model peak well under 4 GB
    (about 1 GB on the developers' machine, where the padded tensors of before needed about 40)."""
    import random

    from builders import WORDS, write_data

    from top.data import budget

    model = tiny_model_dir(tmp_path / "model")
    rng = random.Random(0)
    train = tmp_path / "train.csv"
    with open(train, "w", encoding="utf-8") as handle:
        handle.write("sentence,label\n")
        for _ in range(10**6):
            handle.write(f"{rng.choice(WORDS)} {rng.choice(WORDS)},{rng.randint(0, 1)}\n")
    dev = write_data(tmp_path / "dev.csv", 24, seed=2)
    argv = [command, "--model", str(model), "--train-file", str(train), "--validation-file", str(dev),
            "--batch-size", "16", "--max-steps", "2", "--device", "cpu", "--no-progress", "--output-dir",
            str(tmp_path / "out")]
    if command == "train":
        argv += ["--teacher", str(model), "--target-sparsity", "0.3", "--bin-num", "10", "--topk", "5"]
    # The process's own peak (VmHWM): ru_maxrss would carry over the forking test process's size across exec.
    script = ("import sys; from top import cli; code = cli.main(sys.argv[1:]); "
              "print([int(row.split()[1]) * 1024 for row in open('/proc/self/status') if row.startswith('VmHWM')][0]); "
              "sys.exit(code)")
    done = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True,
                          env=subprocess_env(), cwd=str(REPOSITORY), timeout=1200)
    # 2 steps end before pruning starts, so train finishes without best/ (exit 3).
    assert done.returncode in FINISHED, done.stderr[-2000:]
    peak = int(done.stdout.strip().splitlines()[-1])
    _, _, estimate = budget.estimate(train, budget.memory_bound())
    assert peak < 4 * 10**9 and peak < 10**9 + estimate, peak
    shutil.rmtree(tmp_path / "out")
