"""`nox -s bench`'s driver (scripts/bench_suite.py): goals read from bench_goals.toml and judged per run."""

import json

import bench_suite  # scripts/ is on pytest's pythonpath (pyproject.toml)
import pytest


def result(name, batch, runtime="torch", **ratios):
    baselines = {}
    for baseline, (speedup, flops) in ratios.items():
        baselines[baseline] = {"speedup": speedup, "flops_ratio": flops, "speedup_over_flops_ratio": speedup / flops}
    return {"bench_name": name, "batch_size": batch, "device": "cpu", "runtime": runtime, "baselines": baselines}


def test_every_goal_is_judged_from_the_goals_file():
    goals = bench_suite.read_goals()
    batch32 = goals["torch"]["32"]["dense_dynamic"]
    runs = [
        result("cola", 32, dense_padded=(9.0, 10.0), dense_dynamic=(1.7, 1.75)),
        result("mnli", 1, dense_dynamic=(1.0, 2.0), dense_padded=(3.0, 7.0)),
        result("minilm", 32, dense_padded=(4.0, 4.5), dense_dynamic=(1.5, 2.0)),
        result("minilm", 8, dense_padded=(1.0, 4.5)),  # no goal at this batch
    ]
    verdicts = bench_suite.judge(runs, goals, "torch")
    by = {(v["checkpoint"], v["batch_size"], v["goal"]): v for v in verdicts}
    assert len(verdicts) == 2 + 1 + 2
    v = by[("cola", 32, "speedup / FLOPs ratio vs dense_dynamic")]
    assert v["minimum"] == batch32 and v["figure"] == pytest.approx(1.7 / 1.75) and v["met"] == (1.7 / 1.75 >= batch32)
    padded = by[("cola", 32, "speedup / FLOPs ratio vs dense_padded")]
    assert padded["met"] is (0.9 >= goals["torch"]["32"]["dense_padded"])
    assert by[("mnli", 1, "speedup / FLOPs ratio vs dense_dynamic")]["met"] is False  # 0.5
    minilm = goals["torch"]["minilm"]["min_ratio"]
    assert by[("minilm", 32, "speedup / FLOPs ratio vs dense_padded")]["met"] is (4.0 / 4.5 >= minilm)
    assert by[("minilm", 32, "speedup / FLOPs ratio vs dense_dynamic")]["met"] is (0.75 >= minilm)


def test_the_long_document_goals_are_against_dense_dynamic_at_batch_8_and_32():
    goals = bench_suite.read_goals()
    rule = goals["torch"]["news512"]
    runs = [result("news512", batch, dense_dynamic=(1.8, 2.0), dense_padded=(2.0, 2.1)) for batch in (1, 8, 32)]
    verdicts = bench_suite.judge(runs, goals, "torch")
    assert [(v["batch_size"], v["goal"], v["met"]) for v in verdicts] == [
        (8, "speedup / FLOPs ratio vs dense_dynamic", 0.9 >= rule["min_ratio"]),
        (32, "speedup / FLOPs ratio vs dense_dynamic", 0.9 >= rule["min_ratio"]),
    ]
    onnx = bench_suite.judge([result("news512", 1, "onnxruntime", optimized_dense_dynamic=(1.6, 2.0))], goals,
                             "onnxruntime")
    assert [(v["goal"], v["minimum"], v["met"]) for v in onnx] == [
        ("speedup / FLOPs ratio vs optimized_dense_dynamic", goals["onnxruntime"]["batch1_min_ratio"]["news512"],
         0.8 >= goals["onnxruntime"]["batch1_min_ratio"]["news512"]),
    ]
    assert bench_suite.TASKS["news512"]["task"] == "20news"


def test_the_onnx_goals_are_against_the_optimized_dense_graph():
    goals = bench_suite.read_goals()
    rule = goals["onnxruntime"]
    assert rule["baseline"] == "optimized_dense_dynamic"
    runs = [
        result("cola", 1, "onnxruntime", optimized_dense_dynamic=(1.2, 1.7), dense_dynamic=(0.5, 1.7)),
        result("mnli", 1, "onnxruntime", optimized_dense_dynamic=(1.2, 2.0)),
        result("mnli", 32, "onnxruntime", optimized_dense_dynamic=(1.8, 2.0)),
        result("minilm", 1, "onnxruntime", optimized_dense_dynamic=(0.1, 2.0)),  # no onnx goal
    ]
    verdicts = bench_suite.judge(runs, goals, "onnxruntime")
    assert [(v["checkpoint"], v["batch_size"], v["met"]) for v in verdicts] == [
        ("cola", 1, 1.2 >= rule["batch1_min_speedup"]["cola"]),
        ("mnli", 1, 1.2 >= rule["batch1_min_speedup"]["mnli"]),
        ("mnli", 32, 0.9 >= rule["batch32_min_ratio"]),
    ]
    assert ("**no**" in bench_suite.goals_table(verdicts)) == (not all(v["met"] for v in verdicts))


def test_a_small_run_writes_the_summary_with_its_verdicts(tmp_path):
    out = tmp_path / "bench"
    code = bench_suite.main(["--small", "--output-dir", str(out), "--tasks", "cola", "--batch-sizes", "1",
                             "--timed-batches", "2", "--no-training"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    (run,) = summary["results"]
    assert run["bench_name"] == "cola" and run["batch_size"] == 1
    (verdict,) = summary["verdicts"]
    assert verdict["figure"] == pytest.approx(run["baselines"]["dense_dynamic"]["speedup_over_flops_ratio"])
    assert summary["goals_met"] == verdict["met"]
    text = (out / "summary.md").read_text()
    assert "| cola | 1 |" in text and "speedup / FLOPs ratio vs dense_dynamic" in text
