"""One ToP training step: the gate sample, the student's pruned forward pass, the loss, the updates.

The loss is the logit distillation from the teacher (KD at ``distill_temperature``; the MSE
against the labels for regression) and, once pruning has started, the Lagrangian of the expected
MAC sparsity against a target that ramps linearly from 0 over the warm-up, plus the ranking
distillation of the teacher's last-layer token order into the student's ranking layers, weighted
by ``rank_loss_alpha * max(0.01, 1 - warm-up progress)``. With a latency constraint
(``--target-speedup``, :class:`top.method.latency.LatencyConstraint`) the Lagrangian holds the
expected latency sparsity instead: the share of compact inference's time the gates remove, from
the calibrated latency model.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from top.data import batching
from top.method import flops, sparsity_control
from top.method.latency import LatencyConstraint
from top.method.losses import lagrangian_loss, logit_distillation_loss, rank_distillation_loss
from top.training import distributed, optimisers

# The original starts pruning after this many steps of plain distillation.
PREPRUNING_STEPS = 2


@dataclasses.dataclass(frozen=True)
class StepPlan:
    """What a step needs that the config does not say: facts of the run, derived once."""

    warmup_steps: int  # of the target's ramp, counted from the first pruning step
    regression: bool  # the task loss is the MSE against the labels, not distillation
    task_length: int  # the length the expected sparsity is counted at
    rank_layers: Tuple[int, ...]  # the student layers the rank distillation teaches
    latency: Optional[LatencyConstraint] = None  # --target-speedup: the Lagrangian holds the latency sparsity

    @property
    def measure(self) -> str:
        """The record key of the quantity the Lagrangian holds to its target."""
        return "expected_sparsity" if self.latency is None else "expected_latency_sparsity"

    def target(self, target_sparsity: float) -> float:
        """The target of :attr:`measure`: the run's target sparsity, or the latency sparsity of its target speedup."""
        return target_sparsity if self.latency is None else self.latency.target

    @property
    def first_full_target_step(self) -> int:
        """The number of steps done when the first step at the full target (after the warm-up) has run."""
        return PREPRUNING_STEPS + self.warmup_steps + 1


@dataclasses.dataclass
class Optimizers:
    """AdamW for the weights with its linear schedule; once pruning, AdamW for the gates and the
    lambdas' mover (AdamW ascent for ``paper``, ``sparsity_control.AdaptiveMultipliers`` for ``adaptive``)."""

    weights: torch.optim.Optimizer
    scheduler: Any
    gates: Optional[torch.optim.Optimizer] = None
    lambdas: Any = None

    @property
    def pruning(self) -> bool:
        return self.gates is not None

    def named(self) -> Dict[str, Any]:
        """The optimisers present, by the names ``last/`` saves them under."""
        named = {"weights": self.weights, "scheduler": self.scheduler}
        if self.pruning:
            named.update(gates=self.gates, lambdas=self.lambdas)
        return named

    def state_dict(self) -> Dict[str, Any]:
        return {name: optimizer.state_dict() for name, optimizer in self.named().items()}

    def load_state_dict(self, states: Dict[str, Any]) -> None:
        for name, optimizer in self.named().items():
            optimizer.load_state_dict(states[name])


def build_optimizers(student, gates, config, total_steps: int, pruning: bool) -> Optimizers:
    """The run's optimisers; pruning starts with fresh ones whose schedule spans the remaining steps,
    as in the original. ``config`` is the run's ``TrainConfig``."""
    weights = torch.optim.AdamW(
        optimisers.weight_parameter_groups(student, config.learning_rate, config.weight_decay)
    )
    schedule_steps = total_steps - PREPRUNING_STEPS if pruning else total_steps
    built = Optimizers(weights, optimisers.linear_schedule(weights, schedule_steps))
    if pruning:
        built.gates = torch.optim.AdamW(gates.gate_parameters(), lr=config.reg_learning_rate, weight_decay=0.0)
        if config.sparsity_control == "adaptive":
            built.lambdas = sparsity_control.AdaptiveMultipliers(gates.lambda_1, gates.lambda_2)
        else:
            # The multipliers climb the Lagrangian: gradient ascent.
            built.lambdas = torch.optim.AdamW(
                gates.lambda_parameters(), lr=config.reg_learning_rate, weight_decay=0.0, maximize=True
            )
    return built


