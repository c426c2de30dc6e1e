"""The teacher cache of `top train`: values equal to the teacher run on every step's cut batch,
reused only while its key holds, rebuilt (never trusted, never unpickled) when damaged."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import torch
from builders import (
    FINISHED,
    KILLER,
    SHORT,
    assert_bit_identical,
    read_log,
    sentences,
    single_thread,
    subprocess_env,
    tensors,
    tiny_checkpoint,
    tiny_model_dir,
    train_argv,
)

from top import cli
from top.data import batching
from top.data.batching import encode
from top.data.files import Example
from top.method.losses import rank_distillation_loss
from top.method.modeling import ToPClassifier
from top.training import batch_order, teacher_cache

one_thread = pytest.fixture(scope="module", autouse=True)(single_thread)


# ------------------------------------------------------------------------------------- builders


def encoded_sentences(model_dir: Path, n: int, seed: int, roberta: bool = False) -> Dict[str, torch.Tensor]:
    """``n`` sentences of 1-30 words encoded at length 40 (RoBERTa: [PAD] is id 1, as its padding_idx)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    examples = [Example(text, None, i % 2) for i, text in enumerate(sentences(n, seed, low=1, high=30))]
    encoded = encode(examples, tokenizer, 40)
    if roberta:
        ids = encoded["input_ids"]
        swapped = torch.where(ids == 1, torch.zeros_like(ids), ids)
        encoded["input_ids"] = torch.where(ids == 0, torch.ones_like(ids), swapped)
    return encoded


def teacher_from(model_dir: Path) -> ToPClassifier:
    return ToPClassifier.from_pretrained(model_dir, prune_locations=[], attention="eager").eval()


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {
        "bert": tiny_model_dir(root / "bert", layers=3),
        "bert-other": tiny_model_dir(root / "bert-other", layers=3, seed=1),
        "roberta": tiny_checkpoint(root / "roberta", layers=3, pruned=False, model_type="roberta"),
    }


def prepare(directory: Path, model_dir: Path, train_set, order, total_steps: int, teacher=None, batch_size: int = 5):
    teacher = teacher if teacher is not None else teacher_from(model_dir)
    return teacher_cache.prepare(directory, teacher, model_dir, train_set, order, total_steps, batch_size,
                                 progress=False)


class CountingForward:
    """Counts the forward passes of every ToP model while it is installed."""

    def __init__(self, monkeypatch):
        self.calls = 0
        real = ToPClassifier.forward

        def counted(model, *args, **kwargs):
            self.calls += 1
            return real(model, *args, **kwargs)

        monkeypatch.setattr(ToPClassifier, "forward", counted)


# ------------------------------------------------------------------------------------- the schedule


@pytest.mark.parametrize(
    "num_examples, batch_size, world_size, steps", [(30, 4, 1, 25), (31, 3, 2, 40), (29, 4, 3, 17)]
)
@pytest.mark.parametrize("grouped", [False, True])
def test_schedule_pairs_are_every_steps_examples_and_cut_lengths(num_examples, batch_size, world_size, steps, grouped):
    lengths = np.random.default_rng(0).integers(2, 20, num_examples)

    def order_of(rank=0):
        order = batch_order.BatchOrder(num_examples, batch_size, 5, world_size, rank)
        return order.group_by_length(torch.from_numpy(lengths)) if grouped else order

    seen = set()
    for rank in range(world_size):
        order = order_of(rank)
        for step in range(steps):
            local, chunk = order.indices(step)
            seen |= {(int(e), int(lengths[chunk.numpy()].max())) for e in local.numpy()}
    pairs = teacher_cache.schedule_pairs(lengths, order_of(), steps)
    assert sorted(seen) == [tuple(p) for p in pairs.tolist()]
    # Several cut lengths per example: the case the cache exists for.
    assert len(pairs) > len(np.unique(pairs[:, 0]))


# ------------------------------------------------------------------------------------- equality


