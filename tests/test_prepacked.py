"""Linear layers on prepacked weights (`top.method.prepacked`): same numbers as `F.linear`, no stale
copies, nothing changed in the model, and an off switch."""

import pytest
import torch
import torch.nn.functional as F
from builders import tiny_config

from top.method import prepacked
from top.method.compact import CompactPlan, compact_forward
from top.method.modeling import ToPClassifier

needs_kernels = pytest.mark.skipif(not prepacked.enabled(), reason="this torch has no oneDNN linear ops")


@needs_kernels
@pytest.mark.parametrize("rows", [1, 7, prepacked.MAX_ROWS])
def test_the_prepacked_kernel_computes_what_linear_does(rows):
    torch.manual_seed(0)
    layer = torch.nn.Linear(48, 80)
    x = torch.randn(rows, 48)
    with torch.no_grad():
        got = prepacked.linear(layer, x)
    assert prepacked.packed_weight(layer) is not None  # it took the prepacked path
    assert torch.allclose(got, F.linear(x, layer.weight, layer.bias), atol=1e-5, rtol=1e-5)


@needs_kernels
def test_a_weight_changed_in_place_or_replaced_is_repacked():
    torch.manual_seed(0)
    layer = torch.nn.Linear(16, 8)
    x = torch.randn(3, 16)
    with torch.no_grad():
        first = prepacked.linear(layer, x)
        layer.weight.mul_(2.0)  # an optimiser step: same storage, new version
        second = prepacked.linear(layer, x)
        assert torch.allclose(second, F.linear(x, layer.weight, layer.bias), atol=1e-5)
        assert not torch.allclose(first, second)
        layer.weight = torch.nn.Parameter(torch.zeros(8, 16))  # a new tensor
        assert torch.allclose(prepacked.linear(layer, x), layer.bias.expand(3, 8), atol=1e-6)


def test_the_row_limit_follows_torchs_kernels(monkeypatch):
    """Every row count where torch's CPU kernels are AVX-512 (measured faster there), MAX_ROWS elsewhere."""
    if not hasattr(torch.backends, "cpu"):
        assert prepacked.max_rows() == prepacked.MAX_ROWS
        return
    prepacked.max_rows.cache_clear()  # asked once per process: ask again under each capability
    try:
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
        assert prepacked.max_rows() is None
        prepacked.max_rows.cache_clear()
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
        assert prepacked.max_rows() == prepacked.MAX_ROWS
    finally:
        monkeypatch.undo()
        prepacked.max_rows.cache_clear()


def test_many_rows_gradients_and_the_switch_take_plain_linear(monkeypatch):
    monkeypatch.setattr(prepacked, "max_rows", lambda: prepacked.MAX_ROWS)
    torch.manual_seed(0)
    layer = torch.nn.Linear(16, 8)
    x = torch.randn(prepacked.MAX_ROWS + 1, 16)
    with torch.no_grad():
        assert torch.equal(prepacked.linear(layer, x), F.linear(x, layer.weight, layer.bias))
    small = torch.randn(2, 16)
    out = prepacked.linear(layer, small)  # grad enabled and the weight requires it: autograd must see it
    out.sum().backward()
    assert layer.weight.grad is not None
    monkeypatch.setenv(prepacked.ENV, "0")
    assert not prepacked.enabled() and prepacked.prepack(layer) == 0
    with torch.no_grad():
        assert torch.equal(prepacked.linear(layer, small), F.linear(small, layer.weight, layer.bias))


@pytest.mark.parametrize("switch", ["1", "0"])
def test_compact_leaves_the_model_as_it_was_and_agrees_either_way(switch, monkeypatch):
    monkeypatch.setenv(prepacked.ENV, switch)
    torch.manual_seed(0)
    model = ToPClassifier.from_config(tiny_config(2, 4), prune_locations=[2, 3]).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plan = CompactPlan.from_gates(torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]]), torch.ones(2),
                                  [2, 3], 20)
    ids = torch.randint(5, 30, (3, 20), generator=torch.Generator().manual_seed(1))
    mask = (torch.arange(20)[None, :] < torch.tensor([20, 9, 4])[:, None]).long()
    with torch.no_grad():
        got = compact_forward(model, plan, ids, mask).logits
    monkeypatch.setenv(prepacked.ENV, "0")
    with torch.no_grad():
        plain = compact_forward(model, plan, ids, mask).logits
    assert torch.allclose(got, plain, atol=1e-5, rtol=0)
    after = model.state_dict()
    assert list(after) == list(before) and all(torch.equal(before[k], after[k]) for k in before)


