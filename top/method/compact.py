"""Compact inference: only the surviving tokens of the whole batch are computed.

This is the one compact path every command runs (``top eval --mode compact``, ``top reproduce``,
the demo and ``top bench``). It removes the tokens that faithful mode only masks, with the same
keep rule (:func:`top.method.pruning.prune_step`); ``tests/reference_compact.py`` holds a plain
gather-and-re-pad statement of the same thing that the tests check it against. Built for speed:

- every dense projection (q, k, v, attention output, both feed-forward layers) runs on one
  packed ``[tokens, hidden]`` matrix holding the survivors of the whole batch, so no padding is
  multiplied; only the attention scores are computed per example, padded to the batch's longest
  survivor (a small cost next to the projections at short lengths). Where the batch's ``[B,
  heads, n, n]`` attention probabilities would outgrow the cache (long inputs, :data:`PER_EXAMPLE_BYTES`),
  a CPU computes them one example at a time instead, each at its own length and a few heads at
  once, in two scratch buffers reused across examples and layers: freshly allocated buffers of
  that size cost more to touch than the arithmetic on them;
- a token is dropped right after the attention that ranks it, so the feed-forward of that layer
  already skips it (what ``top.method.flops.model_macs`` counts);
- the survivor counts are known on the host before anything runs: how many tokens a prune step
  keeps depends only on how many are alive (ranks are a permutation), so a
  :class:`CompactPlan`, built once per set of gates, holds them as a table, and a forward pass
  reads the input lengths (its one host sync) and never waits for the device again (on a GPU
  the layouts of every layer go over in one asynchronous copy);
- layers whose attention ranks nothing use the fused ``scaled_dot_product_attention`` kernel
  where torch has it.

The stock Hugging Face sub-modules of each layer supply the weights: their linear layers run
through :func:`top.method.prepacked.linear` (oneDNN on prepacked weights at few rows, where a
linear layer is bound by reading its weight; ``F.linear`` otherwise), their LayerNorms and
activations are called as they are (dropout is the identity in eval mode, which compact
requires); only the scaled dot-product between them is written here.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from top.method import prepacked
from top.method.modeling import MASK_VALUE
from top.method.prepacked import linear, linear_activation, linear_split
from top.method.pruning import prune_step

_HAS_SDPA = hasattr(F, "scaled_dot_product_attention")

# On a CPU, a layer that computes its attention probabilities (a ranking layer, or any layer where
# torch has no fused kernel) and whose batch of them (``B * heads * n * n`` floats) would take more
# bytes than PER_EXAMPLE_BYTES runs its attention one example at a time, at most CHUNK_BYTES of
# heads at once, in two scratch buffers (see the module's docstring). Measured on a 2-vCPU Zen 4
# guest (32 MiB L3), 12 heads of 32: batched is faster up to 6 MB (batch 8 at n = 128, batch 32 at
# 64), even at 7 MB, and one at a time 2.1-2.7x faster from 12 MB on (docs/BENCHMARKS.md).
PER_EXAMPLE_BYTES = 8 * 2**20
CHUNK_BYTES = 4 * 2**20

# Raised whenever the kernels compact inference runs change how long it takes, so that a latency model
# timed on older ones is seen to be (top.method.latency.timing_conditions). 1: batched attention, oneDNN
# at most 96 rows. 2 (2026-12-07): long inputs' attention one example at a time, oneDNN on every row
# count where torch's kernels are AVX-512, the feed-forward's GELU inside its product.
KERNELS_REVISION = 2


def kernels(device: str) -> str:
    """The kernels compact inference runs on ``device`` (``"cpu"``, ``"cuda"``) in this process, in words."""
    linear_layers = prepacked.kernels() if device == "cpu" else "F.linear"
    return f"compact revision {KERNELS_REVISION}; linear layers: {linear_layers}"


@dataclasses.dataclass
class CompactOutput:
    logits: torch.Tensor
    # ``[B, L]`` tokens entering each layer, [CLS] included, padding excluded (host-computed).
    kept_lengths: torch.Tensor


def unsupported_reason(model) -> Optional[str]:
    """Why the compact path cannot run this model (None when it can)."""
    config = model.config
    if getattr(config, "position_embedding_type", "absolute") != "absolute":
        return "relative position embeddings are not supported by the compact path"
    if getattr(config, "is_decoder", False):
        return "decoder models are not supported by the compact path"
    if model.training:
        return "the compact path is for inference; call model.eval() first"
    return None


# ----------------------------------------------------------------------------------------------
# The plan: survivor counts, known before the forward pass


def survivor_table(token_z: torch.Tensor, pruner_z: torch.Tensor, max_alive: int,
                   dtype: torch.dtype = torch.float32) -> List[List[int]]:
    """``table[location][m]``: non-[CLS] tokens kept at that location when ``m`` are alive.

    :func:`prune_step` keeps a token by the bin of its rank among the alive tokens, so the count
    depends on ``m`` only. We ask ``prune_step`` itself, on a strictly decreasing score, for
    every ``m`` at once (the same float ops in ``dtype``, so the same bin boundaries).
    """
    token_z = token_z.detach().cpu().to(dtype)
    pruner_z = pruner_z.detach().cpu().to(dtype)
    size = max(int(max_alive), 1)
    score = torch.arange(size, 0, -1, dtype=dtype).expand(size + 1, size)
    alive = (torch.arange(size)[None, :] < torch.arange(size + 1)[:, None]).to(dtype)
    table = []
    for bins, gate in zip(token_z, pruner_z):
        kept = prune_step(score, alive, bins, gate) > 0
        table.append(kept.sum(dim=1).tolist())
    return table


@dataclasses.dataclass(frozen=True, eq=False)  # tensors have no truth value to compare by
class CompactPlan:
    """One set of deterministic gates made ready for :func:`compact_forward`.

    Build it once where the gates are loaded (:meth:`from_gates`); every batch then reuses it.
    ``table`` (host lists, see :func:`survivor_table`) is None for a dense model.
    """

    token_z: Optional[torch.Tensor]  # [locations, bins], on the model's device
    pruner_z: Optional[torch.Tensor]  # [locations]
    prune_locations: Tuple[int, ...]
    max_length: int  # the longest input (tokens, [CLS] included) the table covers
    dtype: torch.dtype
    table: Optional[List[List[int]]]

    @classmethod
    def from_gates(cls, token_z: Optional[torch.Tensor], pruner_z: Optional[torch.Tensor],
                   prune_locations: Sequence[int], max_length: int,
                   dtype: torch.dtype = torch.float32) -> CompactPlan:
        """``token_z`` None means a dense model; ``pruner_z`` None means every layer gate on."""
        locations = tuple(int(p) for p in prune_locations)
        if max_length < 1:
            raise ValueError(f"max_length must be at least 1, got {max_length}")
        if token_z is None:
            return cls(None, None, locations, int(max_length), dtype, None)
        if pruner_z is None:
            pruner_z = token_z.new_ones(token_z.shape[0])
        if token_z.shape[0] != len(locations) or pruner_z.shape[0] != len(locations):
            raise ValueError(f"gates cover {token_z.shape[0]} locations but the model prunes at {list(locations)}")
        token_z, pruner_z = token_z.detach(), pruner_z.detach()
        table = survivor_table(token_z, pruner_z, max_length - 1, dtype)
        return cls(token_z, pruner_z, locations, int(max_length), dtype, table)

    @property
    def pruning(self) -> bool:
        return self.table is not None

    def layer_lengths(self, lengths: List[int], num_layers: int) -> Tuple[List[List[int]], Dict[int, int]]:
        """Each layer's input lengths, and ``{layer: location}`` for the layers that end by pruning."""
        plan = [list(lengths)]
        prune_after = {}
        for index in range(1, num_layers):
            current = plan[-1]
            if self.pruning and index in self.prune_locations:
                location = self.prune_locations.index(index)
                counts = self.table[location]
                new = [1 + counts[n - 1] if n > 0 else 0 for n in current]
                if new != current:
                    prune_after[index - 1] = location
                current = new
            plan.append(current)
        return plan, prune_after


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


