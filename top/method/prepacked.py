"""Linear layers on prepacked weights, for CPU inference on few rows.

A linear layer on a few dozen rows is bound by reading its weight, not by arithmetic: bert-base
reads 340 MB of weight matrices per forward pass, whatever the number of tokens. ``F.linear``
(MKL's sgemm in the CPU wheels) reads them at 6-10 GB/s at such row counts on the 2-core
machines we measure on; oneDNN's kernel on a weight reordered once into its blocked layout
reads them 2-3x faster at up to ~64 rows and loses that edge from ~200 rows on (measured with
``torch.ops.mkldnn._linear_pointwise``, torch 2.13, 2-core AMD EPYC Zen 3). Pruning shrinks the
row counts, so compact inference is where this matters most; :func:`linear` picks the kernel by
the row count.

The packed copy of each weight is made on first use and kept in a weak-keyed cache next to the
module (``prepack`` makes them all at once), so the model itself is never changed: it can still
be trained, saved and moved. A weight changed in place (an optimiser step) or replaced is seen
by its version counter and repacked. The cost is memory: a packed copy is as large as the
weight. ``TOP_PREPACK=0`` turns it off; torch builds without the oneDNN ops (torch 1.12 has no
``_linear_pointwise``) fall back to ``F.linear``.

Numerically the two kernels differ in summation order only (float32, ~1e-6 relative).
"""

from __future__ import annotations

import os
import weakref
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

MAX_ROWS = 128  # at most this many rows take the prepacked kernel
ENV = "TOP_PREPACK"

_CACHE: "weakref.WeakKeyDictionary[nn.Linear, Tuple[Tuple[int, int], Optional[torch.Tensor]]]" = (
    weakref.WeakKeyDictionary()
)
_OPS_PRESENT: Optional[bool] = None


def _ops_present() -> bool:
    global _OPS_PRESENT
    if _OPS_PRESENT is None:
        try:
            ops = torch.ops.mkldnn
            _OPS_PRESENT = bool(torch.backends.mkldnn.is_available()) and all(
                callable(getattr(ops, name)) for name in ("_reorder_linear_weight", "_linear_pointwise")
            )
        except (AttributeError, RuntimeError):
            _OPS_PRESENT = False
    return _OPS_PRESENT


def enabled() -> bool:
    """Whether this torch has the kernels and ``TOP_PREPACK`` does not turn them off."""
    return os.environ.get(ENV, "1").strip() not in ("0", "false", "no", "off") and _ops_present()


def _key(module: nn.Linear) -> Tuple[int, int]:
    weight = module.weight
    return weight.data_ptr(), weight._version


def packed_weight(module: nn.Linear) -> Optional[torch.Tensor]:
    """The prepacked copy of ``module.weight`` (made now if missing or stale), or None if it cannot be made."""
    key = _key(module)
    cached = _CACHE.get(module)
    if cached is not None and cached[0] == key:
        return cached[1]
    packed = None
    weight = module.weight
    if weight.device.type == "cpu" and weight.dtype == torch.float32 and weight.dim() == 2:
        try:
            with torch.no_grad():
                packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), None)
        except RuntimeError:
            packed = None
    _CACHE[module] = (key, packed)
    return packed


def linear(module: nn.Linear, rows: torch.Tensor) -> torch.Tensor:
    """``module(rows)`` for 2-D ``rows``, on the prepacked kernel when it is the faster one."""
    if (
        rows.dim() == 2
        and rows.shape[0] <= MAX_ROWS
        and rows.device.type == "cpu"
        and rows.dtype == torch.float32
        and not (torch.is_grad_enabled() and (rows.requires_grad or module.weight.requires_grad))
        and enabled()
    ):
        packed = packed_weight(module)
        if packed is not None:
            return torch.ops.mkldnn._linear_pointwise(rows, packed, module.bias, "none", [], "")
    return F.linear(rows, module.weight, module.bias)


def prepack(model: nn.Module) -> int:
    """Make the packed copy of every linear layer of ``model`` now; the bytes they take (0 when off)."""
    if not enabled():
        return 0
    total = 0
    for module in model.modules():
        if isinstance(module, nn.Linear) and packed_weight(module) is not None:
            total += module.weight.numel() * module.weight.element_size()
    return total


class PrepackedLinear(nn.Module):
    """A stand-in for an ``nn.Linear`` that runs :func:`linear` on its (shared) weights."""

    def __init__(self, inner: nn.Linear):
        super().__init__()
        self.inner = inner

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        shape = hidden.shape
        out = linear(self.inner, hidden.reshape(-1, shape[-1]))
        return out.reshape(*shape[:-1], out.shape[-1])


def with_prepacked_linears(model: nn.Module) -> nn.Module:
    """Swap every ``nn.Linear`` of ``model`` (in place) for a :class:`PrepackedLinear` around it.

    For a baseline that runs the dense model on the same kernels as compact inference; the
    state dict's keys change (``.inner.``), so use it on a model of its own, for inference.
    """
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                setattr(parent, name, PrepackedLinear(child))
    prepack(model)
    return model
