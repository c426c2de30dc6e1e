"""The model wrapper: stock logits without pruning, the faithful rule, compact agreement."""

import pytest
import torch
from builders import tiny_config as builders_tiny_config
from reference_compact import reference_compact

from top.errors import UserError
from top.method.compact import CompactPlan, compact_forward
from top.method.modeling import ToPClassifier, default_prune_locations, sdpa_available, set_attention
from top.method.pruning import prune_step, rank_to_bin


def tiny_config(kind="bert", layers=4, labels=3):
    return builders_tiny_config(labels, layers, kind=kind, vocab_size=99, dropout=0.0, max_position_embeddings=40)


def batch(seed=0, size=5, length=14):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 99, (size, length), generator=gen)
    ids[:, 0] = 2
    mask = torch.ones_like(ids)
    lengths = [length, 9, 3, 1 + length // 2, 2][:size]
    for row, n in enumerate(lengths):
        mask[row, n:] = 0
        ids[row, n:] = 0
    return ids, mask


def model_for(kind="bert", seed=0, **kw):
    torch.manual_seed(seed)
    model = ToPClassifier.from_config(tiny_config(kind, **kw))
    return model.eval()


@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_without_gates_logits_equal_stock_hf_exactly(kind):
    model = model_for(kind)
    ids, mask = batch()
    if kind == "roberta":
        ids = torch.where(mask.bool(), ids, torch.ones_like(ids))
    with torch.no_grad():
        stock = model.hf_model(input_ids=ids, attention_mask=mask).logits
        ours = model(ids, mask).logits
    assert torch.equal(stock, ours)


def test_rank_to_bin_edge_cases():
    # One surviving token: rank 0 -> bin 0. The dropped one ranks after it, at 1/(1+1e-6) of the
    # way, which the original's 1e-6 puts in the last bin (it stays dropped whatever that gate says).
    bins = rank_to_bin(torch.tensor([[0.3, 0.9]]), torch.tensor([[1.0, 0.0]]), bin_num=4)
    assert bins.tolist() == [[0, 3]]
    # Two survivors: rank 1 of 2 is 1/(2+1e-6) of the way: just under the boundary -> bin 1 of 4.
    bins = rank_to_bin(torch.tensor([[0.1, 0.7]]), torch.tensor([[1.0, 1.0]]), bin_num=4)
    assert bins.tolist() == [[1, 0]]
    # Further down the ranking everything past the survivors clamps into range.
    bins = rank_to_bin(torch.rand(1, 6), torch.tensor([[1.0, 1.0, 0.0, 0.0, 0.0, 0.0]]), bin_num=4)
    assert bins.max() <= 4 and bins.min() >= 0
    # All padding: bins stay in range and, whatever they are, nothing survives the step.
    bins = rank_to_bin(torch.rand(2, 5), torch.zeros(2, 5), bin_num=3)
    assert bins.min() >= 0 and bins.max() <= 3
    assert prune_step(torch.rand(2, 5), torch.zeros(2, 5), torch.ones(3), torch.tensor(1.0)).eq(0).all()
    # Ties: equal scores still get distinct ranks 0..3, so the tied row fills bins 0, 0, 1, 2.
    bins = rank_to_bin(torch.full((1, 4), 0.25), torch.ones(1, 4), bin_num=4)
    assert sorted(bins[0].tolist()) == [0, 0, 1, 2]


def test_prune_step_keep_rule_and_straight_through_layer_gate():
    importance = torch.tensor([[0.4, 0.3, 0.2, 0.1]])
    keep = torch.ones(1, 4)
    bin_gates = torch.tensor([1.0, 1.0, 0.0, 0.0])
    # Ranks 0..3 of 4 fall in bins 0, 0, 1, 2 (the original's 1e-6 rounds boundaries down).
    assert prune_step(importance, keep, bin_gates, torch.tensor(1.0)).tolist() == [[1, 1, 1, 0]]
    # Layer gate off: nobody is dropped at this location.
    assert prune_step(importance, keep, bin_gates, torch.tensor(0.0)).tolist() == [[1, 1, 1, 1]]
    # Cumulative: an already dropped token stays dropped even when its bin is on.
    again = prune_step(importance, torch.tensor([[0.0, 1.0, 1.0, 1.0]]), torch.ones(4), torch.tensor(1.0))
    assert again.tolist() == [[0, 1, 1, 1]]
    gate = torch.tensor(0.3, requires_grad=True)
    soft = torch.tensor([0.9, 0.8, 0.2, 0.1], requires_grad=True)
    out = prune_step(importance, keep, soft, gate)
    # Forward uses the binary layer gate, backward reaches both gates.
    assert torch.allclose(out, soft.detach()[[0, 0, 1, 2]].unsqueeze(0))
    out.sum().backward()
    assert gate.grad is not None and gate.grad.abs() > 0
    assert torch.allclose(soft.grad, torch.tensor([2.0, 1.0, 1.0, 0.0]))


def reference_faithful(model, ids, mask, token_z, pruner_z):
    """An independent, per-example statement of the paper's evaluation rule."""
    hf = model.hf_model
    base = hf.bert
    logits = []
    for row in range(ids.shape[0]):
        x = base.embeddings(input_ids=ids[row : row + 1])
        alive = mask[row].clone().float()  # padded positions are never alive
        scores = None
        for index, layer in enumerate(base.encoder.layer):
            if index in model.prune_locations:
                loc = model.prune_locations.index(index)
                if pruner_z[loc] > 0:
                    candidates = [j for j in range(1, ids.shape[1]) if alive[j] > 0]
                    ranked = sorted(candidates, key=lambda j: -float(scores[j]))
                    bin_num = token_z.shape[1]
                    for rank, j in enumerate(ranked):
                        if token_z[loc, int(rank / (len(ranked) + 1e-6) * bin_num)] == 0:
                            alive[j] = 0.0
            additive = ((1 - alive) * -10000.0)[None, None, None, :]
            x, probs = layer(x, attention_mask=additive, output_attentions=True)[:2]
            scores = probs[0].mean(dim=(0, 1))  # heads and every query row, padding rows included
        logits.append(hf.classifier(base.pooler(x)))
    return torch.cat(logits)


def test_faithful_matches_independent_reference(device):
    model = model_for(layers=5).to(device)
    ids, mask = (t.to(device) for t in batch(seed=3))
    token_z = torch.tensor([[1, 1, 0, 1, 0, 0], [1, 0, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0]], dtype=torch.float,
                           device=device)
    pruner_z = torch.tensor([1.0, 0.0, 1.0], device=device)
    with torch.no_grad():
        ours = model(ids, mask, mode="faithful", token_z=token_z, pruner_z=pruner_z)
        ref = reference_faithful(model, ids, mask, token_z, pruner_z)
    assert torch.allclose(ours.logits, ref, atol=1e-5)
    assert ours.kept_lengths.shape == (ids.shape[0], 5)
    assert (ours.kept_lengths[:, -1] <= mask.sum(1)).all()


def compact(model, ids, mask, token_z, pruner_z):
    """The production compact path, checked against the test oracle on the way."""
    plan = CompactPlan.from_gates(token_z, pruner_z, model.prune_locations, ids.shape[1])
    fast = compact_forward(model, plan, ids, mask)
    reference = reference_compact(model, ids, mask, None, token_z, pruner_z)
    assert torch.allclose(fast.logits, reference.logits, atol=1e-4, rtol=0)
    assert torch.equal(fast.kept_lengths, reference.kept_lengths)
    return fast, reference


def test_compact_equals_faithful_when_nothing_is_dropped():
    model = model_for()
    ids, mask = batch(seed=1)
    token_z = torch.ones(len(model.prune_locations), 5)
    pruner_z = torch.ones(len(model.prune_locations))
    with torch.no_grad():
        faithful = model(ids, mask, mode="faithful", token_z=token_z, pruner_z=pruner_z)
    fast, _ = compact(model, ids, mask, token_z, pruner_z)
    assert torch.allclose(faithful.logits, fast.logits, atol=1e-5)
    assert torch.equal(faithful.kept_lengths, fast.kept_lengths)


def test_compact_drops_the_same_tokens_at_the_first_location_and_agrees_closely(device):
    model = model_for(layers=6).to(device)
    ids = torch.randint(5, 99, (16, 20), generator=torch.Generator().manual_seed(7)).to(device)
    mask = torch.ones_like(ids)  # no padding: the first decision sees the same rows in both modes
    token_z = torch.tensor([[1.0, 1.0, 1.0, 0.0]] * 4, device=device)
    pruner_z = torch.ones(4, device=device)
    with torch.no_grad():
        faithful = model(ids, mask, mode="faithful", token_z=token_z, pruner_z=pruner_z)
    fast, reference = compact(model, ids, mask, token_z, pruner_z)
    first = model.prune_locations[0]
    assert torch.equal(faithful.keep_masks[first], reference.keep_masks[first])
    assert torch.equal(fast.kept_lengths[:, first], faithful.keep_masks[first].sum(1))
    agree = (faithful.logits.argmax(-1) == fast.logits.argmax(-1)).float().mean()
    assert agree >= 0.8
    # Compact really computes fewer tokens: its last layer is shorter than the input.
    assert fast.kept_lengths[:, -1].max() < ids.shape[1]


def test_train_mode_zeroes_tokens_and_passes_gradients_to_gates(device):
    model = model_for().to(device)
    model.train()
    ids, mask = (t.to(device) for t in batch())
    token_z = torch.rand(len(model.prune_locations), 5, device=device, requires_grad=True)
    pruner_z = torch.full((len(model.prune_locations),), 0.6, device=device, requires_grad=True)
    out = model(ids, mask, mode="train", token_z=token_z, pruner_z=pruner_z)
    out.logits.sum().backward()
    assert token_z.grad is not None and token_z.grad.abs().sum() > 0
    assert pruner_z.grad is not None
    assert len(out.importance) == 4 and out.importance[0].shape == (ids.shape[0], ids.shape[1] - 1)


def test_prune_locations_are_validated_and_default_to_2_to_last():
    assert default_prune_locations(12) == list(range(2, 12))
    with pytest.raises(UserError, match=r"Prune locations \[2, 4\] from ToPClassifier.* 1\.\.3 of"):
        ToPClassifier.from_config(tiny_config(), prune_locations=[2, 4])
    with pytest.raises(ValueError, match="gates cover"):
        model_for()(torch.ones(1, 3, dtype=torch.long), mode="faithful", token_z=torch.ones(5, 4))


# ------------------------------------------------------------------------------------- fused attention


@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_sdpa_runs_only_where_no_probabilities_are_read(kind):
    """Layers asked for nothing take the fused kernel; the ranking layers stay eager, so pruning is unchanged."""
    eager = model_for(kind)
    fused = ToPClassifier.from_config(tiny_config(kind), attention="sdpa").eval()
    fused.load_state_dict(eager.state_dict())
    ids, mask = batch()
    if kind == "roberta":
        ids = torch.where(mask.bool(), ids, torch.ones_like(ids))
    token_z = torch.ones(len(eager.prune_locations), 6)
    token_z[:, 3:] = 0
    pruner_z = torch.ones(len(eager.prune_locations))
    seen = []
    with torch.no_grad():
        reference = eager(ids, mask, mode="faithful", token_z=token_z, pruner_z=pruner_z)
        ours = fused(ids, mask, mode="faithful", token_z=token_z, pruner_z=pruner_z, probability_layers=[0],
                     attention_hook=lambda index, probs: seen.append((index, tuple(probs.shape))))
    wanted = {0} | {location - 1 for location in eager.prune_locations}
    assert [index for index, _ in seen] == sorted(wanted)
    assert all(shape == (ids.shape[0], 2, ids.shape[1], ids.shape[1]) for _, shape in seen)
    assert [i for i, x in enumerate(ours.importance) if x is not None] == sorted(wanted)
    for index in wanted:
        assert torch.equal(ours.importance[index], reference.importance[index])
    for ours_mask, reference_mask in zip(ours.keep_masks, reference.keep_masks):
        assert (ours_mask is None and reference_mask is None) or torch.equal(ours_mask, reference_mask)
    torch.testing.assert_close(ours.logits, reference.logits, rtol=1e-5, atol=1e-6)
    uses_fused = [type(layer.attention.self).__name__ for layer in fused._family.layers]
    if sdpa_available():
        assert all("Sdpa" in name for name in uses_fused)
    else:  # torch 1.12 / transformers 4.16: no fused kernel, every layer eager
        assert set_attention(tiny_config(kind), "sdpa") == "eager"
        assert not any("Sdpa" in name for name in uses_fused)


def test_all_layers_materialise_by_default():
    model = model_for("bert")
    ids, mask = batch()
    with torch.no_grad():
        out = model(ids, mask)
    assert all(x is not None for x in out.importance)
    with pytest.raises(ValueError, match="attention must be one of"):
        set_attention(tiny_config(), "flash")
