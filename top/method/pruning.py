"""The pruning step: rank the surviving tokens, map each rank to a bin, keep or drop.

This is the only place the keep rule is written; ``train``, ``faithful`` and ``compact``
all call :func:`prune_step` and differ only in what they do with its result.
"""

import torch


def rank_to_bin(importance: torch.Tensor, keep: torch.Tensor, bin_num: int) -> torch.Tensor:
    """Bin index of every position: its rank among the kept tokens / their count * bin_num.

    ``importance`` and ``keep`` are ``[B, N-1]`` (the [CLS] column is never ranked). Tokens
    already dropped (``keep == 0``, padding included) score 0, so they rank after every
    survivor; their bin does not matter, since survival is cumulative. As in the original, the
    count gets 1e-6 added (boundaries round down) and ranks past the end go to bin ``bin_num``,
    one past the last gate, which is always off. The ops are the original's (argsort of
    argsort), so ties break the same way on the same torch.
    """
    alive = (keep > 0).to(importance.dtype)
    score = importance.detach() * alive
    order = torch.argsort(score, dim=1, descending=True)
    rank = torch.argsort(order, dim=1)
    n_alive = alive.sum(dim=1, keepdim=True)
    relative = (rank / (n_alive + 1e-6)).clamp(0.0, 1.0)
    return (relative * bin_num).long().clamp_min(0)


def prune_step(
    importance: torch.Tensor,
    keep: torch.Tensor,
    bin_gates: torch.Tensor,
    layer_gate: torch.Tensor,
) -> torch.Tensor:
    """One prune location: the new keep values ``[B, N-1]`` of the non-[CLS] tokens.

    A token survives when the gate of its rank bin is on, or when the location's layer gate is
    off; survival is cumulative (a dropped token stays dropped). With sampled (soft) gates the
    result is soft and differentiable in ``bin_gates``; the layer gate is straight-through
    (binary forward, identity gradient). With 0/1 gates the result is 0/1.
    """
    bins = rank_to_bin(importance, keep, bin_gates.shape[-1])
    padded = torch.cat([bin_gates, bin_gates.new_zeros(1)])
    bin_keep = padded[bins]
    hard_layer_gate = (layer_gate > 0).to(layer_gate.dtype)
    layer_gate = hard_layer_gate + layer_gate - layer_gate.detach()
    alive = (keep > 0).to(bin_keep.dtype)
    return (1.0 - (1.0 - bin_keep) * layer_gate) * alive
