"""The test oracle for ``top/method/compact.py``: compact inference stated plainly.

Each prune step gathers a row's survivors to the front (in order) and re-pads the batch to its
longest row, then runs the stock Hugging Face layer on that shorter batch. Nothing is packed,
nothing is planned ahead (it reads lengths from the device after every prune step), and the
attention is the layer's own, so it shares none of the fast path's machinery except the keep
rule, :func:`top.method.pruning.prune_step`. Importance averages the attention probabilities over heads
and over the rows of real survivors only: re-padded rows are an artefact of batching.

This was ``ToPClassifier(..., mode="compact")`` before every command moved to
``top.method.compact``; it lives here as the statement the fast path is checked against.
"""

from __future__ import annotations

from typing import List, Optional

import torch

from top.method.modeling import ToPOutput, _additive_mask, _with_cls
from top.method.pruning import prune_step


def reference_compact(model, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                      token_type_ids: Optional[torch.Tensor] = None, token_z: Optional[torch.Tensor] = None,
                      pruner_z: Optional[torch.Tensor] = None) -> ToPOutput:
    """``model``'s logits with pruned tokens removed; importance and keep masks at input positions."""
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if token_z is not None and pruner_z is None:
        pruner_z = token_z.new_ones(token_z.shape[0])
    family = model._family
    with torch.no_grad():
        hidden = family.embed(input_ids, token_type_ids)
        batch, full_len = input_ids.shape
        dtype = hidden.dtype
        # Trim the batch to its longest member before anything runs.
        length = int(attention_mask.sum(dim=1).max().item())
        hidden = hidden[:, :length]
        alive = attention_mask[:, :length].to(dtype)  # [B, n], [CLS] included
        positions = torch.arange(length, device=hidden.device).expand(batch, length)
        importance: List[torch.Tensor] = []
        keep_masks: List[Optional[torch.Tensor]] = []
        kept_lengths = []
        current_mask = None
        last_importance = None
        for index, layer in enumerate(family.layers):
            if token_z is not None and index in model.prune_locations:
                location = model.prune_locations.index(index)
                keep = prune_step(last_importance, alive[:, 1:], token_z[location], pruner_z[location])
                hidden, alive, positions = gather_survivors(hidden, _with_cls(keep), positions)
                current_mask = scatter(alive > 0, positions, full_len)
            keep_masks.append(current_mask)
            kept_lengths.append((alive > 0).sum(dim=1))
            outputs = layer(hidden, attention_mask=_additive_mask(alive, dtype), output_attentions=True)
            hidden = outputs[0]
            probs = outputs[1] * alive[:, None, :, None]
            rows = alive.sum(dim=1).clamp_min(1.0) * probs.shape[1]
            last_importance = (probs.sum(dim=(1, 2)) / rows[:, None])[:, 1:]
            importance.append(scatter(last_importance, positions[:, 1:] - 1, full_len - 1))
        logits = family.head(hidden)
    return ToPOutput(logits, importance, keep_masks, torch.stack(kept_lengths, dim=1))


def gather_survivors(hidden, alive, positions):
    """Move each row's survivors to the front (in order) and cut the batch to the longest row."""
    order = torch.sort((alive > 0).to(torch.int8), dim=1, descending=True, stable=True).indices
    new_len = int((alive > 0).sum(dim=1).max().item())
    order = order[:, :new_len]
    hidden = torch.gather(hidden, 1, order.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
    alive = torch.gather(alive, 1, order)
    positions = torch.gather(positions, 1, order)
    return hidden, alive, positions


def scatter(values: torch.Tensor, positions: torch.Tensor, size: int) -> torch.Tensor:
    """Place ``values [B, n]`` at ``positions`` of a zero ``[B, size]`` tensor (padding rows dropped)."""
    out = values.new_zeros(values.shape[0], size)
    valid = positions >= 0
    # Re-padded slots point at real positions too; they carry zeros/False, so scatter them first.
    out.scatter_(1, positions.clamp_min(0), torch.where(valid, values, torch.zeros_like(values)))
    return out
