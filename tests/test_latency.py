"""The latency model (top.method.latency) and its use: the fit, the prediction batch by batch, the expectation
under the gates, the constraint a target speedup makes, the refusals; `top train --target-speedup` and
`top bench` of what it trains. Nothing here times anything: the latency models are written by hand,
except in the end-to-end test, which only checks that the pipeline holds together."""

from __future__ import annotations

import hashlib
import json
import logging
import random
import shutil
from pathlib import Path

import pytest
import torch
from builders import FINISHED, read_log, tiny_config, train_argv

from top import cli
from top.errors import UserError
from top.method import latency
from top.method.compact import CompactPlan
from top.runtime import machine

COMPACT = (2e-3, 3e-5, 5e-5, 2e-7, 1e-4, 1e-7)  # seconds per unit of each compact term
DENSE = (1.5e-3, 3.2e-4, 8e-7)


def hand_model(config=None, batch_size=8, compact=COMPACT, dense=DENSE, **machine_fields) -> latency.LatencyModel:
    """A latency model written by hand for ``config`` (the tiny test shape) on this machine."""
    here = dict(latency.timing_conditions(machine.timing_machine("cpu")), **machine_fields)
    return latency.LatencyModel(batch_size, tuple(compact), tuple(dense), True, False,
                                latency.shape_of(config or tiny_config()), here, "")


def write_model(path: Path, model: latency.LatencyModel) -> Path:
    path.write_text(json.dumps(model.to_record(), indent=1))
    return path


# ----------------------------------------------------------------------------------------------- the fit


def test_fit_recovers_the_coefficients_of_noiseless_times():
    rng = random.Random(0)
    features = [[1.0] + [rng.uniform(0, 1000) for _ in range(5)] for _ in range(40)]
    truth = [2e-3, 3e-5, 5e-5, 0.0, 1e-4, 1e-7]  # one term absent: its coefficient must come out 0, not negative
    seconds = [latency.predict(truth, f) for f in features]
    fitted = latency.fit(features, seconds)
    assert all(c >= 0 for c in fitted)
    assert fitted == pytest.approx(truth, rel=1e-6, abs=1e-12)
    assert max(latency.relative_errors(fitted, features, seconds)) < 1e-8


def test_fit_weighs_relative_error_and_stays_non_negative_under_noise():
    rng = random.Random(1)
    features = [[1.0, rng.uniform(10, 500), rng.uniform(100, 250000)] for _ in range(60)]
    truth = [1e-3, 2e-4, 1e-7]
    seconds = [latency.predict(truth, f) * rng.uniform(0.97, 1.03) for f in features]
    fitted = latency.fit(features, seconds)
    assert all(c >= 0 for c in fitted)
    assert max(latency.relative_errors(fitted, features, seconds)) < 0.08
    summary = latency.error_summary(latency.relative_errors(fitted, features, seconds))
    assert summary["points"] == 60 and summary["median_relative_error"] <= summary["max_relative_error"]


def test_features_count_tokens_grid_and_ranking_layers():
    # Two examples of 5 and 3 tokens through 3 layers; layer 1 ranks and keeps 3 and 2 of them.
    layer_lengths = [[5, 3], [5, 3], [3, 2]]
    packed = latency.compact_features(layer_lengths, ranking=[1])
    assert packed == [1.0, 8 + 8 + 5, 8 + 5 + 5, 2 * 25 + 2 * 25 + 2 * 9, 1.0, 2 * 25]
    padded = latency.compact_features(layer_lengths, ranking=[1], packed=False)
    assert padded[1:3] == [10 + 10 + 6, 10 + 6 + 6]
    assert latency.dense_features([5, 3]) == [1.0, 10.0, 50.0]


def test_sorted_batches_are_the_full_length_sorted_batches_bench_times():
    assert latency.sorted_batches([3, 9, 4, 7, 5], 2) == [[9, 7], [5, 4]]
    assert latency.sorted_batches([3, 9], 4) == [[9, 3]]  # no full batch: the one there is


# ------------------------------------------------------------------------------ prediction and expectation


