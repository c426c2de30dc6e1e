"""The compact path: same logits as the reference oracle, same survivors, one host sync, on both stacks."""

import pytest
import torch
from builders import tiny_config
from reference_compact import reference_compact

from top.method.compact import CompactPlan, compact_forward, prediction_agreement, survivor_table
from top.method.modeling import ToPClassifier
from top.method.pruning import prune_step


def tiny_model(kind="bert", layers=4, seed=0, prune_locations=None, labels=3):
    positions = 70 if kind == "roberta" else 64
    config = tiny_config(labels, layers, kind=kind, vocab_size=99, dropout=0.0, max_position_embeddings=positions)
    torch.manual_seed(seed)
    return ToPClassifier.from_config(config, prune_locations).eval()


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


def on(device, *tensors):
    """``tensors`` on ``device`` (None stays None)."""
    return tuple(None if t is None else t.to(device) for t in tensors)


def both(model, ids, mask, types, token_z, pruner_z, max_length=64):
    """``(fast, reference)`` for one batch."""
    plan = CompactPlan.from_gates(token_z, pruner_z, model.prune_locations, max_length)
    return compact_forward(model, plan, ids, mask, types), reference_compact(model, ids, mask, types, token_z, pruner_z)


def assert_same(fast, ref):
    assert torch.allclose(fast.logits, ref.logits, atol=1e-4, rtol=0)
    assert torch.equal(fast.kept_lengths, ref.kept_lengths)


@pytest.mark.parametrize("kind", ["bert", "roberta"])
@pytest.mark.parametrize("pairs", [False, True])
def test_compact_equals_the_reference(kind, pairs, device):
    model = tiny_model(kind, layers=4).to(device)
    ids, mask, types = on(device, *inputs([23, 9, 3, 17, 2, 40, 11], width=48, kind=kind,
                                          pairs=pairs and kind == "bert"))
    token_z, pruner_z = on(device, *gates(len(model.prune_locations), 5, seed=3))
    fast, ref = both(model, ids, mask, types, token_z, pruner_z)
    assert_same(fast, ref)
    # Tokens really were dropped, at every prune location.
    assert (fast.kept_lengths[:, -1] < fast.kept_lengths[:, 0]).any()
    with torch.no_grad():
        faithful = model(ids, mask, types, mode="faithful", token_z=token_z, pruner_z=pruner_z)
    assert all(prediction_agreement(fast.logits, faithful.logits))


@pytest.mark.parametrize("chunk_bytes", [1, 2**30])  # one head at a time; all heads at once
@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_attention_one_example_at_a_time_equals_the_reference(kind, chunk_bytes, monkeypatch):
    """The CPU path of long inputs (forced here by a zero threshold) keeps the same tokens and logits."""
    import top.method.compact as compact

    monkeypatch.setattr(compact, "PER_EXAMPLE_BYTES", 0)
    monkeypatch.setattr(compact, "CHUNK_BYTES", chunk_bytes)
    taken = []
    original = compact._attention_per_example
    monkeypatch.setattr(compact, "_attention_per_example",
                        lambda *args: taken.append(args[5]) or original(*args))
    model = tiny_model(kind, layers=5, labels=2, seed=1)
    ids, mask, types = inputs([23, 9, 3, 17, 2, 40, 11], width=48, kind=kind, pairs=kind == "bert")
    token_z, pruner_z = gates(len(model.prune_locations), 5, seed=3)
    fast, ref = both(model, ids, mask, types, token_z, pruner_z)
    assert_same(fast, ref)
    assert (fast.kept_lengths[:, -1] < fast.kept_lengths[:, 0]).any()
    # Every ranking layer took it (SDPA, where torch has it, keeps the layers that rank nothing).
    assert taken.count(True) == len(model.prune_locations)
    assert len(taken) == (len(model.prune_locations) if compact._HAS_SDPA else 5)


def test_attention_goes_one_example_at_a_time_only_where_the_batch_outgrows_the_threshold():
    import top.method.compact as compact

    def layout(batch, width):
        lengths = [width] * batch
        return compact._Layout(lengths, width, torch.arange(batch * width), torch.arange(batch) * width, None,
                               torch.ones(batch, width))

    rows = torch.zeros(1, 4)
    limit = compact.PER_EXAMPLE_BYTES
    width = 512
    batch_at_limit = limit // (12 * width * width * 4)  # MiniLM's 12 heads at 512 tokens
    assert compact._per_example(layout(batch_at_limit + 1, width), 12, True, rows)
    assert not compact._per_example(layout(batch_at_limit, width), 12, True, rows)
    assert not compact._per_example(layout(32, 64), 12, True, rows)  # short inputs stay batched
    # A layer that ranks nothing runs the fused kernel where torch has it.
    assert compact._per_example(layout(32, width), 12, False, rows) is (not compact._HAS_SDPA)