def warmup_ramp(pruned_steps: int, warmup_steps: int, target: float, rank_loss_alpha: float) -> Tuple[float, float]:
    """The target sparsity and the rank-loss weight after ``pruned_steps`` steps of pruning.

    The target climbs linearly from 0 over the warm-up; the rank weight falls from alpha to alpha/100.
    """
    progress = 1.0 if warmup_steps <= 0 else min(1.0, pruned_steps / warmup_steps)
    return target * progress, rank_loss_alpha * max(0.01, 1.0 - progress)


def sample_gates(gates, seed: int, step: int, device: torch.device):
    """The step's gate sample, the same on every rank and after a resume: its own seed per step."""
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        torch.manual_seed(seed * 1_000_003 + step)
        return gates.sample()


def _number(value) -> float:
    return float(value.detach()) if torch.is_tensor(value) else float(value)


@dataclasses.dataclass
class ToPStep:
    """The parts of a step that stay put from step to step; calling it runs one step.

    ``teacher`` may be None when every step brings the teacher's outputs (from the cache).
    ``config`` is the run's resolved ``TrainConfig``; ``optimizers`` is replaced when pruning starts.
    """

    student: Any
    teacher: Any
    gates: Any
    optimizers: Optimizers
    config: Any
    plan: StepPlan
    dist: distributed.Distributed = dataclasses.field(default_factory=distributed.Distributed)

    def __call__(self, batch: Dict[str, torch.Tensor], step: int, share: float, global_batch: int,
                 teacher_out=None) -> Dict[str, float]:
        """One optimisation step at ``step`` (0-based) on this process's ``share`` of a global batch.

        Teacher (unless ``teacher_out`` brings its outputs) and student forward passes, the loss,
        the backward pass, the gradients summed over processes and clipped, the optimiser and
        schedule steps, the gate logits clamped. Returns the values ``log.jsonl`` records.
        """
        student, gates, optimizers, config = self.student, self.gates, self.optimizers, self.config
        pruning = optimizers.pruning
        inputs = batching.model_inputs(batch)
        if teacher_out is None:
            with torch.no_grad():
                # Only the teacher's last layer ranks tokens (for the rank distillation).
                last = self.teacher.config.num_hidden_layers - 1
                teacher_out = self.teacher(**inputs, mode="faithful", probability_layers=[last])
        token_z = pruner_z = None
        ramp = None
        if pruning:
            token_z, pruner_z = sample_gates(gates, config.seed, step, batch["input_ids"].device)
            ramp = warmup_ramp(step - PREPRUNING_STEPS, self.plan.warmup_steps,
                               self.plan.target(config.target_sparsity), config.rank_loss_alpha)
        # Pruning reads the layers before the prune locations, the rank distillation the rank layers.
        student_out = student(**inputs, mode="train", token_z=token_z, pruner_z=pruner_z,
                              probability_layers=self.plan.rank_layers if pruning else ())
        loss, parts = self.loss(student_out, teacher_out, batch, ramp, share, global_batch)
        loss.backward()
        observed = {}
        if ramp is not None and self.plan.latency is None and isinstance(optimizers.lambdas,
                                                                          sparsity_control.AdaptiveMultipliers):
            # The controller's integral part steers what evaluations report: the deterministic masks' sparsity.
            observed["evaluated_sparsity"] = optimizers.lambdas.observe(
                gates, student.config, batch["attention_mask"], self.plan.task_length, ramp[0], self.dist.gather_sum,
                global_batch,
            )

        self.dist.sum_gradients(list(student.parameters()) + gates.gate_parameters())
        torch.nn.utils.clip_grad_norm_(student.parameters(), config.max_grad_norm)
        optimizers.weights.step()
        if pruning:
            optimizers.gates.step()
            optimizers.lambdas.step()
        optimizers.scheduler.step()
        gates.constrain_()
        student.zero_grad(set_to_none=True)
        gates.zero_grad(set_to_none=True)

        step_target, rank_weight = ramp or (0.0, 0.0)
        task_loss, lag, rank = (_number(parts[k]) for k in ("task_loss", "lagrangian", "rank_loss"))
        values = {
            "loss": task_loss + rank_weight * rank + lag,
            "task_loss": task_loss,
            "lagrangian": lag,
            "rank_loss": rank,
            "lambda_1": _number(gates.lambda_1),
            "lambda_2": _number(gates.lambda_2),
            "expected_sparsity": _number(parts["expected_sparsity"]),
            "target": step_target,
            **observed,
        }
        if self.plan.latency is not None:
            held = _number(parts.get("expected_latency_sparsity", 0.0))  # 0 before pruning starts
            values["expected_latency_sparsity"] = held
            # This batch's expected speedup over dense, at the dev set's unpruned speedup.
            values["predicted_speedup"] = self.plan.latency.unpruned_speedup / max(1.0 - held, 1e-9)
        return values

    def loss(self, student_out, teacher_out, batch: Dict[str, torch.Tensor], ramp: Optional[Tuple[float, float]],
             share: float, global_batch: int) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """This process's part of ToP's loss, and the loss's parts.

        The task loss and the rank distillation are weighted by the process's ``share`` of the
        global batch. Once pruning (``ramp`` is the step's target and rank weight), the Lagrangian
        of the global batch's expected MAC sparsity (with a target speedup, its expected latency
        sparsity: :meth:`latency_sparsity`) and the rank distillation are added.
        """
        config, gates = self.config, self.gates
        if self.plan.regression:
            task_loss = F.mse_loss(student_out.logits.squeeze(-1), batch["labels"].float())
        else:
            task_loss = logit_distillation_loss(student_out.logits, teacher_out.logits, config.distill_temperature)
        loss = share * task_loss
        lag = rank = expected = torch.zeros((), device=task_loss.device)
        extra: Dict[str, torch.Tensor] = {}
        if ramp is not None:
            step_target, rank_weight = ramp
            token_score, pruner_score = gates.keep_probabilities()
            if self.plan.latency is None:
                relative, _ = flops.relative_macs(
                    token_score, pruner_score, gates.prune_locations, self.student.config, batch["attention_mask"],
                    self.plan.task_length,
                )
                expected = 1 - self.dist.gather_sum(relative.sum()) / global_batch
                held = expected
            else:
                held, expected = self.latency_sparsity(token_score, pruner_score, batch["attention_mask"],
                                                       global_batch)
                extra["expected_latency_sparsity"] = held
            lag = lagrangian_loss(held, step_target, gates.lambda_1, gates.lambda_2)
            rank = rank_distillation_loss(
                student_out.importance, teacher_out.importance[-1], batch["attention_mask"][:, 1:], config.topk,
                layers=self.plan.rank_layers,
            )
            loss = loss + share * rank_weight * rank + lag
        return loss, {"task_loss": task_loss, "lagrangian": lag, "rank_loss": rank, "expected_sparsity": expected,
                      **extra}

    def latency_sparsity(self, token_score: torch.Tensor, pruner_score: torch.Tensor, attention_mask: torch.Tensor,
                         global_batch: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """The global batch's expected latency sparsity (differentiable; ``1 - E[t(gates)] / t(no pruning)``, summed
        over the examples as ``top bench`` sums batches), and its expected MAC sparsity (for the log only)."""
        gates = self.gates
        pruned, unpruned = self.plan.latency.model.expected_seconds(token_score, pruner_score, gates.prune_locations,
                                                                    attention_mask)
        held = 1 - self.dist.gather_sum(pruned.sum()) / self.dist.gather_sum(unpruned.sum().detach())
        with torch.no_grad():
            relative, _ = flops.relative_macs(token_score, pruner_score, gates.prune_locations, self.student.config,
                                              attention_mask, self.plan.task_length)
            expected = 1 - self.dist.gather_sum(relative.sum()) / global_batch
        return held, expected