def test_the_expectation_is_the_exact_prediction_where_the_survivors_are_whole():
    """Batch 1, a 41-token input; location 2 keeps 5 of its 10 bins, location 3 all: 40 -> 20 -> 20 non-[CLS]
    tokens, which is (n - 1) r + 1 exactly, so under these 0/1 gates the expectation is the batch's prediction,
    but for the ranking of location 3, which the expectation counts and the plan (nothing to drop) skips."""
    config = tiny_config()
    model = hand_model(config, batch_size=1)
    token_z = torch.tensor([[1.0] * 5 + [0.0] * 5, [1.0] * 10])
    pruner_z = torch.ones(2)
    plan = CompactPlan.from_gates(token_z, pruner_z, [2, 3], 41)
    assert plan.layer_lengths([41], 4) == ([[41], [41], [21], [21]], {1: 0})
    compact, dense = model.batch_seconds([41], plan)
    pruned, unpruned = model.expected_seconds(token_z, pruner_z, [2, 3], torch.ones(1, 41, dtype=torch.long))
    ranking_at_layer_2 = COMPACT[4] + COMPACT[5] * 21 * 21
    assert float(pruned) == pytest.approx(compact + ranking_at_layer_2, rel=1e-6)
    assert float(unpruned) == pytest.approx(model.batch_seconds([41], None)[0], rel=1e-6)
    assert dense == pytest.approx(latency.predict(DENSE, [1, 41, 41 * 41]))


def test_the_expectation_is_differentiable_and_falls_as_tokens_are_dropped():
    model = hand_model()
    mask = torch.ones(3, 12, dtype=torch.long)
    mask[1, 8:] = 0
    token_score = torch.full((2, 10), 0.8, requires_grad=True)
    pruner_score = torch.full((2,), 0.9, requires_grad=True)
    pruned, unpruned = model.expected_seconds(token_score, pruner_score, [2, 3], mask)
    pruned.sum().backward()
    assert (token_score.grad > 0).all() and (pruner_score.grad < 0).all()  # keeping more costs more time
    assert unpruned.requires_grad is False
    with torch.no_grad():
        less = model.expected_seconds(torch.full((2, 10), 0.4), pruner_score, [2, 3], mask)[0]
    assert (less < pruned).all()


def test_speedups_without_pruning_are_dense_over_compact_and_zero_latency_sparsity():
    model = hand_model()
    lengths = [12, 9, 9, 7, 6, 5, 5, 4, 30, 3, 2, 11, 8, 8, 7, 6]
    figures = model.speedups(lengths, None)
    dense = sum(model.batch_seconds(b, None)[1] for b in latency.sorted_batches(lengths, 8))
    compact = sum(model.batch_seconds(b, None)[0] for b in latency.sorted_batches(lengths, 8))
    assert figures["unpruned_speedup"] == pytest.approx(dense / compact)
    assert figures["latency_sparsity"] == 0.0 and figures["predicted_speedup"] == figures["unpruned_speedup"]


# ------------------------------------------------------------------------------------------ the constraint


def dev_mask(n=40, seed=0, high=30):
    rng = random.Random(seed)
    lengths = [rng.randint(4, high) for _ in range(n)]
    mask = torch.zeros(n, max(lengths), dtype=torch.long)
    for row, length in enumerate(lengths):
        mask[row, :length] = 1
    return mask


def test_a_target_speedup_becomes_a_latency_sparsity_and_an_implied_mac_sparsity():
    config, model, mask = tiny_config(), hand_model(), dev_mask()
    unpruned = model.speedups(mask.sum(-1).tolist(), None)["unpruned_speedup"]
    target = 1.3 * unpruned
    constraint = latency.constraint_for(model, target, [2, 3], config, mask, 64)
    assert constraint.target == pytest.approx(1 - unpruned / target)
    assert 0 < constraint.implied_keep_ratio < 1 and 0 < constraint.implied_sparsity < 1
    reached = latency.even_keep_speedup(model, constraint.implied_keep_ratio, [2, 3], mask, unpruned)
    assert reached == pytest.approx(target, rel=1e-6)
    assert constraint.implied_flops_reduction == pytest.approx(1 / (1 - constraint.implied_sparsity))
    record = constraint.record()
    assert record["target_speedup"] == target and record["latency_model"]["batch_size"] == 8


