"""The fast compact path: same logits as the reference compact mode, same survivors, on both stacks."""

import pytest
import torch
from builders import tiny_config

from top.compact import compact_forward, prediction_agreement, survivor_table
from top.modeling import ToPForSequenceClassification
from top.pruning import prune_step


def tiny_model(kind="bert", layers=4, seed=0, prune_locations=None):
    positions = 70 if kind == "roberta" else 64
    config = tiny_config(3, layers, kind=kind, vocab_size=99, dropout=0.0, max_position_embeddings=positions)
    torch.manual_seed(seed)
    return ToPForSequenceClassification.from_config(config, prune_locations).eval()


def inputs(lengths, width=None, seed=0, kind="bert", pairs=False):
    width = width or max(lengths)
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 99, (len(lengths), width), generator=gen)
    mask = torch.zeros_like(ids)
    types = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        mask[row, :n] = 1
        if pairs:
            types[row, n // 2 : n] = 1
    pad = 1 if kind == "roberta" else 0
    ids = torch.where(mask.bool(), ids, torch.full_like(ids, pad))
    return ids, mask, (types if pairs else None)


def gates(n_loc, bin_num, seed=0, p_off=0.4):
    gen = torch.Generator().manual_seed(seed)
    token_z = (torch.rand(n_loc, bin_num, generator=gen) > p_off).float()
    return token_z, torch.ones(n_loc)


def reference(model, ids, mask, types, token_z, pruner_z, mode="compact"):
    with torch.no_grad():
        return model(ids, mask, types, mode=mode, token_z=token_z, pruner_z=pruner_z)


@pytest.mark.parametrize("kind", ["bert", "roberta"])
@pytest.mark.parametrize("pairs", [False, True])
def test_fast_path_equals_reference_compact(kind, pairs):
    model = tiny_model(kind, layers=4)
    ids, mask, types = inputs([23, 9, 3, 17, 2, 40, 11], width=48, kind=kind, pairs=pairs and kind == "bert")
    token_z, pruner_z = gates(len(model.prune_locations), 5, seed=3)
    ref = reference(model, ids, mask, types, token_z, pruner_z)
    fast = compact_forward(model, ids, mask, types, token_z, pruner_z)
    assert torch.allclose(fast.logits, ref.logits, atol=1e-4, rtol=0)
    assert torch.equal(fast.kept_lengths, ref.kept_lengths)
    # Tokens really were dropped, at every prune location.
    assert (fast.kept_lengths[:, -1] < fast.kept_lengths[:, 0]).any()
    faithful = reference(model, ids, mask, types, token_z, pruner_z, mode="faithful")
    assert all(prediction_agreement(fast.logits, faithful.logits))


def test_fast_path_single_example_and_equal_lengths():
    model = tiny_model(layers=3)
    token_z, pruner_z = gates(len(model.prune_locations), 4, seed=1, p_off=0.5)
    for lengths in ([17], [12, 12, 12]):
        ids, mask, _ = inputs(lengths, seed=len(lengths))
        ref = reference(model, ids, mask, None, token_z, pruner_z)
        fast = compact_forward(model, ids, mask, None, token_z, pruner_z)
        assert torch.allclose(fast.logits, ref.logits, atol=1e-4, rtol=0)
        assert torch.equal(fast.kept_lengths, ref.kept_lengths)


def test_without_gates_fast_path_equals_stock_hf():
    model = tiny_model(layers=3)
    ids, mask, _ = inputs([13, 4, 9])
    with torch.no_grad():
        stock = model.hf_model(input_ids=ids, attention_mask=mask).logits
    fast = compact_forward(model, ids, mask)
    assert torch.allclose(fast.logits, stock, atol=1e-5, rtol=0)
    assert fast.kept_lengths.tolist() == [[13] * 3, [4] * 3, [9] * 3]


def test_layer_gate_off_keeps_everything_at_that_location():
    model = tiny_model(layers=4)  # prunes at 2 and 3
    ids, mask, _ = inputs([20, 8])
    token_z = torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    fast = compact_forward(model, ids, mask, None, token_z, torch.tensor([0.0, 1.0]))
    ref = reference(model, ids, mask, None, token_z, torch.tensor([0.0, 1.0]))
    assert fast.kept_lengths[:, 2].tolist() == [20, 8]  # location 2 switched off
    assert fast.kept_lengths[:, 3].tolist() == ref.kept_lengths[:, 3].tolist()
    assert (fast.kept_lengths[:, 3] < fast.kept_lengths[:, 2]).all()
    assert torch.allclose(fast.logits, ref.logits, atol=1e-4, rtol=0)


def test_survivor_table_matches_prune_step_on_random_scores():
    token_z = torch.tensor([[1.0, 1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 1.0, 1.0, 1.0]])
    pruner_z = torch.tensor([1.0, 1.0])
    table = survivor_table(token_z, pruner_z, max_alive=30)
    gen = torch.Generator().manual_seed(0)
    for alive_count in range(0, 31):
        keep = torch.zeros(1, 40)
        keep[0, torch.randperm(40, generator=gen)[:alive_count]] = 1.0
        importance = torch.rand(1, 40, generator=gen) + 0.01
        for location in range(2):
            kept = prune_step(importance, keep, token_z[location], pruner_z[location])
            assert int((kept > 0).sum()) == table[location][alive_count]
    # With every bin off, nothing but [CLS] would survive; with the layer gate off, everything.
    assert survivor_table(torch.zeros(1, 4), torch.ones(1), 9)[0] == [0] * 10
    assert survivor_table(torch.zeros(1, 4), torch.zeros(1), 9)[0] == list(range(10))


def test_training_mode_is_refused():
    model = tiny_model(layers=3).train()
    ids, mask, _ = inputs([5, 3])
    with pytest.raises(ValueError, match="eval"):
        compact_forward(model, ids, mask)