@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_cached_outputs_equal_the_teacher_on_every_cut_batch(models, tmp_path, kind):
    train_set = encoded_sentences(models[kind], 23, seed=3, roberta=kind == "roberta")
    lengths = train_set["attention_mask"].sum(dim=1)
    world_size, total_steps = 2, 14  # 2 x 3 examples a step: 3 full steps an epoch, the rest dropped
    teacher = teacher_from(models[kind])
    order = batch_order.BatchOrder(23, 3, 7, world_size)
    cache = prepare(tmp_path / "cache", models[kind], train_set, order, total_steps,
                    teacher=teacher)
    torch.manual_seed(0)
    student_layers = 3
    cut_lengths, short_in_long = set(), 0
    for rank in range(world_size):
        order = batch_order.BatchOrder(23, 3, 7, world_size, rank)
        for step in range(total_steps):
            local, chunk = order.indices(step)
            batch = batching.step_batch(train_set, local, chunk, torch.device("cpu"))
            length = batch["input_ids"].shape[1]
            cut_lengths.add(length)
            short_in_long += int((lengths[local] < length).sum())
            with torch.no_grad():
                fresh = teacher(**batching.model_inputs(batch), mode="faithful", probability_layers=[2])
            cached = cache.teacher_outputs(local, length, torch.device("cpu"))
            torch.testing.assert_close(cached.logits, fresh.logits, rtol=1e-5, atol=1e-7)
            torch.testing.assert_close(cached.importance[-1], fresh.importance[-1], rtol=1e-5, atol=1e-7)
            mask = batch["attention_mask"][:, 1:]
            assert torch.equal(cached.importance[-1][mask == 0], torch.zeros(int((mask == 0).sum())))
            student = [torch.rand(len(local), length - 1) for _ in range(student_layers)]
            fresh_loss, cached_loss = (
                rank_distillation_loss(student, out.importance[-1], mask, 5, layers=[1, 2]) for out in (fresh, cached)
            )
            assert abs(float(fresh_loss) - float(cached_loss)) <= 1e-6
    assert len(cut_lengths) >= 4 and short_in_long > 20


def test_a_whole_run_with_the_cache_matches_the_teacher_at_every_step(tiny, tmp_path):
    # Six layers, so the rank distillation teaches student layer 1 (four would leave it none).
    six = dict(tiny, model=tiny_model_dir(tmp_path / "six", layers=6))
    flags = (*SHORT, "--attention", "eager")
    cached, fresh = tmp_path / "cached", tmp_path / "fresh"
    assert cli.main(train_argv(six, cached, *flags)) in FINISHED
    assert cli.main(train_argv(six, fresh, *flags, "--no-teacher-cache")) in FINISHED

    meta = json.loads((cached / teacher_cache.DIRECTORY / teacher_cache.META_FILE).read_text())
    assert json.loads((cached / "run.json").read_text())["teacher_cache"] == {"used": True, "key": meta["key"]}
    assert json.loads((fresh / "run.json").read_text())["teacher_cache"] == {"used": False, "key": None}
    assert not (fresh / teacher_cache.DIRECTORY).exists()

    left, right = read_log(cached), read_log(fresh)
    assert [r["step"] for r in left] == [r["step"] for r in right]
    compared = 0
    for a, b in zip(left, right):
        for key in ("loss", "task_loss", "rank_loss", "lagrangian", "lambda_1", "lambda_2", "expected_sparsity"):
            if key in a:
                assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), (a["step"], key)
                compared += 1
    assert compared > 30 and any(r.get("rank_loss", 0) > 0 for r in left)  # the rank distillation ran


# ------------------------------------------------------------------------------------- reuse and invalidation


@pytest.fixture(scope="module")
def data_sets(models) -> Dict[str, Dict[str, torch.Tensor]]:
    return {"a": encoded_sentences(models["bert"], 20, seed=1), "b": encoded_sentences(models["bert"], 20, seed=2)}