def test_a_target_that_needs_no_pruning_or_more_than_pruning_gives_is_refused():
    config, model, mask = tiny_config(), hand_model(), dev_mask()
    unpruned = model.speedups(mask.sum(-1).tolist(), None)["unpruned_speedup"]
    with pytest.raises(UserError, match="needs no pruning"):
        latency.constraint_for(model, unpruned * 0.99, [2, 3], config, mask, 64)
    with pytest.raises(UserError, match="beyond what pruning at layers \\[2, 3\\] can give"):
        latency.constraint_for(model, unpruned * 50, [2, 3], config, mask, 64)


# ---------------------------------------------------------------------------------- reading and refusing


def test_a_latency_file_round_trips_and_carries_its_sha256(tmp_path):
    path = write_model(tmp_path / "latency.json", hand_model())
    model = latency.read_latency_model(path)
    assert model.compact == COMPACT and model.dense == DENSE and model.batch_size == 8
    assert model.fingerprint == hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("damage, message", [
    (lambda r: r.update(format="other"), "is not a latency model"),
    (lambda r: r.update(version=99), "format version 99"),
    (lambda r: r["compact"]["coefficients"].pop("attention_grid"), "lacks a field"),
    (lambda r: r["dense"]["coefficients"].update(tokens=-1.0), "not finite non-negative"),
])
def test_a_damaged_latency_file_is_one_sentence(tmp_path, damage, message):
    record = hand_model().to_record()
    damage(record)
    path = tmp_path / "latency.json"
    path.write_text(json.dumps(record))
    with pytest.raises(UserError, match=message):
        latency.read_latency_model(path)
    path.write_text("{not json")
    with pytest.raises(UserError, match="is not JSON"):
        latency.read_latency_model(path)
    with pytest.raises(UserError, match="does not exist; write one with `top calibrate"):
        latency.read_latency_model(tmp_path / "missing.json")


def test_another_architecture_is_refused_and_another_machine_named():
    model = hand_model(cpu="Some Other CPU", torch="0.0")
    with pytest.raises(UserError, match="another architecture.*hidden_size 32 there, 64 here"):
        wide = tiny_config()
        wide.hidden_size = 64
        latency.check_shape(model, wide, "--model m")
    latency.check_shape(model, tiny_config(), "--model m")  # the same shape passes
    here = machine.timing_machine("cpu")
    different = latency.machine_differences(model, here)
    assert len(different) == 2 and different[0].startswith("cpu 'Some Other CPU' there")


# ------------------------------------------------------------------------------ top train --target-speedup


LATENCY_RUN = ("--max-steps", "60", "--warmup-epochs", "1", "--reg-learning-rate", "0.2", "--eval-steps", "5",
               "--save-steps", "20", "--logging-steps", "5", "--sparsity-control", "adaptive",
               "--sparsity-epsilon", "0.03", "--best-rule", "nearest-target")


@pytest.fixture(scope="module")
def latency_run(tiny, tmp_path_factory):
    """`top train --target-speedup` on the tiny world with a hand-written latency model of the tiny shape."""
    root = tmp_path_factory.mktemp("latency")
    model_file = write_model(root / "latency.json", hand_model())
    model = latency.read_latency_model(model_file)
    from top.data.batching import encode
    from top.data.loading import load_task_data
    from top.storage.model_files import load_tokenizer

    dev = load_task_data(None, None, None, str(tiny["dev"]), max_seq_length=256, splits=("dev",)).dev
    mask = encode(dev, load_tokenizer(tiny["model"]), 256)["attention_mask"]
    unpruned = model.speedups(mask.sum(-1).tolist(), None)["unpruned_speedup"]
    target = round(1.3 * unpruned, 3)
    out = root / "run"
    code = cli.main(train_argv(tiny, out, "--latency-model", str(model_file), "--target-speedup", str(target),
                               *LATENCY_RUN))
    return {"out": out, "code": code, "target": target, "model": model, "unpruned": unpruned}


