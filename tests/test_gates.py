import math

import pytest
import torch

from top.errors import UserError
from top.method.gates import (
    GATES_FORMAT,
    LOGA_MAX,
    LOGA_MIN,
    TokenGates,
    check_prune_locations,
    deterministic_masks,
    read_gate_state,
)

TEMPERATURE = 2.0 / 3.0


def _closed_probability(loga: float) -> float:
    """P(z = 0) of the stretched concrete gate, written out from (-0.1, 1.1) and T = 2/3."""
    xn = 0.1 / 1.2
    p = 1.0 / (1.0 + math.exp(-(math.log(xn / (1 - xn)) * TEMPERATURE - loga)))
    return min(max(p, 1e-6), 1 - 1e-6)


def _gates_with(token_loga, pruner_loga):
    token_loga = torch.tensor(token_loga, dtype=torch.float32)
    pruner_loga = torch.tensor(pruner_loga, dtype=torch.float32)
    gates = TokenGates(list(range(1, token_loga.shape[0] + 1)), token_loga.shape[1])
    with torch.no_grad():
        gates.token_loga.copy_(token_loga)
        gates.pruner_loga.copy_(pruner_loga)
    return gates


def test_parameters_are_named_and_initialised_like_the_original():
    torch.manual_seed(0)
    gates = TokenGates([2, 3, 5], bin_num=7)
    names = dict(gates.named_parameters())
    assert set(names) == {"token_loga", "pruner_loga", "lambda_1", "lambda_2"}
    assert gates.token_loga.shape == (3, 7) and gates.pruner_loga.shape == (3,)
    assert abs(gates.token_loga.mean().item() - 10.0) < 0.02 and gates.token_loga.std().item() < 0.03
    assert abs(gates.pruner_loga.mean().item() + 10.0) < 0.03
    assert gates.lambda_1.item() == 0.0 and gates.lambda_2.item() == 0.0
    assert [id(p) for p in gates.gate_parameters()] == [id(gates.token_loga), id(gates.pruner_loga)]
    assert [id(p) for p in gates.lambda_parameters()] == [id(gates.lambda_1), id(gates.lambda_2)]


@pytest.mark.parametrize("locations", [[], [0, 1], [3, 2], [2, 2]])
def test_bad_prune_locations_are_user_errors(locations):
    with pytest.raises(UserError):
        TokenGates(locations, bin_num=4)


def test_samples_are_in_unit_interval_and_differentiable():
    torch.manual_seed(0)
    gates = _gates_with([[0.5, -0.5, 2.0]], [0.0])
    token_z, pruner_z = gates.sample()
    assert token_z.shape == (1, 3) and pruner_z.shape == (1,)
    assert token_z.min() >= 0 and token_z.max() <= 1
    (token_z.sum() + pruner_z.sum()).backward()
    assert gates.token_loga.grad is not None and gates.pruner_loga.grad is not None


def test_expected_l0_matches_monte_carlo_open_rate():
    torch.manual_seed(0)
    token = [[-3.0, -1.5, -0.5, 0.0, 0.5, 1.5, 3.0, 4.0]]
    gates = _gates_with(token, [-1.0])
    draws = 4000
    open_count = torch.zeros(1, 8)
    pruner_open = torch.zeros(1)
    with torch.no_grad():
        for _ in range(draws):
            token_z, pruner_z = gates.sample()
            open_count += (token_z > 0).float()
            pruner_open += (pruner_z > 0).float()
        token_score, pruner_score = gates.keep_probabilities()
    # Binomial standard error is at most 0.5 / sqrt(4000) ~ 0.008.
    assert torch.allclose(open_count / draws, token_score, atol=0.03)
    assert torch.allclose(pruner_open / draws, pruner_score, atol=0.03)
    expected = sum(1 - _closed_probability(v) for v in token[0]) + 1 - _closed_probability(-1.0)
    assert gates.expected_l0().item() == pytest.approx(expected, rel=1e-5)
    assert gates.expected_l0().item() == pytest.approx((open_count.sum() + pruner_open.sum()).item() / draws, abs=0.15)


