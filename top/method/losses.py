"""The three extra training losses of ToP: the sparsity Lagrangian, logit distillation, rank distillation."""

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from top.errors import UserError


def lagrangian_loss(
    expected_sparsity: torch.Tensor, target_sparsity: float, lambda_1: torch.Tensor, lambda_2: torch.Tensor
) -> torch.Tensor:
    """``lambda_1 (s - t) + lambda_2 (s - t)^2``; the lambdas are trained by gradient ascent."""
    gap = expected_sparsity - target_sparsity
    return lambda_1 * gap + lambda_2 * gap**2


def logit_distillation_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 2.0
) -> torch.Tensor:
    """KL(teacher || student) of the temperature-softened distributions, batch mean, times T^2."""
    return F.kl_div(
        F.log_softmax(student_logits / temperature, dim=-1),
        F.softmax(teacher_logits / temperature, dim=-1),
        reduction="batchmean",
    ) * (temperature**2)


def lambda_arp2_loss(
    scores: torch.Tensor, relevance: torch.Tensor, n: torch.Tensor, sigma: float = 1.0
) -> torch.Tensor:
    """ARP-2 LambdaLoss per list, ``[B]``, as pytorchltr 0.2.1's ``LambdaARPLoss2``.

    ``sum over i, j < n with y_i > y_j of (y_i - y_j) log2(1 + exp(-sigma (s_i - s_j)))``.
    Entries at positions ``>= n`` are padding. The loss is a sum over pairs, so pytorchltr's
    sorting by score (with random tie-breaks) does not change it and is skipped here.
    """
    scores = scores.reshape(scores.shape[0], -1)
    relevance = relevance.reshape(relevance.shape[0], -1)
    list_size = scores.shape[1]
    score_diffs = scores.unsqueeze(2) - scores.unsqueeze(1)
    rel_diffs = (relevance.unsqueeze(2) - relevance.unsqueeze(1)).to(scores.dtype)
    # softplus(x) / ln 2 == log2(1 + e^x), without overflow for large score gaps.
    pair_loss = F.softplus(-sigma * score_diffs) / math.log(2.0)
    positions = torch.arange(list_size, device=scores.device)
    real = positions.unsqueeze(0) < n.to(scores.device).unsqueeze(1)
    counted = (rel_diffs > 0) & real.unsqueeze(2) & real.unsqueeze(1)
    pair_loss = torch.where(counted, rel_diffs * pair_loss, torch.zeros_like(pair_loss))
    return pair_loss.sum(dim=(1, 2))


def default_rank_layers(num_layers: int) -> range:
    """The student layers the rank distillation teaches, as in the original: 1 .. L/3 - 1 (1-3 of 12)."""
    return range(1, num_layers // 3)


def rank_distillation_loss(
    student_importance: Sequence[torch.Tensor],
    teacher_importance: torch.Tensor,
    attention_mask: torch.Tensor,
    topk: int,
    layers: Optional[Sequence[int]] = None,
    sigma: float = 1.0,
) -> torch.Tensor:
    """ToP's ranking distillation: each chosen student layer learns the teacher's top-k token order.

    ``student_importance`` holds one ``[B, N-1]`` tensor per student layer, ``teacher_importance``
    is the teacher's final-layer ``[B, N-1]`` and ``attention_mask [B, N-1]`` excludes [CLS].
    ``layers`` indexes ``student_importance`` (by default :func:`default_rank_layers`). Returns
    the sum over layers of the batch-mean LambdaARP2 loss divided by ``topk^2``.
    """
    if int(topk) < 1:
        raise UserError(f"topk is {topk}; give a positive number of tokens to rank, e.g. 20.")
    if layers is None:
        layers = default_rank_layers(len(student_importance))
    max_length = int(attention_mask.sum(-1).max().item())
    teacher = teacher_importance[:, :max_length].detach()
    mask = attention_mask[:, :max_length]

    # Relevance n - rank: the teacher's most important token gets n (its row's real length).
    order = torch.argsort(teacher, dim=1, descending=True)
    rank = torch.argsort(order, dim=1)
    relevance = (mask.sum(-1, keepdim=True) - rank).long()

    k = min(int(topk), max_length)
    threshold = torch.topk(relevance, k=k, dim=1, largest=True)[0][:, -1:]
    selection = relevance >= threshold
    relevance = relevance[selection].reshape(-1, k).clamp_min(0)
    # Tokens beyond a short row's length get relevance 0 and a zero score.
    is_padding = relevance == 0
    relevance = relevance - relevance.min(-1, keepdim=True)[0]
    single_zero = (relevance == 0).sum(-1) == 1
    relevance = relevance + single_zero.long().unsqueeze(-1)
    n = torch.full((relevance.shape[0],), k, dtype=torch.long, device=relevance.device)

    loss = teacher.new_zeros(())
    for layer in layers:
        scores = student_importance[layer][:, :max_length][selection].reshape(-1, k)
        scores = torch.where(is_padding, torch.zeros_like(scores), scores)
        losses = lambda_arp2_loss(scores, relevance, n, sigma=sigma) / (n**2)
        loss = loss + losses.mean()
    return loss
