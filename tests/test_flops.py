from types import SimpleNamespace

import pytest
import torch

from top.errors import UserError
from top.method.flops import (
    exact_model_macs,
    expected_sparsities,
    flops_reduction,
    layer_keep_ratios,
    layer_macs,
    mean_of_batch_means,
    model_macs,
    relative_macs,
)
from top.method.gates import TokenGates

TINY = SimpleNamespace(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=3)


def _hand_layer(att, ffn, hidden, inter, heads):
    """Regrouped by hand: four H x H projections, two L x L x H products, softmax per head, FFN."""
    return 4 * att * hidden * hidden + 2 * att * att * hidden + heads * att * att + 2 * ffn * hidden * inter


def test_dense_bert_base_macs_at_length_128():
    from transformers import BertConfig

    config = BertConfig()  # 768 / 3072 / 12 heads / 12 layers
    macs = model_macs(torch.full((1, 12), 128, dtype=torch.long), config)
    assert macs.item() == 12 * _hand_layer(128, 128, 768, 3072, 12)


def test_tiny_config_uses_next_layer_length_for_ffn():
    lengths = torch.tensor([[10, 6, 3], [5, 5, 5]])
    hand = [
        _hand_layer(10, 6, 32, 64, 4) + _hand_layer(6, 3, 32, 64, 4) + _hand_layer(3, 3, 32, 64, 4),
        3 * _hand_layer(5, 5, 32, 64, 4),
    ]
    assert exact_model_macs(lengths, TINY).tolist() == hand
    assert model_macs(lengths.double(), TINY).tolist() == pytest.approx(hand)
    assert layer_macs(10, 6, TINY) == _hand_layer(10, 6, 32, 64, 4)


def test_missing_config_field_is_a_user_error():
    with pytest.raises(UserError):
        model_macs(torch.ones(1, 3), SimpleNamespace(hidden_size=32, num_hidden_layers=3))


def test_keep_ratios_multiply_and_carry_over():
    token_score = torch.tensor([[1.0, 0.0], [0.5, 0.5]])  # location means 0.5 and 0.5
    pruner_score = torch.tensor([1.0, 0.5])
    ratios = layer_keep_ratios(token_score, pruner_score, [1, 3], num_layers=5)
    # location 3 keeps 1 - 0.5 * 0.5 = 0.75; layers 2 and 4 carry the previous ratio.
    assert ratios.tolist() == pytest.approx([1.0, 0.5, 0.5, 0.375, 0.375])


@pytest.mark.parametrize("locations", [[0], [3], [2, 1]])
def test_keep_ratios_reject_locations_outside_the_model(locations):
    n = len(locations)
    with pytest.raises(UserError):
        layer_keep_ratios(torch.ones(n, 2), torch.ones(n), locations, num_layers=3)


def test_sparsity_is_zero_with_every_gate_on_or_every_layer_off():
    mask = torch.tensor([[1] * 9 + [0] * 3, [1] * 12])
    ones = torch.ones(2, 4)
    s, seq = expected_sparsities(ones, torch.ones(2), [1, 2], TINY, mask, task_length=12)
    assert s.item() == pytest.approx(0.0, abs=1e-6)
    # Against inputs padded to 12, the shorter row alone saves MACs; the full row saves none.
    hand_seq = 1 - (3 * _hand_layer(9, 9, 32, 64, 4) / (3 * _hand_layer(12, 12, 32, 64, 4)) + 1) / 2
    assert seq.item() == pytest.approx(hand_seq, rel=1e-5)
    s_off, seq_off = expected_sparsities(torch.zeros(2, 4), torch.zeros(2), [1, 2], TINY, mask, 12)
    assert s_off.item() == pytest.approx(0.0, abs=1e-6)
    assert seq_off.item() == pytest.approx(hand_seq, rel=1e-5)


def test_pruned_lengths_keep_cls():
    # One location at layer 2 keeping half of the non-[CLS] tokens: 9 tokens -> (9 - 1) * 0.5 + 1 = 5
    # from layer 2 on, so layer 1's feed-forward already runs on 5.
    mask = torch.ones(1, 9, dtype=torch.long)
    token_score = torch.tensor([[1.0, 0.0]])
    rel, rel_seq = relative_macs(token_score, torch.ones(1), [2], TINY, mask, task_length=16)
    pruned = _hand_layer(9, 9, 32, 64, 4) + _hand_layer(9, 5, 32, 64, 4) + _hand_layer(5, 5, 32, 64, 4)
    assert rel.item() == pytest.approx(pruned / (3 * _hand_layer(9, 9, 32, 64, 4)), rel=1e-6)
    assert rel_seq.item() == pytest.approx(pruned / (3 * _hand_layer(16, 16, 32, 64, 4)), rel=1e-6)
    s, _ = expected_sparsities(token_score, torch.ones(1), [2], TINY, mask, 16)
    assert flops_reduction(s).item() == pytest.approx(1 / rel.item(), rel=1e-5)


def test_gradient_flows_from_sparsity_to_gate_logits():
    torch.manual_seed(0)
    gates = TokenGates([1, 2], bin_num=4, token_init=0.5, layer_init=0.5)
    token_score, pruner_score = gates.keep_probabilities()
    mask = torch.tensor([[1] * 7 + [0] * 3, [1] * 10])
    s, seq = expected_sparsities(token_score, pruner_score, gates.prune_locations, TINY, mask, 10)
    (s + seq).backward()
    # Opening bin gates keeps more tokens, so sparsity falls as their logits rise; opening a layer
    # gate switches its pruning on, so sparsity rises with its logit.
    assert (gates.token_loga.grad < 0).all() and (gates.pruner_loga.grad > 0).all()


def test_flops_reduction():
    assert flops_reduction(0.5) == pytest.approx(2.0)
    assert flops_reduction(0.0) == pytest.approx(1.0)
    assert flops_reduction(torch.tensor(0.75)).item() == pytest.approx(4.0)
    with pytest.raises(UserError):
        flops_reduction(1.0)


def test_mean_of_batch_means_weighs_a_partial_batch_like_a_full_one():
    full = torch.full((32,), 0.2)
    partial = torch.tensor([0.8, 0.6])
    assert mean_of_batch_means([full, partial]) == pytest.approx((0.2 + 0.7) / 2)
    assert mean_of_batch_means([0.1, [0.3, 0.5]]) == pytest.approx(0.25)