def test_single_example_equal_lengths_and_length_two_inputs():
    model = tiny_model(layers=3)
    token_z, pruner_z = gates(len(model.prune_locations), 4, seed=1, p_off=0.5)
    for lengths in ([17], [12, 12, 12], [2, 2], [2, 30, 2, 9]):
        ids, mask, _ = inputs(lengths, seed=len(lengths))
        assert_same(*both(model, ids, mask, None, token_z, pruner_z))


def test_regression_head_equals_the_reference(device):
    model = tiny_model(layers=5, labels=1, seed=2).to(device)
    ids, mask = on(device, *inputs([31, 2, 14, 6, 25], seed=4)[:2])
    token_z, pruner_z = on(device, *gates(len(model.prune_locations), 6, seed=5, p_off=0.5))
    fast, ref = both(model, ids, mask, None, token_z, pruner_z)
    assert fast.logits.shape == (5, 1)
    assert_same(fast, ref)


def test_without_gates_compact_equals_stock_hf():
    model = tiny_model(layers=3, prune_locations=[])
    ids, mask, _ = inputs([13, 4, 9])
    with torch.no_grad():
        stock = model.hf_model(input_ids=ids, attention_mask=mask).logits
    fast = compact_forward(model, CompactPlan.from_gates(None, None, [], 13), ids, mask)
    assert torch.allclose(fast.logits, stock, atol=1e-5, rtol=0)
    assert fast.kept_lengths.tolist() == [[13] * 3, [4] * 3, [9] * 3]
    assert_same(fast, reference_compact(model, ids, mask))


def test_layer_gate_off_keeps_everything_at_that_location(device):
    model = tiny_model(layers=4).to(device)  # prunes at 2 and 3
    ids, mask = on(device, *inputs([20, 8])[:2])
    token_z, pruner_z = on(device, torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]]), torch.tensor([0.0, 1.0]))
    fast, ref = both(model, ids, mask, None, token_z, pruner_z)
    assert fast.kept_lengths[:, 2].tolist() == [20, 8]  # location 2 switched off
    assert (fast.kept_lengths[:, 3] < fast.kept_lengths[:, 2]).all()
    assert_same(fast, ref)


def test_survivor_table_matches_prune_step_on_random_scores():
    token_z = torch.tensor([[1.0, 1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 1.0, 1.0, 1.0]])
    pruner_z = torch.tensor([1.0, 1.0])
    table = survivor_table(token_z, pruner_z, max_alive=30)
    assert CompactPlan.from_gates(token_z, pruner_z, [2, 3], 31).table == table
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


HOST_TRANSFERS = ("tolist", "item", "cpu", "numpy", "__bool__", "__int__", "__float__", "__index__")


def test_one_host_transfer_per_call_the_input_lengths(monkeypatch, device):
    model = tiny_model(layers=6).to(device)
    ids, mask = on(device, *inputs([23, 9, 3, 17, 2, 40, 11], width=48)[:2])
    token_z, pruner_z = on(device, *gates(len(model.prune_locations), 5, seed=3))
    plan = CompactPlan.from_gates(token_z, pruner_z, model.prune_locations, 48)
    calls = []
    for name in HOST_TRANSFERS:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _name=name, _original=original, **kwargs):
            calls.append((_name, tuple(self.shape)))
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    out = compact_forward(model, plan, ids, mask)
    monkeypatch.undo()
    # The lengths of the 7 inputs, once; none per layer though 4 of the 6 layers prune.
    assert calls == [("tolist", (7,))]
    assert (out.kept_lengths[:, -1] < out.kept_lengths[:, 0]).any()


def test_plan_is_checked_against_the_model_and_the_inputs():
    model = tiny_model(layers=4)
    ids, mask, _ = inputs([20, 8])
    token_z, pruner_z = gates(2, 4)
    with pytest.raises(ValueError, match="gates cover"):
        CompactPlan.from_gates(token_z, pruner_z, [1, 2, 3], 20)
    with pytest.raises(ValueError, match="plan prunes at"):
        compact_forward(model, CompactPlan.from_gates(token_z, pruner_z, [1, 3], 20), ids, mask)
    with pytest.raises(ValueError, match="at most 19"):
        compact_forward(model, CompactPlan.from_gates(token_z, pruner_z, [2, 3], 19), ids, mask)


def test_training_mode_is_refused_and_the_model_has_no_compact_mode():
    model = tiny_model(layers=3).train()
    ids, mask, _ = inputs([5, 3])
    with pytest.raises(ValueError, match="eval"):
        compact_forward(model, CompactPlan.from_gates(None, None, [], 5), ids, mask)
    with pytest.raises(ValueError, match="compact_forward"):
        model.eval()(ids, mask, mode="compact")