def test_fresh_gates_keep_every_bin_and_switch_every_layer_off():
    gates = TokenGates([1, 2, 3], bin_num=5)
    token_z, pruner_z = gates.deterministic()
    assert torch.equal(token_z, torch.ones(3, 5))
    assert torch.equal(pruner_z, torch.zeros(3))


def test_all_negative_logits_close_every_bin():
    gates = _gates_with([[-10.0] * 6], [10.0])
    token_z, pruner_z = gates.deterministic()
    assert torch.equal(token_z, torch.zeros(1, 6))
    assert torch.equal(pruner_z, torch.ones(1))


def test_mixed_row_closes_the_expected_count_at_the_smallest_logits():
    rows = [
        [0.3, -2.0, 1.2, -0.4, 2.5, -1.1, 0.0, 4.0, -3.0, 0.8],
        [1.0, 1.5, -0.2, 3.0, -4.0, 2.2, 0.1, -0.9, 0.6, -1.7],
    ]
    gates = _gates_with(rows, [1.0, -4.0])
    token_z, pruner_z = gates.deterministic()
    for row, mask in zip(rows, token_z):
        num_zeros = round(sum(_closed_probability(v) for v in row))
        assert 0 < num_zeros < len(row)  # the case is really mixed
        assert int((mask == 0).sum()) == num_zeros
        smallest = sorted(range(len(row)), key=lambda i: row[i])[:num_zeros]
        assert sorted(smallest) == sorted(torch.nonzero(mask == 0).flatten().tolist())
    # A layer gate is on when its own expected count of zeros rounds to 0.
    assert round(_closed_probability(1.0)) == 0 and round(_closed_probability(-4.0)) == 1
    assert pruner_z.tolist() == [1.0, 0.0]


def test_constrain_clamps_logits_but_not_lambdas():
    gates = _gates_with([[-20.0, 0.3, 20.0]], [-9.0])
    with torch.no_grad():
        gates.lambda_1.fill_(50.0)
    gates.constrain_()
    assert gates.token_loga.tolist()[0] == pytest.approx([LOGA_MIN, 0.3, LOGA_MAX])
    assert gates.pruner_loga.item() == pytest.approx(math.log(1e-2))
    assert gates.lambda_1.item() == 50.0


def test_state_round_trip_rebuilds_identical_gates():
    torch.manual_seed(1)
    gates = TokenGates([2, 4], bin_num=3, magical_number=0.7)
    with torch.no_grad():
        gates.token_loga.normal_()
        gates.lambda_2.fill_(-0.25)
    state = gates.state_for_checkpoint()
    assert all(torch.is_tensor(v) or isinstance(v, (int, float, list, str)) for v in state.values())
    assert state["format"] == GATES_FORMAT and state["prune_locations"] == [2, 4]
    # The dict the gates produce is the one format: reading it back changes nothing.
    read = read_gate_state(state, source="state", fix="fix it")
    assert sorted(read) == sorted(state)
    assert all(torch.equal(read[k], v) if torch.is_tensor(v) else read[k] == v for k, v in state.items())
    rebuilt = TokenGates.from_state(state)
    assert rebuilt.prune_locations == [2, 4] and rebuilt.bin_num == 3
    assert rebuilt.magical_number == pytest.approx(0.7)
    for name in ("token_loga", "pruner_loga", "lambda_1", "lambda_2"):
        assert torch.equal(getattr(rebuilt, name), getattr(gates, name))
    for a, b in zip(rebuilt.deterministic(), gates.deterministic()):
        assert torch.equal(a, b)


def test_state_with_wrong_shape_is_a_user_error():
    state = TokenGates([2, 4], bin_num=3).state_for_checkpoint()
    state["bin_num"] = 5
    with pytest.raises(UserError):
        TokenGates.from_state(state)
    del state["token_loga"]
    with pytest.raises(UserError):
        TokenGates.from_state(state)


