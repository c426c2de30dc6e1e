"""``--sparsity-control``: how the Lagrange multipliers of the sparsity constraint move.

The constraint's loss is ``lambda_1 (s - t) + lambda_2 (s - t)^2`` (``top.method.losses.lagrangian_loss``),
so the gates feel a pull of ``lambda_1 + 2 lambda_2 (s - t)`` on the expected sparsity ``s``.

``paper``: the multipliers climb the Lagrangian by AdamW gradient ascent at ``--reg-learning-rate``
(``top.training.step.build_optimizers``), as in the original. AdamW moves lambda_1 by about the learning
rate per step whatever the size of the gap, so while the gates cannot yet move the sparsity (their
logits start saturated) lambda_1 winds up; it takes about as many steps again to unwind, and the
sparsity overshoots unless the run is long enough for lambda_2 to grow and damp it.

``adaptive``: a proportional-integral-derivative controller. Two sparsities are in play: the one the
loss can differentiate, ``s``, from the gates' keep probabilities, and the one every evaluation
reports, from the deterministic 0/1 masks (:func:`batch_sparsities`' ``evaluated``). They differ: a
layer gate kept open with probability 0.8 prunes fully once made 0/1, and each location closes a
whole number of bins.

* Proportional: lambda_2 is held at ``GAIN / 2``, so the quadratic term pulls with ``GAIN * (s - t)``.
* Derivative: ``GAIN * DAMPING_STEPS * (change of s - t in one step)`` brakes when the gap closes
  fast, before the gates' own AdamW momentum carries the sparsity past the target.
* Integral: ``GAIN * INTEGRAL_RATE * (sum of e - t)`` over the steps at the full target, ``e`` the
  step's batch under the deterministic layer gates and the bins' keep probabilities
  (:func:`batch_sparsities`' ``steered``: the evaluated sparsity without the rounding of each
  location's bins, so it moves smoothly). It steers the number the run is judged on, and it removes
  the steady offset the proportional part leaves where the task losses pull the gates back (about
  ``1 / GAIN`` of their pull), whatever its size. It sums only once the target has stopped ramping,
  near it and not while the gap closes fast, so nothing winds up during the warm-up while the gates
  are still saturated, and it is bounded (``INTEGRAL_LIMIT``). With a latency constraint
  (``--target-speedup``) nothing observes the batch and the integral part rests.

The derivative and integral parts are lambda_1, set after each step. AdamW normalises the gates'
gradients, so once the constraint dominates them the gain sets only the balance with the task
losses, not the speed; the gates still move by at most about ``--reg-learning-rate`` per step.

Measured: without the integral part, the demo's schedule settled at 0.488-0.494 for a target of 0.5
and 2,000 real review snippets at 0.465 (the training batches' ``s`` at 0.39-0.40); the tables of
where the integral lands are in docs/BENCHMARKS.md.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Tuple

import torch

from top.method import flops
from top.method.defaults import CONTROLS  # noqa: F401 - the choices this module implements

# The adaptive controller's pull per unit of gap (lambda_2 = GAIN / 2): high enough that the
# proportional part alone holds the sparsity near its target (without it, the demo's schedule settled
# at 0.33 for a target of 0.5 with a gain of 1).
GAIN = 8.0
# Its braking: lambda_1 = GAIN * DAMPING_STEPS * (change of the gap in one step). About the time
# scale of AdamW's first moment (beta_1 = 0.9); 3 settled every tiny schedule of the tests.
DAMPING_STEPS = 3.0
# The integral part's share of the summed evaluated gap, per step: its offset closes with a time
# constant of about 1 / INTEGRAL_RATE steps at the full target.
INTEGRAL_RATE = 0.05
# The integral part's largest correction, in units of sparsity (|INTEGRAL_RATE * sum| <= this).
INTEGRAL_LIMIT = 0.25
# It sums only gaps this near the target: a larger one means the gates are still on their way (or
# saturated), which the proportional part handles, and summing it would wind the integral up.
INTEGRAL_BAND = 0.1
# Nor while the sparsity closes the gap faster than this per step: the gates are on their way, and a
# sum taken on the approach would carry them past the target.
APPROACH_RATE = 0.002


def batch_sparsities(
    gates, config: Any, attention_mask: torch.Tensor, task_length: int,
    gather_sum: Callable[[torch.Tensor], torch.Tensor] = lambda value: value, global_batch: Optional[int] = None,
) -> Tuple[float, float]:
    """``(evaluated, steered)`` expected sparsities of a batch, neither differentiable.

    ``evaluated``: under the gates' deterministic masks, what an evaluation reports. ``steered``: under
    the deterministic layer gates but the bins' keep probabilities, which is ``evaluated`` without the
    rounding of each location's bins to a whole number (smooth, where ``evaluated`` moves in steps of a
    bin). ``gather_sum`` sums a tensor over the processes of a data-parallel run, whose global batch has
    ``global_batch`` examples (by default this process's batch alone).
    """
    with torch.no_grad():
        token_z, pruner_z = gates.deterministic()
        token_score, _ = gates.keep_probabilities()
        count = attention_mask.shape[0] if global_batch is None else global_batch
        found = []
        for token in (token_z, token_score):
            relative, _ = flops.relative_macs(token, pruner_z, gates.prune_locations, config, attention_mask,
                                              task_length)
            found.append(1.0 - float(gather_sum(relative.sum())) / count)
        return found[0], found[1]


def integrate(
    integral: float, gap: float, change: Optional[float], target: float, previous_target: Optional[float],
    rate: float = INTEGRAL_RATE, limit: float = INTEGRAL_LIMIT, band: float = INTEGRAL_BAND,
    approach: float = APPROACH_RATE,
) -> float:
    """The integral after one step of the steered sparsity's ``gap`` to the target, which moved by
    ``change`` in the step (None: unknown). The gap is added once the target has stopped ramping (it
    equals the previous step's), while the gap is within ``band`` and unless the sparsity is closing it
    by more than ``approach`` a step; the sum is kept within ``|rate * sum| <= limit``."""
    if previous_target is None or target != previous_target or abs(gap) > band:
        return integral
    if change is not None and -change * gap > approach * abs(gap):  # moving towards the target, fast
        return integral
    bound = limit / rate if rate > 0 else 0.0
    return min(bound, max(-bound, integral + gap))


def multipliers(
    gap: float, previous_gap: Optional[float], integral: float,
    gain: float = GAIN, damping_steps: float = DAMPING_STEPS, rate: float = INTEGRAL_RATE,
) -> Tuple[float, float]:
    """``(lambda_1, lambda_2)`` for the next step, from this step's gap ``s - t``, the previous step's
    and the integral: the pull on ``s`` is then ``lambda_1 + 2 lambda_2 (s - t)``."""
    change = 0.0 if previous_gap is None else gap - previous_gap
    return gain * (damping_steps * change + rate * integral), gain / 2


class AdaptiveMultipliers:
    """Sets ``lambda_1`` and ``lambda_2`` from the constraint's gaps after each step (``adaptive``).

    It stands where the lambdas' optimiser stands, with the same ``step``, ``state_dict`` and
    ``load_state_dict``: after the backward pass, ``lambda_1.grad`` is the gap ``s - t``. Before
    ``step``, :meth:`observe` gives it the step's evaluated sparsity and target; without it the
    integral part rests. Its state (the previous gap and target, the integral) travels in ``last/``,
    so that ``--resume`` stays bit-identical.
    """

    def __init__(self, lambda_1: torch.nn.Parameter, lambda_2: torch.nn.Parameter,
                 gain: Optional[float] = None, damping_steps: Optional[float] = None,
                 integral_rate: Optional[float] = None, integral_limit: Optional[float] = None):
        self.lambda_1, self.lambda_2 = lambda_1, lambda_2
        self.gain = float(GAIN if gain is None else gain)
        self.damping_steps = float(DAMPING_STEPS if damping_steps is None else damping_steps)
        self.integral_rate = float(INTEGRAL_RATE if integral_rate is None else integral_rate)
        self.integral_limit = float(INTEGRAL_LIMIT if integral_limit is None else integral_limit)
        self.previous_gap: Optional[float] = None
        self.previous_target: Optional[float] = None
        self.previous_sparsity: Optional[float] = None  # the steered sparsity of the previous step
        self.integral = 0.0
        self._observed: Optional[Tuple[float, float]] = None  # (evaluated sparsity, target) of this step
        with torch.no_grad():
            self.lambda_2.fill_(self.gain / 2)  # the pull acts from the first pruning step

    def observe(self, gates, config: Any, attention_mask: torch.Tensor, task_length: int, target: float,
                gather_sum: Callable[[torch.Tensor], torch.Tensor] = lambda value: value,
                global_batch: Optional[int] = None) -> float:
        """Measure this step's batch (:func:`batch_sparsities`) for the next :meth:`step`, against the
        step's ``target``; returns the evaluated sparsity (what an evaluation would report)."""
        evaluated, steered = batch_sparsities(gates, config, attention_mask, task_length, gather_sum, global_batch)
        self.record(steered, target)
        return evaluated

    def record(self, sparsity: float, target: float) -> None:
        """The sparsity the integral part steers (:func:`batch_sparsities`' ``steered``) and the target of
        this step, for the next :meth:`step`."""
        self._observed = (float(sparsity), float(target))

    def step(self) -> None:
        if self.lambda_1.grad is None:
            return
        gap = float(self.lambda_1.grad)
        if self._observed is not None:
            sparsity, target = self._observed
            change = None if self.previous_sparsity is None else sparsity - self.previous_sparsity
            self.integral = integrate(self.integral, sparsity - target, change, target, self.previous_target,
                                      self.integral_rate, self.integral_limit, INTEGRAL_BAND, APPROACH_RATE)
            self.previous_target, self.previous_sparsity, self._observed = target, sparsity, None
        lambda_1, lambda_2 = multipliers(gap, self.previous_gap, self.integral, self.gain, self.damping_steps,
                                         self.integral_rate)
        self.previous_gap = gap
        with torch.no_grad():
            self.lambda_1.fill_(lambda_1)
            self.lambda_2.fill_(lambda_2)

    def state_dict(self) -> Dict[str, Any]:
        return {
            "previous_gap": self.previous_gap, "gain": self.gain, "damping_steps": self.damping_steps,
            "integral_rate": self.integral_rate, "integral_limit": self.integral_limit,
            "integral": self.integral, "previous_target": self.previous_target,
            "previous_sparsity": self.previous_sparsity,
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        def number(key: str, default: Optional[float]) -> Optional[float]:
            value = state.get(key, default)
            return None if value is None else float(value)

        self.previous_gap = number("previous_gap", None)
        self.gain, self.damping_steps = float(state["gain"]), float(state["damping_steps"])
        # A state saved before the integral part had none: it resumes with the part at rest.
        self.integral_rate = number("integral_rate", 0.0)
        self.integral_limit = number("integral_limit", INTEGRAL_LIMIT)
        self.integral = number("integral", 0.0)
        self.previous_target = number("previous_target", None)
        self.previous_sparsity = number("previous_sparsity", None)
