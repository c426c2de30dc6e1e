"""top/training/training_cost.py: the measured step read with its types checked, and the preset estimates."""

import dataclasses

import pytest

from top.data.tasks import TASKS
from top.errors import UserError
from top.training import batch_order, training_cost
from top.training.training_cost import COST_FILE, ModelShape, load_training_cost

BERT_BASE = ModelShape("BERT-base", layers=12, hidden=768, heads=12, intermediate=3072)
MINILM = ModelShape("MiniLM-L6", layers=6, hidden=384, heads=12, intermediate=1536)


def hand_forward_flops(layers, hidden, heads, intermediate, length):
    """2 x MACs of a dense BERT layer stack, written out from the paper's count, not from top.method.flops."""
    head_dim = hidden // heads
    attention = heads * (3 * length * hidden * head_dim + 2 * length * length * head_dim + length * length)
    per_layer = attention + length * hidden * hidden + 2 * length * hidden * intermediate
    return 2 * layers * per_layer


def measurement(**changes):
    base = load_training_cost().measurement
    return dataclasses.replace(base, **changes)


def test_steps_match_top_trains_batch_order():
    for task in TASKS.values():
        per_epoch = batch_order.BatchOrder(task.train_size, training_cost.BATCH_SIZE, seed=0).steps_per_epoch
        assert training_cost.training_steps(task) == per_epoch * task.preset.epochs


@pytest.mark.parametrize("steps", [1, 99, 100, 101, 250, 26800])
def test_evaluations_follow_the_loops_rule(steps):
    # top/training/loop.py evaluates when step % eval_steps == 0 or at the last step.
    expected = sum(1 for step in range(1, steps + 1) if step % 100 == 0 or step == steps)
    assert training_cost.evaluations(steps) == expected


def test_cola_by_hand():
    cola = TASKS["cola"]
    assert (cola.train_size, cola.dev_size, cola.preset.epochs, cola.task_length) == (8551, 1043, 100, 64)
    steps = 268 * 100  # 8551 / 32 = 267.2 -> 268 steps an epoch
    assert training_cost.training_steps(cola) == steps
    assert training_cost.evaluations(steps) == 268

    f64 = hand_forward_flops(12, 768, 12, 3072, 64)
    assert f64 == 11_023_810_560
    f256 = hand_forward_flops(12, 768, 12, 3072, 256)
    assert training_cost.forward_flops(BERT_BASE, 64) == f64
    assert training_cost.forward_flops(BERT_BASE, 256) == f256
    evaluation = 268 * 1043 * f256
    assert training_cost.evaluation_flops(BERT_BASE, cola) == evaluation
    assert training_cost.training_flops(BERT_BASE, cola, teacher_cache=False) == steps * 32 * 4 * f64 + evaluation
    assert training_cost.training_flops(BERT_BASE, cola, teacher_cache=True) == (
        steps * 32 * 3 * f64 + 8551 * f64 + evaluation
    )


def test_a_long_document_preset_is_counted_at_512_and_evaluated_there():
    news = TASKS["20news"]
    assert (news.train_size, news.dev_size, news.preset.epochs, news.task_length) == (11314, 7532, 60, 512)
    steps = 354 * 60  # 11314 / 32 = 353.6 -> 354 steps an epoch
    assert training_cost.training_steps(news) == steps
    assert training_cost.evaluation_length(news) == 512 and training_cost.evaluation_length(TASKS["rte"]) == 256
    f512 = hand_forward_flops(12, 768, 12, 3072, 512)
    evaluation = training_cost.evaluations(steps) * 7532 * f512
    assert training_cost.evaluation_flops(BERT_BASE, news) == evaluation
    assert training_cost.training_flops(BERT_BASE, news, teacher_cache=True) == (
        steps * 32 * 3 * f512 + 11314 * f512 + evaluation
    )


