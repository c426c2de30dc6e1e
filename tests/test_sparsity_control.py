"""`--sparsity-control adaptive`: the controller's law, its integral part and what it measures, without training."""

from __future__ import annotations

import pytest
import torch
from builders import tiny_config

from top.method import flops
from top.method.gates import LOGA_MAX, LOGA_MIN, TokenGates
from top.method.sparsity_control import (
    AdaptiveMultipliers,
    batch_sparsities,
    integrate,
    multipliers,
)


def lambdas():
    return torch.nn.Parameter(torch.tensor(0.0)), torch.nn.Parameter(torch.tensor(0.0))


def test_the_law_is_proportional_derivative_and_integral():
    # lambda_2 = gain / 2: the quadratic term pulls with gain * gap.
    assert multipliers(0.3, None, 0.0, gain=2.0, damping_steps=3.0, rate=0.1) == (0.0, 1.0)
    # lambda_1 brakes a closing gap: gain * damping * (gap - previous gap)...
    assert multipliers(-0.125, -0.25, 0.0, gain=2.0, damping_steps=3.0, rate=0.1) == (2.0 * 3.0 * 0.125, 1.0)
    # ...and adds gain * rate * the integral.
    assert multipliers(-0.125, -0.125, -4.0, gain=2.0, damping_steps=3.0, rate=0.1) == pytest.approx((-0.8, 1.0))


def test_the_integral_sums_only_near_the_target_once_it_stops_ramping():
    assert integrate(0.0, -0.03, None, target=0.5, previous_target=None) == 0.0  # the first step: no comparison
    assert integrate(0.0, -0.03, 0.0, target=0.25, previous_target=0.2) == 0.0  # the warm-up still ramps
    assert integrate(1.0, -0.03, 0.0, target=0.5, previous_target=0.5) == pytest.approx(0.97)
    assert integrate(1.0, -0.03, None, target=0.5, previous_target=0.5) == pytest.approx(0.97)
    # A gap wider than the band means the gates are still on their way: it would only wind the sum up.
    assert integrate(1.0, -0.3, 0.0, target=0.5, previous_target=0.5, band=0.1) == 1.0
    # So does a gap the sparsity closes fast; one it widens, or closes slowly, is summed.
    assert integrate(1.0, -0.03, 0.01, 0.5, 0.5, approach=0.002) == 1.0
    assert integrate(1.0, 0.03, -0.01, 0.5, 0.5, approach=0.002) == 1.0
    assert integrate(1.0, -0.03, 0.001, 0.5, 0.5, approach=0.002) == pytest.approx(0.97)
    assert integrate(1.0, -0.03, -0.01, 0.5, 0.5, approach=0.002) == pytest.approx(0.97)
    # The correction rate * sum stays within the limit.
    assert integrate(4.98, 0.05, 0.0, 0.5, 0.5, rate=0.05, limit=0.25) == pytest.approx(5.0)
    assert integrate(-4.99, -0.05, 0.0, 0.5, 0.5, rate=0.05, limit=0.25) == pytest.approx(-5.0)


def test_without_observations_it_is_the_proportional_derivative_controller():
    """Before pruning, or fed only lambda_1's gradient, the integral part rests."""
    lambda_1, lambda_2 = lambdas()
    control = AdaptiveMultipliers(lambda_1, lambda_2, gain=2.0, damping_steps=3.0)
    assert float(lambda_2.detach()) == 1.0  # the quadratic term pulls with gain * gap from the first step
    for gap, expected_lambda_1 in ((-0.25, 0.0), (-0.125, 2.0 * 3.0 * 0.125), (-0.125, 0.0), (0.0, 2.0 * 3.0 * 0.125)):
        lambda_1.grad = torch.tensor(gap)  # d(loss)/d(lambda_1) is the gap
        control.step()
        assert float(lambda_1.detach()) == expected_lambda_1 and float(lambda_2.detach()) == 1.0
    assert control.integral == 0.0


def test_observed_gaps_at_the_full_target_build_the_integral_and_its_state_travels():
    lambda_1, lambda_2 = lambdas()
    control = AdaptiveMultipliers(lambda_1, lambda_2, gain=2.0, damping_steps=0.0, integral_rate=0.5)
    # A ramp; the full target, with the sparsity still; it closes the gap fast; then drifts away.
    for steered, target in ((0.1, 0.2), (0.45, 0.5), (0.45, 0.5), (0.47, 0.5), (0.46, 0.5)):
        lambda_1.grad = torch.tensor(steered - target)
        control.record(steered, target)
        control.step()
    assert control.integral == pytest.approx(-0.05 - 0.04)
    assert float(lambda_1.detach()) == pytest.approx(2.0 * 0.5 * (-0.09))
    again = AdaptiveMultipliers(*lambdas())
    again.load_state_dict(control.state_dict())
    assert again.state_dict() == control.state_dict()
    assert control.state_dict()["previous_target"] == 0.5