def _host_layout(lengths: List[int]) -> Tuple[List[int], List[int], torch.Tensor]:
    """``(pad_rows, starts, valid [B, n] bool)`` of one layer, on the host."""
    width = max(lengths)
    starts, pad_rows, total = [], [], 0
    for b, n in enumerate(lengths):
        starts.append(total)
        pad_rows.extend(range(b * width, b * width + n))
        total += n
    valid = torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]
    return pad_rows, starts, valid


def _make_layout(lengths: List[int], pad_rows: torch.Tensor, starts: torch.Tensor, valid: torch.Tensor,
                 dtype) -> _Layout:
    """A layer's layout from its index tensors and ``valid`` mask, already on the device."""
    key_bias = None
    if min(lengths) != max(lengths):
        key_bias = ((~valid).to(dtype) * MASK_VALUE)[:, None, None, :]
    return _Layout(lengths=list(lengths), width=max(lengths), pad_rows=pad_rows, starts=starts, key_bias=key_bias,
                   query_valid=valid.to(dtype))


def _layouts(layer_lengths: List[List[int]], kept_lengths: torch.Tensor, device, dtype
             ) -> Tuple[List[_Layout], torch.Tensor]:
    """Every layer's layout (layers with the same lengths share one), and ``kept_lengths``, on ``device``.

    On a GPU everything the layouts hold goes over in one asynchronous copy from pinned memory: a
    plain ``.to(device)`` of a host tensor waits for the device (``cudaStreamSynchronize``), which
    would make the host wait several times per layer.
    """
    distinct: Dict[Tuple[int, ...], int] = {}
    for lengths in layer_lengths:
        distinct.setdefault(tuple(lengths), len(distinct))
    host = [_host_layout(list(lengths)) for lengths in distinct]
    if device.type == "cpu":
        made = [_make_layout(list(lengths), torch.tensor(rows, dtype=torch.long),
                             torch.tensor(starts, dtype=torch.long), valid, dtype)
                for lengths, (rows, starts, valid) in zip(distinct, host)]
        kept = kept_lengths
    else:
        longs = [torch.tensor(part, dtype=torch.long) for rows, starts, _ in host for part in (rows, starts)]
        longs.append(kept_lengths.reshape(-1))
        masks = [valid.reshape(-1) for _, _, valid in host]
        long_buffer = torch.cat(longs).pin_memory().to(device, non_blocking=True)
        mask_buffer = torch.cat(masks).pin_memory().to(device, non_blocking=True)
        long_parts = long_buffer.split([t.numel() for t in longs])
        mask_parts = mask_buffer.split([t.numel() for t in masks])
        made = [_make_layout(list(lengths), long_parts[2 * i], long_parts[2 * i + 1],
                             mask_parts[i].view(host[i][2].shape), dtype) for i, lengths in enumerate(distinct)]
        kept = long_parts[-1].view(kept_lengths.shape)
    return [made[distinct[tuple(lengths)]] for lengths in layer_lengths], kept


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


