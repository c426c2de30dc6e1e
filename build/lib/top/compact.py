"""Fast compact inference: only the surviving tokens of the whole batch are computed.

Same result as ``ToPForSequenceClassification(..., mode="compact")``, built for speed:

- every dense projection (q, k, v, attention output, both feed-forward layers) runs on one
  packed ``[tokens, hidden]`` matrix holding the survivors of the whole batch, so no padding is
  multiplied; only the attention scores are computed per example, padded to the batch's longest
  survivor (a small cost next to the projections at these lengths);
- a token is dropped right after the attention that ranks it, so the feed-forward of that layer
  already skips it (what ``top.flops.model_macs`` counts);
- the survivor counts are known on the host before anything runs: how many tokens a prune step
  keeps depends only on how many are alive (ranks are a permutation), so the whole plan of
  lengths is made once per call and no layer waits for the device;
- layers whose attention ranks nothing use the fused ``scaled_dot_product_attention`` kernel
  where torch has it.

The stock Hugging Face sub-modules of each layer are called as they are; only the scaled
dot-product between them is written here. The keep rule is :func:`top.pruning.prune_step`.
"""

import dataclasses
import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from top.pruning import prune_step

# The additive mask value of transformers 4.16, as the reference compact mode uses.
MASK_VALUE = -10000.0
_HAS_SDPA = hasattr(F, "scaled_dot_product_attention")


@dataclasses.dataclass
class CompactOutput:
    logits: torch.Tensor
    # ``[B, L]`` tokens entering each layer, [CLS] included, padding excluded (host-computed).
    kept_lengths: torch.Tensor


def unsupported_reason(model) -> Optional[str]:
    """Why the fast path cannot run this model (None when it can)."""
    config = model.config
    if getattr(config, "position_embedding_type", "absolute") != "absolute":
        return "relative position embeddings are not supported by the fast compact path"
    if getattr(config, "is_decoder", False):
        return "decoder models are not supported by the fast compact path"
    if model.training:
        return "the fast compact path is for inference; call model.eval() first"
    return None


# ----------------------------------------------------------------------------------------------
# The plan: survivor counts, known before the forward pass


_SURVIVOR_CACHE: Dict[Tuple, List[List[int]]] = {}


def survivor_table(token_z: torch.Tensor, pruner_z: torch.Tensor, max_alive: int,
                   dtype: torch.dtype = torch.float32) -> List[List[int]]:
    """``table[location][m]``: non-[CLS] tokens kept at that location when ``m`` are alive.

    :func:`prune_step` keeps a token by the bin of its rank among the alive tokens, so the count
    depends on ``m`` only. We ask ``prune_step`` itself, on a strictly decreasing score, for
    every ``m`` at once (the same float ops, so the same bin boundaries).
    """
    token_z = token_z.detach().cpu()
    pruner_z = pruner_z.detach().cpu()
    key = (tuple(token_z.flatten().tolist()), tuple(pruner_z.tolist()), tuple(token_z.shape), max_alive, dtype)
    cached = _SURVIVOR_CACHE.get(key)
    if cached is not None:
        return cached
    size = max(int(max_alive), 1)
    score = torch.arange(size, 0, -1, dtype=dtype).expand(size + 1, size)
    alive = (torch.arange(size)[None, :] < torch.arange(size + 1)[:, None]).to(dtype)
    table = []
    for bins, gate in zip(token_z.to(dtype), pruner_z.to(dtype)):
        kept = prune_step(score, alive, bins, gate) > 0
        table.append(kept.sum(dim=1).tolist())
    if len(_SURVIVOR_CACHE) > 16:
        _SURVIVOR_CACHE.clear()
    _SURVIVOR_CACHE[key] = table
    return table


@dataclasses.dataclass
class _Layout:
    """Where each example's tokens sit: packed rows and the padded ``[B, n]`` attention grid."""

    lengths: List[int]
    width: int  # n: the longest example
    pad_rows: torch.Tensor  # [T] flat index b * n + j of every packed row
    starts: torch.Tensor  # [B] packed row of each example's [CLS]
    key_bias: Optional[torch.Tensor]  # [B, 1, 1, n] additive mask, None when nothing is padded
    query_valid: torch.Tensor  # [B, n] float, 1 on real rows

    @property
    def ragged(self) -> bool:
        return self.key_bias is not None