def test_the_original_key_for_locations_and_absent_defaults_are_read():
    token_loga = torch.tensor([[3.0, -3.0, 2.0]])
    state = read_gate_state(
        {"token_loga": token_loga, "pruner_loga": torch.tensor([4.0]), "token_prune_loc": [3]},
        source="old.pt",
        fix="fix it",
    )
    assert state["prune_locations"] == [3] and state["bin_num"] == 3
    assert state["temperature"] == TEMPERATURE and state["magical_number"] == 0.8
    assert state["lambda_1"].item() == 0.0 and state["lambda_2"].shape == ()
    trailing = read_gate_state({"token_loga": token_loga, "pruner_loga": torch.tensor([4.0])}, source="s", fix="f",
                               num_layers=6)
    assert trailing["prune_locations"] == [5]


@pytest.mark.parametrize(
    "change, words",
    [
        ({"token_loga": [[1.0, 2.0]]}, "no tensor"),
        ({"pruner_loga": torch.ones(3)}, "one gate row per prune location"),
        ({"token_loga": torch.tensor([[float("nan"), 1.0]])}, "not finite"),
        ({"bin_num": 3}, "bin_num 3"),
        ({"bin_num": "2"}, "bin_num '2'"),
        ({"lambda_1": torch.ones(3)}, "single number"),
        ({"temperature": 0.0}, "not a positive number"),
        ({"magical_number": "x"}, "not a positive number"),
        ({"prune_locations": [3, 2]}, "not increasing"),
        ({"prune_locations": [1]}, "1 prune locations [1] from gates.pt do not match 2 gate rows"),
        ({"prune_locations": "12"}, "not whole layer numbers"),
    ],
)
def test_bad_gate_states_are_one_sentence_naming_the_source_and_the_fix(change, words):
    state = {"token_loga": torch.zeros(2, 2), "pruner_loga": torch.zeros(2), "prune_locations": [1, 2]}
    state.update(change)
    with pytest.raises(UserError) as caught:
        read_gate_state(state, source="gates.pt", fix="save it again")
    message = str(caught.value)
    assert "gates.pt" in message and message.endswith("; save it again.") and words in message
    assert message.count(";") == 1


@pytest.mark.parametrize(
    "locations, num_layers, n_gates, words",
    [
        ([], None, None, "no prune locations"),
        ([0, 1], None, None, "of at least 1"),
        ([2, 4], 4, None, "in 1..3 of a 4-layer model"),
        ([2, 2], 12, None, "not increasing"),
        ([1.5], 12, None, "not whole layer numbers"),
        ([2, 3], 12, 3, "2 prune locations [2, 3] from --where do not match 3 gate rows"),
    ],
)
def test_prune_locations_are_checked_in_one_place(locations, num_layers, n_gates, words):
    with pytest.raises(UserError) as caught:
        check_prune_locations(locations, num_layers, n_gates, source="--where", fix="do this", allow_empty=False)
    message = str(caught.value)
    assert "from --where" in message or "in --where" in message
    assert message.endswith("; do this.") and words in message and message.count(";") == 1
    assert check_prune_locations((1, 3), 4, 2) == [1, 3] and check_prune_locations([], 4) == []


def test_deterministic_masks_are_those_of_the_gates():
    gates = _gates_with([[0.3, -2.0, 1.2, -0.4, 2.5], [-3.0, 4.0, 0.0, 1.0, -1.0]], [1.0, -4.0])
    masks = deterministic_masks(gates.token_loga, gates.pruner_loga, gates.temperature, gates.magical_number)
    assert all(torch.equal(a, b) for a, b in zip(masks, gates.deterministic()))
    empty = deterministic_masks(torch.zeros(0, 4), torch.zeros(0))
    assert empty[0].shape == (0, 4) and empty[1].shape == (0,)