def test_an_unchanged_cache_is_reused_without_a_teacher_pass(models, data_sets, tmp_path, monkeypatch, caplog):
    directory = tmp_path / "cache"
    first = prepare(directory, models["bert"], data_sets["a"], batch_order.BatchOrder(20, 4, 1), 9)
    written = {p.name: p.stat().st_mtime_ns for p in directory.iterdir()}
    counter = CountingForward(monkeypatch)
    with caplog.at_level(logging.INFO, logger="top.training.teacher_cache"):
        again = prepare(directory, models["bert"], data_sets["a"], batch_order.BatchOrder(20, 4, 1), 9)
    assert counter.calls == 0 and again.key == first.key
    assert {p.name: p.stat().st_mtime_ns for p in directory.iterdir()} == written
    assert any("reusing" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    "change, part",
    [("teacher", "teacher"), ("data", "data"), ("seed", "schedule"), ("batch size", "schedule"), ("steps", "schedule"),
     ("grouping", "schedule")],
)
def test_a_changed_teacher_data_or_schedule_rebuilds(models, data_sets, tmp_path, monkeypatch, caplog, change, part):
    directory = tmp_path / "cache"
    first = prepare(directory, models["bert"], data_sets["a"], batch_order.BatchOrder(20, 4, 1), 9)
    model, data, order, steps = models["bert"], data_sets["a"], batch_order.BatchOrder(20, 4, 1), 9
    if change == "teacher":
        model = models["bert-other"]
    elif change == "data":
        data = data_sets["b"]
    elif change == "seed":
        order = batch_order.BatchOrder(20, 4, 2)
    elif change == "batch size":
        order = batch_order.BatchOrder(20, 5, 1)
    elif change == "grouping":
        order = batch_order.BatchOrder(20, 4, 1).group_by_length(data["attention_mask"].sum(dim=1))
    else:
        steps = 12
    teacher = teacher_from(model)
    counter = CountingForward(monkeypatch)
    with caplog.at_level(logging.INFO, logger="top.training.teacher_cache"):
        second = prepare(directory, model, data, order, steps, teacher=teacher)
    assert second.key != first.key and counter.calls > 0
    meta = json.loads((directory / teacher_cache.META_FILE).read_text())
    assert meta["key"] == second.key
    reasons = [r.getMessage() for r in caplog.records if "building" in r.getMessage()]
    assert len(reasons) == 1 and f"{part} changed" in reasons[0], reasons
    # The rebuilt cache holds the new teacher's outputs for the new schedule.
    local, chunk = order.indices(0)
    batch = batching.step_batch(data, local, chunk, torch.device("cpu"))
    with torch.no_grad():
        fresh = teacher(**batching.model_inputs(batch), mode="faithful", probability_layers=[2])
    cached = second.teacher_outputs(local, batch["input_ids"].shape[1], torch.device("cpu"))
    torch.testing.assert_close(cached.logits, fresh.logits, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(cached.importance[-1], fresh.importance[-1], rtol=1e-5, atol=1e-7)


class WritesMarker:
    """Unpickling this creates the file ``marker``."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _pickled_index(directory: Path, marker: Path) -> None:
    np.save(str(directory / teacher_cache.INDEX_FILE), np.array([WritesMarker(str(marker))], dtype=object),
            allow_pickle=True)


def _truncated_importance(directory: Path, marker: Path) -> None:
    path = directory / teacher_cache.IMPORTANCE_FILE
    os.truncate(str(path), path.stat().st_size // 2)


def _altered_value(directory: Path, marker: Path) -> None:
    path = directory / teacher_cache.IMPORTANCE_FILE
    values = np.load(str(path), allow_pickle=False)
    values[3] += 0.25
    np.save(str(path), values)


def _garbled_meta(directory: Path, marker: Path) -> None:
    (directory / teacher_cache.META_FILE).write_text("{not json")


def _missing_logits(directory: Path, marker: Path) -> None:
    (directory / teacher_cache.LOGITS_FILE).unlink()


def _reshaped_logits(directory: Path, marker: Path) -> None:
    np.save(str(directory / teacher_cache.LOGITS_FILE), np.zeros((3, 2), dtype=np.float32))


@pytest.mark.parametrize(
    "damage, needle",
    [
        (_pickled_index, "index.npy cannot be read"),
        (_truncated_importance, "importance.npy cannot be read"),
        (_altered_value, "importance.npy differs"),
        (_garbled_meta, "meta.json cannot be read"),
        (_missing_logits, "logits.npy cannot be read"),
        (_reshaped_logits, "logits.npy holds"),
    ],
    ids=["pickled", "truncated", "altered", "meta", "missing", "reshaped"],
)
def test_a_damaged_cache_is_rebuilt_and_nothing_in_it_runs(models, data_sets, tmp_path, caplog, damage, needle):
    directory, marker = tmp_path / "cache", tmp_path / "marker"
    order = batch_order.BatchOrder(20, 4, 1)
    first = prepare(directory, models["bert"], data_sets["a"], order, 9)
    local, chunk = order.indices(4)
    length = int(data_sets["a"]["attention_mask"][chunk].sum(dim=1).max())
    expected = first.teacher_outputs(local, length, torch.device("cpu"))
    del first  # release the memory maps before the files change
    damage(directory, marker)
    with caplog.at_level(logging.INFO, logger="top.training.teacher_cache"):
        again = prepare(directory, models["bert"], data_sets["a"], order, 9)
    assert not marker.exists()
    reasons = [r.getMessage() for r in caplog.records if "building" in r.getMessage()]
    assert len(reasons) == 1 and needle in reasons[0], reasons
    got = again.teacher_outputs(local, length, torch.device("cpu"))
    assert torch.equal(got.logits, expected.logits) and torch.equal(got.importance[-1], expected.importance[-1])


def test_the_pickled_payload_is_live(tmp_path):
    """The hostile file of the test above would run its payload if it were unpickled."""
    marker = tmp_path / "marker"
    _pickled_index(tmp_path, marker)
    np.load(str(tmp_path / teacher_cache.INDEX_FILE), allow_pickle=True)
    assert marker.exists()


# ------------------------------------------------------------------------------------- resume


def test_resume_reuses_the_cache_and_stays_bit_identical(tiny, tmp_path, monkeypatch):
    reference = tmp_path / "reference"
    assert cli.main(train_argv(tiny, reference, *SHORT)) in FINISHED
    out = tmp_path / "out"
    killed = subprocess.run(
        [sys.executable, "-c", KILLER, "step", "19", *train_argv(tiny, out, *SHORT)],
        cwd=str(tmp_path), env=subprocess_env(), capture_output=True, text=True, timeout=120,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    meta = out / teacher_cache.DIRECTORY / teacher_cache.META_FILE
    before = (meta.stat().st_mtime_ns, json.loads(meta.read_text())["key"])

    def no_build(*args, **kwargs):
        raise AssertionError("the teacher cache was rebuilt on --resume")

    monkeypatch.setattr(teacher_cache, "build", no_build)
    assert cli.main(train_argv(tiny, out, *SHORT, "--resume")) in FINISHED
    assert (meta.stat().st_mtime_ns, json.loads(meta.read_text())["key"]) == before
    assert_bit_identical(reference / "last", out / "last")
    assert read_log(out) == read_log(reference)


def test_a_fresh_run_on_the_same_output_reuses_the_cache_and_a_new_seed_rebuilds_it(tiny, tmp_path, caplog):
    out = tmp_path / "out"
    quick = ("--target-sparsity", "0.3", "--max-steps", "3", "--eval-steps", "3", "--save-steps", "3")
    assert cli.main(train_argv(tiny, out, *quick)) in FINISHED
    key = json.loads((out / "run.json").read_text())["teacher_cache"]["key"]
    with caplog.at_level(logging.INFO, logger="top.training.teacher_cache"):
        assert cli.main(train_argv(tiny, out, *quick, "--overwrite-output-dir")) in FINISHED
        assert cli.main(train_argv(tiny, out, *quick, "--seed", "58", "--overwrite-output-dir")) in FINISHED
    messages = [r.getMessage() for r in caplog.records]
    assert sum("reusing" in m for m in messages) == 1 and sum("schedule changed" in m for m in messages) == 1
    assert json.loads((out / "run.json").read_text())["teacher_cache"]["key"] != key
    assert not [p for p in out.iterdir() if p.name.startswith(".") and p.name != ".top.lock"]


# ------------------------------------------------------------------------------------- data parallel

DDP_STEPS = ("--target-sparsity", "0.3", "--sparsity-epsilon", "0.3", "--max-steps", "6", "--warmup-epochs", "1",
             "--reg-learning-rate", "0.1",
             "--eval-steps", "3", "--save-steps", "3", "--logging-steps", "1", "--attention", "eager",
             "--eval-batch-size", "4")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _two_processes(argv: List[str], cwd: Path) -> None:
    launched = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2", "--master_addr",
         "127.0.0.1", "--master_port", str(_free_port()), "-m", "top", *argv],
        cwd=str(cwd), env=subprocess_env(), capture_output=True, text=True, timeout=300,
    )
    assert launched.returncode == 0, launched.stdout[-3000:] + launched.stderr[-3000:]


@pytest.mark.multiprocess
def test_two_processes_share_the_build_and_match_the_teacher_every_step(tiny, tmp_path):
    runs = {}
    for name, extra in (("cached", ()), ("fresh", ("--no-teacher-cache",))):
        runs[name] = tmp_path / name
        argv = train_argv(tiny, runs[name], *DDP_STEPS, *extra)
        argv[argv.index("--batch-size") + 1] = "4"
        _two_processes(argv, tmp_path)

    meta = json.loads((runs["cached"] / teacher_cache.DIRECTORY / teacher_cache.META_FILE).read_text())
    assert [part["rank"] for part in meta["built_by"]] == [0, 1]
    assert all(part["batches"] > 0 for part in meta["built_by"])
    assert meta["built_by"][0]["pid"] != meta["built_by"][1]["pid"]
    assert meta["parts"]["schedule"]["world_size"] == 2

    left, right = tensors(runs["cached"] / "last"), tensors(runs["fresh"] / "last")
    assert left.keys() == right.keys()
    for key in left:
        torch.testing.assert_close(left[key], right[key], rtol=1e-4, atol=1e-5, msg=key)
    for a, b in zip(read_log(runs["cached"]), read_log(runs["fresh"])):
        for key in ("loss", "rank_loss", "expected_sparsity", "lambda_1"):
            if key in a:
                assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), (a["step"], key)
