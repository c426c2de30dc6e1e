"""The forward pass that ``top export`` traces: a ToP model with the pruned tokens removed, in plain tensor ops.

:class:`ExportForward` is written around the stock Hugging Face sub-modules (embeddings, each
layer's query/key/value, attention output, intermediate and output, the pooler and classifier).
At a layer whose attention ranks tokens it computes the importance (attention probabilities
averaged over heads and real query rows, [CLS] column excluded), asks
:func:`top.method.pruning.prune_step` which tokens survive, and gathers the survivors in their
original order, so the feed-forward of that layer and every later layer run on fewer tokens.
Nothing is decided on the host: the widths are computed in the graph, so one graph serves any
sequence length and any batch size. A batch of several examples is run as the reference compact
mode runs it: after each prune step it is re-padded to its longest survivor row, and padding is
masked. It is the third statement of the pruned forward pass, beside the masked one of
``top.method.modeling`` and the compact one of ``top.method.compact``; the export checks it
against the compact one before it writes anything.
"""

from __future__ import annotations

import math
from typing import Dict, Optional

import torch
from torch import nn

from top.method.compact import survivor_table
from top.method.modeling import MASK_VALUE
from top.method.pruning import prune_step
from top.storage.model_files import max_input_tokens

# ----------------------------------------------------------------------------------------------
# The forward pass that is traced


def _positions(mask_row: torch.Tensor) -> torch.Tensor:
    """``[n]`` int64 0..n-1, built from a tensor so the traced graph keeps ``n`` dynamic."""
    return torch.ones_like(mask_row).cumsum(0) - 1


def _first_columns(tensor: torch.Tensor, width: torch.Tensor) -> torch.Tensor:
    """``tensor[:, :width]`` for a 0-d tensor ``width``, without turning it into a constant."""
    columns = torch.nonzero(_positions(tensor[0]) < width).squeeze(1)
    return tensor.index_select(1, columns)


class ExportForward(nn.Module):
    """Logits of a ``ToPClassifier`` with the pruned tokens removed, traceable.

    ``token_z``/``pruner_z`` None gives the dense model; ``trim`` cuts the batch to its longest
    real example first (the dense baseline keeps its padding, as a stock export does);
    ``fused_attention`` exports the attention of every layer that ranks nothing as onnxruntime's
    fused ``Attention`` operator (:class:`FusedSelfAttention`).
    """

    def __init__(self, model, token_z: Optional[torch.Tensor], pruner_z: Optional[torch.Tensor],
                 trim: bool = True, fused_attention: bool = False):
        super().__init__()
        self.model = model
        self.family = model._family
        self.trim = trim
        self.fused_attention = fused_attention
        self.prune_after: Dict[int, int] = {}
        if token_z is not None:
            token_z = token_z.detach().float().cpu()
            pruner_z = torch.ones(token_z.shape[0]) if pruner_z is None else pruner_z.detach().float().cpu()
            self.register_buffer("token_z", token_z)
            self.register_buffer("pruner_z", pruner_z)
            for location, index in enumerate(model.prune_locations):
                if location_prunes(token_z[location], pruner_z[location], max_input_tokens(model.config)):
                    self.prune_after[index - 1] = location

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        if self.trim:
            width = attention_mask.sum(dim=1).max()
            input_ids = _first_columns(input_ids, width)
            attention_mask = _first_columns(attention_mask, width)
            if token_type_ids is not None:
                token_type_ids = _first_columns(token_type_ids, width)
        hidden = self.family.embed(input_ids, token_type_ids)
        alive = attention_mask.to(hidden.dtype)  # [B, n], [CLS] included
        for index, layer in enumerate(self.family.layers):
            location = self.prune_after.get(index)
            if location is None and self.fused_attention:
                attended, importance = _fused_attention(layer, hidden, alive), None
            else:
                attended, importance = _attention(layer, hidden, alive, rank=location is not None)
            if location is not None:
                attended, alive = _keep_survivors(
                    attended, alive, importance, self.token_z[location], self.pruner_z[location]
                )
            hidden = layer.output(layer.intermediate(attended), attended)
        return self.family.head(hidden[:, :1])


def _masked_attention(q, k, v, alive: torch.Tensor, head_dim: int):
    """``(probabilities, context)`` of scaled dot-product attention over ``[batch, heads, n, d]``
    queries, keys and values, keys that are not ``alive`` masked with ``MASK_VALUE``."""
    key_bias = ((1.0 - alive) * MASK_VALUE)[:, None, None, :]
    probs = torch.softmax(torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(head_dim)) + key_bias, dim=-1)
    return probs, torch.matmul(probs, v)