def _layout(lengths: List[int], device, dtype) -> _Layout:
    width = max(lengths)
    starts, pad_rows, total = [], [], 0
    for b, n in enumerate(lengths):
        starts.append(total)
        pad_rows.extend(range(b * width, b * width + n))
        total += n
    length_t = torch.tensor(lengths)
    valid = torch.arange(width)[None, :] < length_t[:, None]
    ragged = min(lengths) != width
    key_bias = None
    if ragged:
        key_bias = ((~valid).to(dtype) * MASK_VALUE)[:, None, None, :].to(device)
    return _Layout(
        lengths=list(lengths),
        width=width,
        pad_rows=torch.tensor(pad_rows, dtype=torch.long).to(device),
        starts=torch.tensor(starts, dtype=torch.long).to(device),
        key_bias=key_bias,
        query_valid=valid.to(dtype).to(device),
    )


# ----------------------------------------------------------------------------------------------
# One layer


def _to_grid(packed: torch.Tensor, layout: _Layout) -> torch.Tensor:
    """``[T, D]`` -> ``[B, n, D]`` with zero padding."""
    batch = len(layout.lengths)
    if not layout.ragged:
        return packed.view(batch, layout.width, packed.shape[-1])
    grid = packed.new_zeros(batch * layout.width, packed.shape[-1])
    grid.index_copy_(0, layout.pad_rows, packed)
    return grid.view(batch, layout.width, packed.shape[-1])


def _from_grid(grid: torch.Tensor, layout: _Layout) -> torch.Tensor:
    """``[B, n, D]`` -> ``[T, D]``, padding rows dropped."""
    flat = grid.reshape(-1, grid.shape[-1])
    return flat.index_select(0, layout.pad_rows) if layout.ragged else flat


