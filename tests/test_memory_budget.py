"""The memory estimate a run can check before it starts (issue 32: training at 512 on a 24 GB machine)."""

from builders import tiny_config

from top.training import memory_budget as mb

GIB = 1 << 30


def test_the_parameter_count_is_the_models():
    from transformers import BertConfig, BertForSequenceClassification

    for config in (tiny_config(num_labels=3), BertConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                                         num_attention_heads=4, num_labels=5)):
        model = BertForSequenceClassification(config)
        assert mb.parameter_count(config) == sum(p.numel() for p in model.parameters())


def test_activations_grow_with_the_batch_and_with_the_square_of_the_length():
    config = tiny_config()
    one = mb.activation_bytes(config, 1, 256)
    assert mb.activation_bytes(config, 8, 256) == 8 * one
    without_maps = mb.activation_bytes(config, 1, 256, materialised_layers=0)
    maps = one - without_maps
    assert mb.activation_bytes(config, 1, 512) - mb.activation_bytes(config, 1, 512, materialised_layers=0) == 4 * maps
    assert mb.activation_bytes(config, 1, 512, materialised_layers=0) == 2 * without_maps


def bert_base():
    from transformers import BertConfig

    return BertConfig(num_labels=20)


def test_bert_base_at_512_fits_24_gib_at_batch_16_and_not_at_32():
    """The measured peak of `top train` at 16 x 512 was 17.2 GB on the CPU; the default batch of 32 would not fit."""
    sixteen = mb.training_estimate(bert_base(), 16, 512, teacher_config=bert_base())
    assert 15e9 < sixteen.total < 19e9
    assert mb.memory_warning(sixteen, 24 * GIB, 16, 512, "bert-base") is None
    thirty_two = mb.training_estimate(bert_base(), 32, 512, teacher_config=bert_base())
    line = mb.memory_warning(thirty_two, 24 * GIB, 32, 512, "bert-base")
    assert line is not None and "batch 32 x 512" in line and "24.0 GiB" in line and line.count(".") <= 6
    suggested = int(line.split("--batch-size ")[1].split()[0])
    assert 16 <= suggested < 32
    assert mb.training_estimate(bert_base(), suggested, 512, teacher_config=bert_base()).total <= 24 * GIB
    assert mb.training_estimate(bert_base(), suggested + 1, 512, teacher_config=bert_base()).total > 24 * GIB


def test_nothing_fits_says_to_shorten_the_inputs():
    estimate = mb.training_estimate(bert_base(), 16, 512)
    line = mb.memory_warning(estimate, 2 * GIB, 16, 512, "bert-base")
    assert "--max-seq-length" in line and "--batch-size" not in line


def test_unknown_memory_gives_no_warning():
    assert mb.memory_warning(mb.training_estimate(bert_base(), 64, 512), None, 64, 512, "bert-base") is None


def test_the_cpu_memory_is_read():
    available = mb.available_bytes("cpu")
    assert available is None or available > 0