def _attention(layer, hidden: torch.Tensor, alive: torch.Tensor, rank: bool):
    """The stock projections around a written-out scaled dot-product; importance when ``rank``."""
    self_attention = layer.attention.self
    heads = self_attention.num_attention_heads
    head_dim = self_attention.attention_head_size
    batch = hidden.shape[0]

    def split(projection):
        return projection(hidden).reshape(batch, -1, heads, head_dim).transpose(1, 2)

    q, k, v = split(self_attention.query), split(self_attention.key), split(self_attention.value)
    probs, context = _masked_attention(q, k, v, alive, head_dim)
    context = context.transpose(1, 2).reshape(batch, -1, heads * head_dim)
    importance = None
    if rank:
        # Mean over heads and real query rows, as the reference compact mode takes it.
        summed = (probs.sum(dim=1) * alive[:, :, None]).sum(dim=1)
        importance = summed / (alive.sum(dim=1, keepdim=True) * heads)
    return layer.attention.output(context, hidden), importance


class FusedSelfAttention(torch.autograd.Function):
    """Multi-head self-attention that exports as one ``com.microsoft::Attention`` node.

    That is the operator onnxruntime's transformer optimizer makes of a stock BERT export (the
    query, key and value products in one, then masked softmax attention). Run eagerly, as while
    tracing, it computes the same maths written out. ``weight`` is ``[hidden, 3 * hidden]`` (query,
    key, value columns), ``alive`` ``[batch, n]`` 1/0; masked keys get ``MASK_VALUE``, which is the
    operator's own mask filter value (-10000).
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, alive, heads: int, head_dim: int):
        batch, width = hidden.shape[0], hidden.shape[1]
        size = heads * head_dim  # Python ints: torch 1.12's tracer turns shape arithmetic into tensors
        qkv = torch.matmul(hidden, weight) + bias
        q, k, v = qkv.reshape(batch, width, 3, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        return _masked_attention(q, k, v, alive, head_dim)[1].transpose(1, 2).reshape(batch, width, size)

    @staticmethod
    def symbolic(g, hidden, weight, bias, alive, heads, head_dim):
        mask = g.op("Cast", alive, to_i=6)  # int32 1/0: the operator's raw key mask
        out = g.op("com.microsoft::Attention", hidden, weight, bias, mask, num_heads_i=int(heads),
                   mask_filter_value_f=float(MASK_VALUE))
        out.setType(hidden.type())  # [batch, n, hidden] float, as its input: tells the exporter's shape inference
        return out


def _fused_attention(layer, hidden: torch.Tensor, alive: torch.Tensor) -> torch.Tensor:
    """A layer's attention block (self-attention, output projection, add and LayerNorm), fused self-attention."""
    self_attention = layer.attention.self
    parts = (self_attention.query, self_attention.key, self_attention.value)
    weight = torch.cat([part.weight.t() for part in parts], dim=1)
    bias = torch.cat([part.bias for part in parts])
    context = FusedSelfAttention.apply(hidden, weight, bias, alive, self_attention.num_attention_heads,
                                       self_attention.attention_head_size)
    return layer.attention.output(context, hidden)


def _keep_survivors(hidden, alive, importance, bin_gates, layer_gate):
    """Survivors of every row moved to the front in their original order, cut to the longest row."""
    keep = prune_step(importance[:, 1:], alive[:, 1:], bin_gates, layer_gate) > 0
    keep = torch.cat([alive[:, :1] > 0, keep], dim=1)
    batch, width = keep.shape[0], keep.shape[1]
    positions = _positions(keep[0].long()).to(hidden.dtype)
    # Distinct keys: survivors above the dropped, earlier above later, so a sort is stable.
    key = keep.to(hidden.dtype) * (2.0 * width) - positions
    order = torch.sort(key, dim=1, descending=True).indices
    order = _first_columns(order, keep.sum(dim=1).max())
    offsets = _positions(keep[:, 0].long())[:, None] * width
    rows = (order + offsets).reshape(-1)
    hidden = hidden.reshape(-1, hidden.shape[-1]).index_select(0, rows).reshape(batch, -1, hidden.shape[-1])
    alive = torch.gather(keep.to(alive.dtype), 1, order)
    return hidden, alive


def location_prunes(bin_gates: torch.Tensor, layer_gate: torch.Tensor, longest: int) -> bool:
    """Whether a prune location can drop a token at any input length (else the graph skips it)."""
    table = survivor_table(bin_gates[None], layer_gate.reshape(1), max(longest - 1, 1))[0]
    return any(kept < alive for alive, kept in enumerate(table))