def test_cpu_time_is_the_measured_step_scaled_by_flops():
    cola, mrpc = TASKS["cola"], TASKS["mrpc"]
    m = measurement(model=MINILM, batch_size=32, length=64, train_step_seconds=0.5, teacher_cache=False)
    f64, f128, f256 = (hand_forward_flops(6, 384, 12, 1536, n) for n in (64, 128, 256))
    per_example_forward = 0.5 / (32 * 4 * f64)  # seconds: a measured step is 32 x (3 + 1) forward passes
    # At the measured length the training part is the measured step times the steps.
    cola_evals = 268 * 1043 * f256 * per_example_forward
    assert training_cost.cpu_seconds(MINILM, cola, m) == pytest.approx(26800 * 0.5 + cola_evals)
    # At 128 tokens a step costs the MAC ratio more (more than 2x: attention grows with the square).
    mrpc_steps = 115 * 200
    expected = mrpc_steps * 0.5 * f128 / f64 + 230 * 408 * f256 * per_example_forward
    assert f128 / f64 > 2
    assert training_cost.cpu_seconds(MINILM, mrpc, m) == pytest.approx(expected)
    # BERT-base scales by its FLOPs over MiniLM's.
    bert = training_cost.training_flops(BERT_BASE, cola, teacher_cache=False) * per_example_forward
    assert training_cost.cpu_seconds(BERT_BASE, cola, m) == pytest.approx(bert)

    # A step measured with the teacher cached was 3 forward passes per example, and the run builds the cache.
    cached = measurement(model=MINILM, batch_size=32, length=64, train_step_seconds=0.5, teacher_cache=True)
    rate = 0.5 / (32 * 3 * f64)
    assert training_cost.cpu_seconds(MINILM, cola, cached) == pytest.approx(
        26800 * 0.5 + 8551 * f64 * rate + 268 * 1043 * f256 * rate
    )


def test_the_file_reads_into_its_types():
    cost = load_training_cost()
    m = cost.measurement
    assert (m.model.layers, m.model.hidden, m.model.heads, m.model.intermediate) == (6, 384, 12, 1536)
    assert (m.batch_size, m.length) == (32, 64)
    assert isinstance(m.train_step_seconds, float) and m.train_step_seconds > 0
    assert isinstance(m.teacher_cache, bool)
    assert cost.paper_model == dataclasses.replace(BERT_BASE, name=cost.paper_model.name)
    assert isinstance(cost.gpu.sustained_tflops, float) and cost.gpu.sustained_tflops > 0
    assert cost.gpu.gpu and cost.gpu.basis


def test_gpu_time_is_the_flops_at_the_assumed_rate():
    cola = TASKS["cola"]
    gpu = training_cost.GpuAssumption("some GPU", sustained_tflops=10.0, basis="a guess")
    flops = training_cost.training_flops(BERT_BASE, cola, teacher_cache=True)
    assert training_cost.gpu_seconds(BERT_BASE, cola, gpu) == pytest.approx(flops / 10e12)
    faster = dataclasses.replace(gpu, sustained_tflops=20.0)
    assert training_cost.gpu_seconds(BERT_BASE, cola, faster) == pytest.approx(flops / 20e12)
    # CoLA's preset on BERT-base is about 41 PFLOPs with the teacher cached: about 1.1 hours at 10 TFLOP/s.
    assert training_cost.gpu_seconds(BERT_BASE, cola, gpu) / 3600 == pytest.approx(1.14, rel=0.05)


BAD_FILES = [
    # The new value, then the old one commented out.
    ("train_step_seconds = ", "train_step_seconds = \"fast\"  #", "train_step_seconds must be of type float"),
    ("train_step_seconds = ", "train_step_seconds = -1.0  #", "measurement.train_step_seconds is -1.0; make it"),
    ("teacher_cache = true", "teacher_cache = 1", "measurement.teacher_cache must be of type bool"),
    ("torch_threads = ", "threads = ", "unknown field measurement.cpu.threads"),
    ("heads = 12\nintermediate = 1536", "heads = 7\nintermediate = 1536", "hidden (384) must be a multiple of"),
    ("\n[paper_model]\n", "\n[paper]\n", "unknown table [paper]"),
    ("length = 64\n", "", "measurement is missing the field 'length'"),
    ("[measurement]\n", "[measurement\n", "is not valid TOML"),
    ("sustained_tflops = ", "sustained_tflops = 0.0  #", "gpu_assumption.sustained_tflops is 0.0; make it"),
    ("sustained_tflops = ", "sustained_tflops = \"fast\"  #", "gpu_assumption.sustained_tflops must be of type"),
    ("\n[gpu_assumption]\n", "\n[gpu]\n", "unknown table [gpu]"),
]


@pytest.mark.parametrize("old, new, message", BAD_FILES)
def test_a_malformed_file_is_one_sentence(tmp_path, old, new, message):
    text = COST_FILE.read_text(encoding="utf-8")
    assert old in text
    path = tmp_path / "training_cost.toml"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    with pytest.raises(UserError) as error:
        load_training_cost(path)
    said = str(error.value)
    assert message in said and said.startswith(str(path)) and "\n" not in said


def test_a_missing_table_names_it(tmp_path):
    text = COST_FILE.read_text(encoding="utf-8")
    path = tmp_path / "training_cost.toml"
    path.write_text(text[: text.index("\n[paper_model]\n")], encoding="utf-8")
    with pytest.raises(UserError, match=r"has no \[paper_model\] table; add it"):
        load_training_cost(path)
