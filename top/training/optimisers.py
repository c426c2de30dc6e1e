"""The weights' AdamW parameter groups and the linear learning-rate schedule both training commands use."""

from __future__ import annotations

from typing import Dict, List

import torch
from transformers import get_linear_schedule_with_warmup


def weight_parameter_groups(model: torch.nn.Module, learning_rate: float, weight_decay: float) -> List[Dict]:
    """Two AdamW groups (decayed / not: biases and LayerNorm weights); embeddings stay frozen.

    The frozen embeddings keep ``requires_grad``, as in the original: their gradients still count
    in the clipping norm, but no optimiser moves them.
    """
    no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight")
    decay, plain = [], []
    for name, parameter in model.named_parameters():
        if "embeddings" in name or not parameter.requires_grad:
            continue
        (plain if any(nd in name for nd in no_decay) else decay).append(parameter)
    return [
        {"params": decay, "weight_decay": weight_decay, "lr": learning_rate},
        {"params": plain, "weight_decay": 0.0, "lr": learning_rate},
    ]


def linear_schedule(optimizer: torch.optim.Optimizer, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """The learning rate falls linearly from its start to 0 over ``total_steps`` (no warm-up)."""

    # At least one step, so a run with no steps left keeps its start rate rather than 0.
    return get_linear_schedule_with_warmup(optimizer, 0, max(1, int(total_steps)))