@needs_kernels
def test_the_stock_model_on_prepacked_linears_gives_its_own_logits():
    torch.manual_seed(0)
    config = tiny_config(2, 4)
    stock = ToPClassifier.from_config(config).hf_model.eval()
    swapped = ToPClassifier.from_config(config).hf_model.eval()
    swapped.load_state_dict(stock.state_dict())
    prepacked.with_prepacked_linears(swapped)
    outer = [child for parent in swapped.modules() if not isinstance(parent, prepacked.PrepackedLinear)
             for child in parent.children() if isinstance(child, torch.nn.Linear)]
    assert outer == [] and any(isinstance(m, prepacked.PrepackedLinear) for m in swapped.modules())
    ids = torch.randint(5, 30, (2, 11), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.allclose(swapped(input_ids=ids).logits, stock(input_ids=ids).logits, atol=1e-5, rtol=0)


@needs_kernels
def test_query_key_and_value_run_as_one_product_with_the_same_numbers():
    torch.manual_seed(0)
    parts = [torch.nn.Linear(24, 24) for _ in range(3)]
    x = torch.randn(5, 24)
    with torch.no_grad():
        got = torch.cat(prepacked.linear_split(parts, x), dim=1)
        expected = torch.cat([F.linear(x, m.weight, m.bias) for m in parts], dim=1)
        assert torch.allclose(got, expected, atol=1e-5, rtol=1e-5)
        parts[1].weight.add_(1.0)  # one of the three changes: the joint copy is made again
        expected = torch.cat([F.linear(x, m.weight, m.bias) for m in parts], dim=1)
        assert torch.allclose(torch.cat(prepacked.linear_split(parts, x), dim=1), expected, atol=1e-5, rtol=1e-5)
        parts[2].bias.add_(1.0)  # a bias alone changes: its copy in the joint bias is made again too
        expected = torch.cat([F.linear(x, m.weight, m.bias) for m in parts], dim=1)
        assert torch.allclose(torch.cat(prepacked.linear_split(parts, x), dim=1), expected, atol=1e-5, rtol=1e-5)
        many = torch.randn(prepacked.MAX_ROWS + 3, 24)
        assert torch.allclose(torch.cat(prepacked.linear_split(parts, many), dim=1),
                              torch.cat([F.linear(many, m.weight, m.bias) for m in parts], dim=1), atol=1e-5)


@pytest.mark.parametrize("rows", [5, prepacked.MAX_ROWS + 3])
def test_query_key_and_value_split_are_each_module_on_the_rows(rows):
    """One joint product split into views at few rows (where the kernels exist), three products at many."""
    torch.manual_seed(0)
    parts = [torch.nn.Linear(24, 24), torch.nn.Linear(24, 16), torch.nn.Linear(24, 8)]
    x = torch.randn(rows, 24)
    with torch.no_grad():
        got = prepacked.linear_split(parts, x)
        assert [t.shape for t in got] == [(rows, 24), (rows, 16), (rows, 8)]
        for out, module in zip(got, parts):
            assert torch.allclose(out, F.linear(x, module.weight, module.bias), atol=1e-5, rtol=1e-5)


@needs_kernels
@pytest.mark.parametrize("limit", [None, prepacked.MAX_ROWS])
@pytest.mark.parametrize("rows", [3, prepacked.MAX_ROWS + 5])
def test_gelu_runs_inside_the_prepacked_product_with_the_same_numbers(rows, limit, monkeypatch):
    from transformers.activations import ACT2FN

    monkeypatch.setattr(prepacked, "max_rows", lambda: limit)
    torch.manual_seed(0)
    layer = torch.nn.Linear(24, 40)
    x = torch.randn(rows, 24) * 3
    fused = []
    real = torch.ops.mkldnn
    original = real._linear_pointwise

    class Spy:
        def __getattr__(self, name):
            return getattr(real, name)

        def _linear_pointwise(self, *args):
            fused.append(args[3])
            return original(*args)

    monkeypatch.setattr(prepacked.torch.ops, "mkldnn", Spy(), raising=False)
    with torch.no_grad():
        expected = F.gelu(F.linear(x, layer.weight, layer.bias))
        for activation in (F.gelu, ACT2FN["gelu"]):
            assert torch.allclose(prepacked.linear_activation(layer, x, activation), expected, atol=1e-5, rtol=1e-5)
        # Another activation is applied after the product, never fused.
        relu = prepacked.linear_activation(layer, x, torch.relu)
        assert torch.allclose(relu, torch.relu(F.linear(x, layer.weight, layer.bias)), atol=1e-5, rtol=1e-5)
    takes_kernel = limit is None or rows <= limit
    assert fused == (["gelu", "gelu", "none"] if takes_kernel else [])