def _attention(layer, packed: torch.Tensor, layout: _Layout, rank: bool):
    """Self-attention of one layer on packed tokens: ``(attention_output [T, H], importance)``.

    ``importance`` (only when ``rank``) is ``[B, n]``: attention probabilities averaged over
    heads and the real query rows, as the reference compact mode computes it.
    """
    self_attention = layer.attention.self
    heads = self_attention.num_attention_heads
    head_dim = self_attention.attention_head_size
    hidden = heads * head_dim
    batch, width = len(layout.lengths), layout.width
    qkv = torch.cat([self_attention.query(packed), self_attention.key(packed), self_attention.value(packed)], dim=1)
    # [B, n, 3, heads, d] -> three [B, heads, n, d]
    q, k, v = _to_grid(qkv, layout).view(batch, width, 3, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    importance = None
    if rank or not _HAS_SDPA:
        # In place: one [B, heads, n, n] buffer at a time keeps the peak memory at dense's.
        probs = torch.matmul(q, k.transpose(-1, -2)).mul_(1.0 / math.sqrt(head_dim))
        if layout.key_bias is not None:
            probs.add_(layout.key_bias)
        probs.sub_(probs.amax(dim=-1, keepdim=True)).exp_()
        probs.div_(probs.sum(dim=-1, keepdim=True))
        context = torch.matmul(probs, v)
        if rank:
            # Sum over heads and real query rows, then the mean the reference takes.
            summed = torch.einsum("bhqk,bq->bk", probs, layout.query_valid)
            rows = layout.query_valid.sum(dim=1, keepdim=True) * heads
            importance = summed / rows
    else:
        context = F.scaled_dot_product_attention(q, k, v, attn_mask=layout.key_bias)
    context = _from_grid(context.permute(0, 2, 1, 3).reshape(batch, width, hidden), layout)
    return layer.attention.output(context, packed), importance


def _feed_forward(layer, packed: torch.Tensor) -> torch.Tensor:
    return layer.output(layer.intermediate(packed), packed)


def _survivor_rows(importance: torch.Tensor, layout: _Layout, new_layout: _Layout,
                   bin_gates: torch.Tensor, layer_gate: torch.Tensor) -> torch.Tensor:
    """Packed rows (old layout) of the tokens that survive, in the new layout's packed order."""
    alive = layout.query_valid[:, 1:]
    keep = prune_step(importance[:, 1:], alive, bin_gates.to(alive.dtype), layer_gate.to(alive.dtype)) > 0
    keep = torch.cat([keep.new_ones(keep.shape[0], 1), keep], dim=1)
    # Survivors first, in their original order; the plan says how many there are.
    order = torch.sort((~keep).to(torch.int8), dim=1, stable=True).indices[:, : new_layout.width]
    rows = layout.starts[:, None] + order
    return rows.reshape(-1).index_select(0, new_layout.pad_rows)


# ----------------------------------------------------------------------------------------------
# The forward pass


def compact_forward(
    model,
    input_ids: torch.Tensor,
    attention_mask: Optional[torch.Tensor] = None,
    token_type_ids: Optional[torch.Tensor] = None,
    token_z: Optional[torch.Tensor] = None,
    pruner_z: Optional[torch.Tensor] = None,
) -> CompactOutput:
    """Logits of ``model`` (a ``ToPForSequenceClassification``) with pruned tokens removed.

    Inputs are right-padded as a tokenizer makes them. Equal to ``model(..., mode="compact")``
    up to float rounding; one host sync per call (the input lengths), none per layer.
    """
    reason = unsupported_reason(model)
    if reason is not None:
        raise ValueError(reason)
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    family = model._family
    layers = family.layers
    locations = list(model.prune_locations)
    pruning = token_z is not None
    if pruning and pruner_z is None:
        pruner_z = token_z.new_ones(token_z.shape[0])
    if pruning and (token_z.shape[0] != len(locations) or pruner_z.shape[0] != len(locations)):
        raise ValueError(f"gates cover {token_z.shape[0]} locations but the model prunes at {locations}")

    with torch.no_grad():
        lengths = attention_mask.sum(dim=1).tolist()  # the one host sync
        width = max(lengths)
        embedded = family.embed(
            input_ids[:, :width], None if token_type_ids is None else token_type_ids[:, :width]
        )
        dtype, device = embedded.dtype, embedded.device

        # The plan: each layer's input lengths, and which layers end with a prune step.
        prune_after = {}
        plan = [list(lengths)]
        table = survivor_table(token_z, pruner_z, width - 1, dtype) if pruning else None
        for index in range(1, len(layers)):
            current = plan[-1]
            if pruning and index in locations:
                location = locations.index(index)
                counts = table[location]
                new = [1 + counts[n - 1] if n > 0 else 0 for n in current]
                if new != current:
                    prune_after[index - 1] = location
                current = new
            plan.append(current)
        layouts = [_layout(lens, device, dtype) for lens in plan]

        first = layouts[0]
        packed = _from_grid(embedded, first) if first.ragged else embedded.reshape(-1, embedded.shape[-1])
        for index, layer in enumerate(layers):
            layout = layouts[index]
            location = prune_after.get(index)
            attended, importance = _attention(layer, packed, layout, rank=location is not None)
            if location is not None:
                rows = _survivor_rows(importance, layout, layouts[index + 1], token_z[location], pruner_z[location])
                attended = attended.index_select(0, rows)
            packed = _feed_forward(layer, attended)
        cls = packed.index_select(0, layouts[-1].starts)
        logits = family.head(cls[:, None, :])
    kept_lengths = torch.tensor(plan, dtype=torch.long).t().contiguous()
    return CompactOutput(logits=logits, kept_lengths=kept_lengths.to(input_ids.device))


def prediction_agreement(a: torch.Tensor, b: torch.Tensor, regression_tolerance: float = 1e-2) -> Sequence[bool]:
    """Per example: same argmax class (classification) or within a tolerance (regression)."""
    if a.shape[-1] == 1:
        return ((a[:, 0] - b[:, 0]).abs() <= regression_tolerance).tolist()
    return (a.argmax(dim=-1) == b.argmax(dim=-1)).tolist()