class _Scratch:
    """Two flat buffers for one forward pass's per-example attention, grown on demand and reused."""

    def __init__(self):
        self.buffers: List[Optional[torch.Tensor]] = [None, None]

    def get(self, index: int, shape: Tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        size = math.prod(shape)
        buffer = self.buffers[index]
        if buffer is None or buffer.numel() < size:
            buffer = self.buffers[index] = like.new_empty(size)
        return buffer[:size].view(shape)


def _materialised(rank: bool) -> bool:
    """Whether a layer computes its attention probabilities itself (ranking, or a torch without the fused kernel)."""
    return rank or not _HAS_SDPA


def _per_example(layout: _Layout, heads: int, rank: bool, rows: torch.Tensor) -> bool:
    """Whether a layer's attention runs one example at a time (see :data:`PER_EXAMPLE_BYTES`)."""
    if not _materialised(rank) or rows.device.type != "cpu":
        return False
    return len(layout.lengths) * heads * layout.width ** 2 * rows.element_size() > PER_EXAMPLE_BYTES


def _heads(rows: torch.Tensor, heads: int, head_dim: int) -> torch.Tensor:
    """``[n, heads * d]`` -> ``[heads, n, d]`` (a view)."""
    return rows.view(rows.shape[0], heads, head_dim).transpose(0, 1)


def _attention_per_example(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: _Layout, heads: int,
                           rank: bool, scratch: _Scratch) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """``(context [T, H], importance [B, n] or None)`` from packed ``[T, H]`` queries, keys and values,
    one example (and at most :data:`CHUNK_BYTES` of heads) at a time.

    Each example attends over its own tokens only, so no padding is computed and no mask is
    needed: the same numbers as the batched path, which masks the padding out.
    """
    hidden = q.shape[1]
    head_dim = hidden // heads
    scale = 1.0 / math.sqrt(head_dim)
    context = q.new_empty(q.shape[0], hidden)
    importance = q.new_zeros(len(layout.lengths), layout.width) if rank else None
    start = 0
    for b, n in enumerate(layout.lengths):
        rows = slice(start, start + n)
        qb, kb, vb = (_heads(t[rows], heads, head_dim) for t in (q, k, v))
        out = context[rows].view(n, heads, head_dim)
        group = max(1, min(heads, CHUNK_BYTES // max(1, n * n * q.element_size())))
        for first in range(0, heads, group):
            part = slice(first, min(heads, first + group))
            shape = (part.stop - first, n, n)
            scores = torch.matmul(qb[part], kb[part].transpose(-1, -2), out=scratch.get(0, shape, q)).mul_(scale)
            probs = torch.softmax(scores, dim=-1, out=scratch.get(1, shape, q))
            out[:, part] = torch.matmul(probs, vb[part]).transpose(0, 1)
            if rank:
                importance[b, :n] += probs.view(-1, n).sum(dim=0)
        start += n
    if rank:
        # The mean over heads and (real) query rows that the reference takes.
        importance.div_(layout.query_valid.sum(dim=1, keepdim=True) * heads)
    return context, importance


def _attention(layer, packed: torch.Tensor, layout: _Layout, rank: bool, scratch: Optional[_Scratch] = None):
    """Self-attention of one layer on packed tokens: ``(attention_output [T, H], importance)``.

    ``importance`` (only when ``rank``) is ``[B, n]``: attention probabilities averaged over
    heads and the real query rows (padding rows are an artefact of batching, so they do not count).
    """
    self_attention = layer.attention.self
    heads = self_attention.num_attention_heads
    head_dim = self_attention.attention_head_size
    hidden = heads * head_dim
    batch, width = len(layout.lengths), layout.width
    q, k, v = linear_split((self_attention.query, self_attention.key, self_attention.value), packed)
    if _per_example(layout, heads, rank, packed):
        context, importance = _attention_per_example(q, k, v, layout, heads, rank, scratch or _Scratch())
        return _add_norm(layer.attention.output, context, packed), importance
    # three [T, H] -> three [B, heads, n, d]
    q, k, v = (_to_grid(t, layout).view(batch, width, heads, head_dim).transpose(1, 2) for t in (q, k, v))
    importance = None
    if _materialised(rank):
        scores = torch.matmul(q, k.transpose(-1, -2)).mul_(1.0 / math.sqrt(head_dim))
        if layout.key_bias is not None:
            scores.add_(layout.key_bias)
        probs = torch.softmax(scores, dim=-1)
        del scores
        context = torch.matmul(probs, v)
        if rank:
            # Sum over heads and real query rows, then the mean the reference takes.
            summed = torch.matmul(layout.query_valid[:, None, None, :], probs).sum(dim=(1, 2))
            importance = summed / (layout.query_valid.sum(dim=1, keepdim=True) * heads)
    else:
        context = F.scaled_dot_product_attention(q, k, v, attn_mask=layout.key_bias)
    context = _from_grid(context.transpose(1, 2).reshape(batch, width, hidden), layout)
    return _add_norm(layer.attention.output, context, packed), importance


def _add_norm(block, hidden: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """A stock ``*SelfOutput``/``*Output`` block in eval mode: dense, (dropout, the identity), add, LayerNorm."""
    return block.LayerNorm(linear(block.dense, hidden) + residual)


def _feed_forward(layer, packed: torch.Tensor) -> torch.Tensor:
    intermediate = layer.intermediate
    activated = linear_activation(intermediate.dense, packed, intermediate.intermediate_act_fn)
    return _add_norm(layer.output, activated, packed)


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
    plan: CompactPlan,
    input_ids: torch.Tensor,
    attention_mask: Optional[torch.Tensor] = None,
    token_type_ids: Optional[torch.Tensor] = None,
) -> CompactOutput:
    """Logits of ``model`` (a ``ToPClassifier``) with the tokens ``plan`` prunes removed.

    Inputs are right-padded as a tokenizer makes them. One host sync per call (the input
    lengths), none per layer.
    """
    reason = unsupported_reason(model)
    if reason is not None:
        raise ValueError(reason)
    if plan.pruning and tuple(model.prune_locations) != plan.prune_locations:
        raise ValueError(
            f"the plan prunes at {list(plan.prune_locations)} but the model at {list(model.prune_locations)}"
        )
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    family = model._family
    layers = family.layers

    with torch.no_grad():
        lengths = attention_mask.sum(dim=1).tolist()  # the one host sync
        width = max(lengths)
        if width > plan.max_length:
            raise ValueError(f"an input has {width} tokens but the plan was built for at most {plan.max_length}")
        embedded = family.embed(
            input_ids[:, :width], None if token_type_ids is None else token_type_ids[:, :width]
        )
        dtype, device = embedded.dtype, embedded.device
        if plan.pruning and dtype != plan.dtype:
            raise ValueError(f"the plan was built for {plan.dtype} but the model computes in {dtype}")

        layer_lengths, prune_after = plan.layer_lengths(lengths, len(layers))
        kept_lengths = torch.tensor(layer_lengths, dtype=torch.long).t().contiguous()
        layouts, kept_lengths = _layouts(layer_lengths, kept_lengths, device, dtype)

        first = layouts[0]
        packed = _from_grid(embedded, first) if first.ragged else embedded.reshape(-1, embedded.shape[-1])
        scratch = _Scratch()
        for index, layer in enumerate(layers):
            layout = layouts[index]
            location = prune_after.get(index)
            attended, importance = _attention(layer, packed, layout, rank=location is not None, scratch=scratch)
            if location is not None:
                rows = _survivor_rows(importance, layout, layouts[index + 1],
                                      plan.token_z[location], plan.pruner_z[location])
                attended = attended.index_select(0, rows)
            packed = _feed_forward(layer, attended)
        cls = packed.index_select(0, layouts[-1].starts)
        logits = family.head(cls[:, None, :])
    return CompactOutput(logits=logits, kept_lengths=kept_lengths.to(input_ids.device))


def prediction_agreement(a: torch.Tensor, b: torch.Tensor, regression_tolerance: float = 1e-2) -> Sequence[bool]:
    """Per example: same argmax class (classification) or within a tolerance (regression)."""
    if a.shape[-1] == 1:
        return ((a[:, 0] - b[:, 0]).abs() <= regression_tolerance).tolist()
    return (a.argmax(dim=-1) == b.argmax(dim=-1)).tolist()