def test_training_to_a_target_speedup_lands_on_it_and_records_it(latency_run):
    out, model = latency_run["out"], latency_run["model"]
    assert latency_run["code"] in FINISHED
    summary = json.loads((out / "summary.json").read_text())
    run = json.loads((out / "run.json").read_text())
    assert summary["target_speedup"] == latency_run["target"] == run["args"]["target_speedup"]
    recorded = run["latency_constraint"]["latency_model"]["sha256"]
    assert summary["latency_model"]["sha256"] == model.fingerprint == recorded
    assert summary["unpruned_speedup"] == pytest.approx(latency_run["unpruned"])
    # The sparsity the target implies is the run's target sparsity (rounded), and is recorded as resolved.
    assert run["config"]["target_sparsity"] == round(summary["implied_sparsity"], 4)
    assert summary["target_latency_sparsity"] == pytest.approx(1 - latency_run["unpruned"] / latency_run["target"])
    # Every evaluation after pruning starts predicts its speedup; the run ends within the band.
    evaluations = [r for r in read_log(out) if "eval" in r and "expected_sparsity" in r]
    assert evaluations and all("predicted_speedup" in r and "expected_latency_sparsity" in r for r in evaluations)
    assert summary["reached_target"] is True
    assert abs(summary["final_expected_latency_sparsity"] - summary["target_latency_sparsity"]) <= 0.03
    steps = [r for r in read_log(out) if "loss" in r]
    assert all("expected_latency_sparsity" in r and "predicted_speedup" in r for r in steps)


def test_best_carries_the_target_and_bench_reports_it_beside_the_measurement(latency_run, tiny, tmp_path):
    out = latency_run["out"]
    assert latency_run["code"] == 0, "no evaluation qualified for best/"
    carried = json.loads((out / "best" / "latency_target.json").read_text())
    best = json.loads((out / "summary.json").read_text())["best"]
    assert carried["target_speedup"] == latency_run["target"]
    assert carried["predicted_speedup"] == best["predicted_speedup"]
    assert carried["latency_model_sha256"] == latency_run["model"].fingerprint
    output = tmp_path / "bench.json"
    code = cli.main(["bench", "--checkpoint", str(out / "best"), "--validation-file", str(tiny["dev"]),
                     "--max-seq-length", "256", "--batch-size", "8", "--no-memory", "--threads", "1",
                     "--output", str(output)])
    assert code == 0
    record = json.loads(output.read_text())
    assert record["target_speedup"] == latency_run["target"]
    assert record["measured_speedup"] == record["baselines"]["dense_dynamic"]["speedup"]
    # The bench predicts for exactly its own batches: the training's dev set here, so the same figure.
    assert record["predicted_speedup"] == pytest.approx(best["predicted_speedup"])
    assert record["target_conditions_differ"] == []  # the hand-written model is of this machine, at 1 thread
    assert "target 1." in cli_summary_of(record)


def cli_summary_of(record):
    from top.evaluation.bench import BenchResult

    return BenchResult(Path("bench.json"), record).summary


def test_bench_names_the_conditions_under_which_a_target_does_not_apply():
    from top.evaluation.bench_target import conditions

    model = hand_model(threads=2)
    assert conditions(model, 8, "torch", "cpu", 2) == []
    different = conditions(model, 32, "onnxruntime", "cpu", 1)
    assert different[0] == "batch size 8 there, 32 here"
    assert "runtime 'torch' there, 'onnxruntime' here" in different and "threads 2 there, 1 here" in different


def test_a_latency_model_timed_on_other_kernels_is_named_so(monkeypatch):
    """One written before top recorded its kernels, or timed with the prepacked kernels off, times other code."""
    from top.evaluation.bench_target import conditions
    from top.method import prepacked

    current = hand_model(threads=2)
    assert current.machine["kernels"].startswith("compact revision ")
    assert conditions(current, 8, "torch", "cpu", 2) == []
    older = hand_model(threads=2)
    del older.machine["kernels"]
    assert conditions(older, 8, "torch", "cpu", 2) == [
        f"kernels not recorded there (an older top), {current.machine['kernels']!r} here"]
    was_on = prepacked.enabled()
    monkeypatch.setenv(prepacked.ENV, "0")
    off = latency.timing_conditions(machine.timing_machine("cpu", threads=2))
    assert off["kernels"].endswith("linear layers: F.linear")
    different = latency.machine_differences(current, off)
    assert different == ([f"kernels {current.machine['kernels']!r} there, {off['kernels']!r} here"] if was_on else [])
    # onnxruntime runs no kernels of top's: its version is in the record instead.
    assert latency.timing_conditions(machine.timing_machine("cpu", "onnxruntime"))["kernels"] is None


