"""Multiply-accumulate counts of a BERT-style encoder, and the sparsities ToP constrains and reports.

All dimensions come from the model config (``hidden_size``, ``intermediate_size``,
``num_attention_heads``, ``num_hidden_layers``). The formulas are ToP's: embeddings, layer norms,
biases and the classifier are not counted.
"""

from typing import Any, Iterable, Sequence, Tuple, Union

import numpy as np
import torch

from top.errors import UserError
from top.method.gates import check_prune_locations

Number = Union[int, float, torch.Tensor]


def _dims(config: Any) -> Tuple[int, int, int, int, int]:
    names = ("hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers")
    missing = [name for name in names if getattr(config, name, None) is None]
    if missing:
        raise UserError(
            "The model config lacks {}; give a BERT/RoBERTa-style config that sets it.".format(", ".join(missing))
        )
    hidden = int(config.hidden_size)
    heads = int(config.num_attention_heads)
    return hidden, int(config.intermediate_size), heads, int(config.num_hidden_layers), hidden // heads


def layer_macs(att_len: Number, ffn_len: Number, config: Any) -> Number:
    """MACs of one encoder layer: attention over ``att_len`` tokens, feed-forward over ``ffn_len``."""
    hidden, intermediate, heads, _, head_dim = _dims(config)
    per_head = (
        3 * att_len * hidden * head_dim  # q, k and v projections
        + att_len * head_dim * att_len  # q k^T
        + att_len * att_len  # softmax
        + att_len * head_dim * att_len  # attention-weighted v
    )
    output_dense = att_len * hidden * hidden
    # Two dense layers, written as two terms so float sums round as in the original.
    ffn = ffn_len * hidden * intermediate + ffn_len * intermediate * hidden
    return heads * per_head + output_dense + ffn


def model_macs(lengths: torch.Tensor, config: Any) -> torch.Tensor:
    """MACs of the encoder per example; ``lengths [B, num_layers]`` is the input length of each layer.

    A layer's feed-forward runs on the tokens that enter the next layer (pruning happens at the
    end of attention); the last layer's on its own length.
    """
    num_layers = _dims(config)[3]
    if lengths.dim() != 2 or lengths.shape[1] != num_layers:
        raise ValueError(f"lengths has shape {tuple(lengths.shape)}, expected [batch, {num_layers}]")
    ffn_lengths = torch.cat([lengths[:, 1:], lengths[:, -1:]], dim=1)
    return layer_macs(lengths, ffn_lengths, config).sum(-1)


def exact_model_macs(kept_lengths: torch.Tensor, config: Any) -> torch.Tensor:
    """Integer MACs per example from the real survivor counts ``kept_lengths [B, num_layers]``."""
    return model_macs(kept_lengths.long(), config)


def layer_keep_ratios(
    token_score: torch.Tensor, pruner_score: torch.Tensor, prune_locations: Sequence[int], num_layers: int
) -> torch.Tensor:
    """Expected fraction of (non-[CLS]) tokens entering each layer, ``[num_layers]``, differentiable.

    A location keeps the mean of its bin scores when its layer gate is on and everything when it
    is off; the fractions multiply from layer to layer, and layer 0 sees every token.
    """
    locations = check_prune_locations(
        prune_locations, num_layers, token_score.shape[0],
        source="the prune_locations argument", fix="use the prune locations the gates were built with",
    )
    location_ratio = 1.0 - (1.0 - token_score.mean(dim=1)) * pruner_score
    ratios = [token_score.new_ones(())]
    for layer in range(1, num_layers):
        if layer in locations:
            ratios.append(ratios[-1] * location_ratio[locations.index(layer)])
        else:
            ratios.append(ratios[-1])
    return torch.stack(ratios)


def relative_macs(
    token_score: torch.Tensor,
    pruner_score: torch.Tensor,
    prune_locations: Sequence[int],
    config: Any,
    attention_mask: torch.Tensor,
    task_length: int,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-example pruned MACs over the dense MACs of the same example, and over dense MACs at ``task_length``.

    [CLS] is never pruned: a layer that keeps ratio r of an n-token input runs on (n - 1) r + 1.
    """
    num_layers = _dims(config)[3]
    ratios = layer_keep_ratios(token_score, pruner_score, prune_locations, num_layers)
    full_lengths = attention_mask.sum(-1).float().unsqueeze(-1).expand(-1, num_layers)
    pruned_lengths = (full_lengths - 1) * ratios.unsqueeze(0) + 1
    macs = model_macs(pruned_lengths, config)
    full_macs = model_macs(full_lengths, config)
    task_macs = model_macs(torch.full_like(full_lengths, float(task_length)), config)
    return macs / full_macs, macs / task_macs


def expected_sparsities(
    token_score: torch.Tensor,
    pruner_score: torch.Tensor,
    prune_locations: Sequence[int],
    config: Any,
    attention_mask: torch.Tensor,
    task_length: int,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(expected_sparsity, expected_sequence_sparsity)``: one minus the batch-mean relative MACs.

    The first compares with the dense model on the same (unpadded) inputs, the second with the
    dense model on inputs padded to the task's maximum length ``task_length``. Feed keep
    probabilities while training and the 0/1 masks at evaluation, as the original does.
    """
    relative, relative_sequence = relative_macs(
        token_score, pruner_score, prune_locations, config, attention_mask, task_length
    )
    return 1 - relative.mean(), 1 - relative_sequence.mean()


def flops_reduction(sparsity: Number) -> Number:
    """How many times fewer MACs a model with this MAC sparsity runs: ``1 / (1 - s)``."""
    if not torch.is_tensor(sparsity) and float(sparsity) >= 1.0:
        raise UserError(f"A sparsity of {sparsity} has no FLOPs reduction; give a value below 1.")
    return 1.0 / (1.0 - sparsity)


def mean_of_batch_means(batches: Iterable[Any]) -> float:
    """Mean over evaluation batches of each batch's mean, the way ToP reports expected sparsities.

    Each item is one batch: a tensor or sequence of per-example values, or an already-averaged
    number. A partial last batch weighs as much as a full one, as in the original.
    """
    means = []
    for batch in batches:
        if torch.is_tensor(batch):
            means.append(float(batch.detach().double().mean()))
        elif isinstance(batch, (int, float, np.floating, np.integer)):
            means.append(float(batch))
        else:
            means.append(float(np.mean(np.asarray(batch, dtype=np.float64))))
    if not means:
        raise ValueError("mean_of_batch_means needs at least one batch")
    return float(np.mean(means))