def test_a_state_saved_before_the_integral_part_resumes_without_it():
    control = AdaptiveMultipliers(*lambdas())
    control.load_state_dict({"previous_gap": -0.1, "gain": 8.0, "damping_steps": 3.0})
    assert (control.previous_gap, control.integral, control.integral_rate) == (-0.1, 0.0, 0.0)


def test_it_closes_the_steady_offset_that_the_proportional_part_leaves():
    """A toy plant: one logit-like variable s descends its loss, a constant task pull F against the
    constraint, and the evaluations see s plus a bias (the deterministic masks' rounding). The
    proportional part alone settles F / gain below the target; the integral part lands the
    evaluated value on it."""

    def settle(rate: float, steps: int = 600, target: float = 0.5, task_pull: float = -0.3, bias: float = 0.02):
        s = torch.nn.Parameter(torch.tensor(0.0))
        lambda_1, lambda_2 = lambdas()
        control = AdaptiveMultipliers(lambda_1, lambda_2, gain=8.0, damping_steps=3.0, integral_rate=rate)
        optimiser = torch.optim.SGD([s], lr=0.01)
        for step in range(steps):
            step_target = target * min(1.0, step / 50)  # a warm-up ramp
            gap = s - step_target
            loss = lambda_1 * gap + lambda_2 * gap ** 2 + (-task_pull) * s
            loss.backward()
            control.record(float(s.detach()) + bias, step_target)
            optimiser.step()
            control.step()
            optimiser.zero_grad()
            lambda_1.grad = None
        return float(s.detach()) + bias  # what an evaluation would report

    proportional = settle(rate=0.0)
    assert proportional == pytest.approx(0.5 - 0.3 / 8.0 + 0.02, abs=1e-3)  # 0.4825: outside +-0.02
    assert settle(rate=0.05) == pytest.approx(0.5, abs=1e-3)


@pytest.fixture
def gates():
    torch.manual_seed(0)
    config = tiny_config(2, layers=4)
    gates = TokenGates([1, 2, 3], bin_num=10, layer_init=10.0)
    with torch.no_grad():
        gates.token_loga.clamp_(LOGA_MIN, LOGA_MAX)
        gates.pruner_loga.clamp_(LOGA_MIN, LOGA_MAX)
    mask = torch.ones(5, 20, dtype=torch.long)
    mask[1, 12:] = 0
    mask[3, 7:] = 0
    return gates, config, mask


def test_the_evaluated_sparsity_is_the_evaluations_and_the_steered_one_is_it_without_bin_rounding(gates):
    gates, config, mask = gates
    with torch.no_grad():
        gates.token_loga[0, :4] = 1.0  # 4 bins kept with probability ~0.93: 0.28 expected closed, rounded to 0
        gates.token_loga[1, :3] = LOGA_MIN
        gates.token_loga[2, :5] = LOGA_MIN  # half the bins of the last location closed...
        gates.pruner_loga[2] = -1.0  # ...by a layer gate on with probability ~0.65: fully on once made 0/1
    evaluated, steered = batch_sparsities(gates, config, mask, task_length=20)
    token_z, pruner_z = gates.deterministic()
    assert pruner_z.tolist() == [1.0, 1.0, 1.0] and token_z[0].sum() == 10 and token_z[1].sum() == 7
    by_masks = flops.expected_sparsities(token_z, pruner_z, [1, 2, 3], config, mask, 20)[0]
    assert evaluated == pytest.approx(float(by_masks))
    token_score, pruner_score = (score.detach() for score in gates.keep_probabilities())
    expected_steered = flops.expected_sparsities(token_score, pruner_z, [1, 2, 3], config, mask, 20)[0]
    assert steered == pytest.approx(float(expected_steered))
    # The loss's sparsity counts the layer gate at its probability, so it reads lower than both.
    trained = float(flops.expected_sparsities(token_score, pruner_score, [1, 2, 3], config, mask, 20)[0])
    assert trained < steered and abs(steered - evaluated) < steered - trained


def test_a_data_parallel_batch_is_counted_over_every_process(gates):
    """gather_sum adds the other processes' relative MACs; the count is the global batch."""
    gates, config, mask = gates
    alone = batch_sparsities(gates, config, mask, 20)
    doubled = batch_sparsities(gates, config, mask, 20, gather_sum=lambda value: 2 * value, global_batch=10)
    assert doubled == pytest.approx(alone)