def test_a_resumed_run_keeps_its_latency_model(latency_run, tiny, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(str(latency_run["out"]), str(out))
    same_numbers = tmp_path / "same.json"
    same_numbers.write_text(json.dumps(latency_run["model"].to_record()))  # other bytes, other sha256
    argv = train_argv(tiny, out, "--latency-model", str(same_numbers), "--target-speedup", str(latency_run["target"]),
                      *LATENCY_RUN, "--resume")
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "is not the file the run started with" in err and len(err.strip().splitlines()) == 1


def test_the_latency_flags_go_together_and_replace_target_sparsity(tiny, tmp_path, capsys):
    model_file = write_model(tmp_path / "latency.json", hand_model())
    cases = [
        (("--target-speedup", "1.5"), "--target-speedup needs --latency-model"),
        (("--latency-model", str(model_file)), "--latency-model needs --target-speedup"),
        (("--latency-model", str(model_file), "--target-speedup", "1.5", "--target-sparsity", "0.3"),
         "either --target-sparsity or --target-speedup"),
        (("--latency-model", str(model_file), "--target-speedup", "1.0"), "out of range"),
    ]
    for flags, message in cases:
        assert cli.main(train_argv(tiny, tmp_path / "out", *flags, "--max-steps", "3")) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err


def test_a_latency_model_of_another_shape_is_refused_and_of_another_machine_warned(tiny, tmp_path, capsys, caplog):
    wide = tiny_config()
    wide.hidden_size = 64
    other_shape = write_model(tmp_path / "wide.json", hand_model(wide))
    assert cli.main(train_argv(tiny, tmp_path / "a", "--latency-model", str(other_shape), "--target-speedup", "1.5",
                               "--max-steps", "3")) == 2
    err = capsys.readouterr().err
    assert "calibrated on another architecture" in err and "hidden_size 64 there, 32 here" in err
    other_machine = write_model(tmp_path / "other.json", hand_model(cpu="Some Other CPU"))
    with caplog.at_level(logging.WARNING, logger="top"):
        code = cli.main(train_argv(tiny, tmp_path / "b", "--latency-model", str(other_machine),
                                   "--target-speedup", "1.4", "--max-steps", "3", "--eval-steps", "3"))
    assert code in FINISHED
    warned = [r.getMessage() for r in caplog.records if "another machine" in r.getMessage()]
    assert len(warned) == 1 and "cpu 'Some Other CPU' there" in warned[0]


# ------------------------------------------------------------------------------------- end to end, timed


@pytest.mark.slow
def test_calibrate_then_train_to_a_target_speedup(tmp_path):
    """`top calibrate` on a small model whose time is in its tokens, then `top train --target-speedup` with
    the file it wrote: the pipeline holds together (no figure is judged; the times are this machine's)."""
    from builders import timed_model_dir, write_long_data

    model_dir = timed_model_dir(tmp_path / "model")
    train, dev = write_long_data(tmp_path / "train.csv", 64, seed=1), write_long_data(tmp_path / "dev.csv", 24, seed=2)
    output = tmp_path / "latency.json"
    assert cli.main(["calibrate", "--model", str(model_dir), "--validation-file", str(dev), "--max-seq-length", "128",
                     "--batch-size", "8", "--device", "cpu", "--threads", "1", "--profiles", "5", "--repeats", "3",
                     "--output", str(output)]) == 0
    record = json.loads(output.read_text())
    assert record["shape"]["hidden_size"] == 128 and record["batch_size"] == 8
    assert record["machine"]["cpu"] == machine.cpu_name() and record["machine"]["threads"] == 1
    assert record["machine"]["kernels"] == latency.timing_conditions(machine.timing_machine("cpu"))["kernels"]
    assert record["compact"]["fit_error"]["held_back"]["points"] > 0
    assert len(record["points"]) == 3 * 5 + 3 * 3  # 3 batches under 5 profiles, and at 3 widths
    model = latency.read_latency_model(output)
    from top.data.batching import encode
    from top.data.loading import load_task_data
    from top.storage.model_files import load_tokenizer

    mask = encode(load_task_data(None, None, None, str(dev), max_seq_length=128, splits=("dev",)).dev,
                  load_tokenizer(model_dir), 128)["attention_mask"]
    unpruned = model.speedups(mask.sum(-1).tolist(), None)["unpruned_speedup"]
    most = latency.even_keep_speedup(model, 0.0, [2, 3], mask, unpruned)
    target = round(max(1.01, unpruned + 0.5 * (most - unpruned)), 3)
    assert unpruned < target < most, (unpruned, most)  # pruning half the layers must buy time on this model
    out = tmp_path / "run"
    code = cli.main(["train", "--model", str(model_dir), "--teacher", str(model_dir), "--train-file", str(train),
                     "--validation-file", str(dev), "--max-seq-length", "128", "--bin-num", "10", "--topk", "5",
                     "--batch-size", "8", "--device", "cpu", "--no-progress", "--output-dir", str(out),
                     "--latency-model", str(output), "--target-speedup", str(target), *LATENCY_RUN])
    assert code in FINISHED
    summary = json.loads((out / "summary.json").read_text())
    assert summary["target_speedup"] == target and summary["latency_model"]["sha256"] == model.fingerprint
    assert summary["final_predicted_speedup"] is not None


def test_the_papers_control_holds_the_latency_sparsity_too(tiny, tmp_path):
    """--sparsity-control paper: the multipliers climb the Lagrangian of the latency sparsity (AdamW ascent)."""
    model_file = write_model(tmp_path / "latency.json", hand_model())
    out = tmp_path / "paper"
    code = cli.main(train_argv(tiny, out, "--latency-model", str(model_file), "--target-speedup", "1.45",
                               "--max-steps", "16", "--warmup-epochs", "1", "--reg-learning-rate", "0.2",
                               "--eval-steps", "8", "--logging-steps", "1", "--sparsity-control", "paper"))
    assert code in FINISHED
    steps = [r for r in read_log(out) if "loss" in r and r["step"] > 3]
    # Below the target the gap s - t is negative, so the ascent drives lambda_1 down, which pulls s up.
    assert steps[-1]["lambda_1"] < steps[0]["lambda_1"] < 0
    # The gates start to drop tokens (the latency sparsity per batch also moves with the batch's lengths).
    assert steps[-1]["expected_sparsity"] > 5 * steps[0]["expected_sparsity"] > 0
    assert json.loads((out / "run.json").read_text())["config"]["sparsity_control"] == "paper"


def test_a_task_preset_keeps_its_other_settings_and_takes_the_speedup_target(tiny, tmp_path):
    from builders import write_cola_dev

    glue = tmp_path / "glue"
    write_cola_dev(glue, n=64, seed=1, split="train")
    write_cola_dev(glue, n=24, seed=2)
    model_file = write_model(tmp_path / "latency.json", hand_model())
    out = tmp_path / "cola"
    argv = ["train", "--model", str(tiny["model"]), "--teacher", str(tiny["model"]), "--task", "cola",
            "--data-dir", str(glue), "--latency-model", str(model_file), "--target-speedup", "1.4", "--max-steps", "3",
            "--device", "cpu", "--no-progress", "--output-dir", str(out)]
    assert cli.main(argv) in FINISHED
    run = json.loads((out / "run.json").read_text())
    from top.data.tasks import get_task

    preset = get_task("cola").preset
    assert run["config"]["bin_num"] == preset.bin_num and run["config"]["topk"] == preset.topk
    assert run["config"]["target_sparsity"] == round(run["latency_constraint"]["implied_sparsity"], 4)
    assert run["config"]["target_sparsity"] != preset.sparsity


def test_calibrate_is_a_job_of_the_api_and_refuses_bad_input_before_timing(tiny, tmp_path, capsys):
    import top

    assert callable(top.calibrate) and hasattr(top.CalibrateConfig, "__dataclass_fields__")
    with pytest.raises(UserError, match=r"CalibrateConfig\(profiles=...\)"):
        top.CalibrateConfig(model="m", validation_file="f", profiles=2)
    base = ["calibrate", "--model", str(tiny["model"]), "--validation-file", str(tiny["dev"]), "--device", "cpu",
            "--output", str(tmp_path / "latency.json")]
    for extra, message in (((), "pass --max-seq-length"),
                           (("--max-seq-length", "64", "--batch-size", "64"), "fewer than one batch of 64"),
                           (("--max-seq-length", "64", "--prune-location", "3,2"), "--prune-location 3,2")):
        assert cli.main(base + list(extra)) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "latency.json").exists()
