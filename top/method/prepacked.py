"""Linear layers on prepacked weights, for CPU inference.

A linear layer on a few dozen rows is bound by reading its weight, not by arithmetic: bert-base
reads 340 MB of weight matrices per forward pass, whatever the number of tokens. ``F.linear``
(MKL's sgemm in the CPU wheels) reads them at 6-10 GB/s at such row counts on the 2-core AMD
EPYC (Zen 3, AVX2, 32 MiB L3) we first measured on; oneDNN's kernel on a weight reordered once
into its blocked layout is 1.2-3x faster at 1-12 rows, 1.3-1.4x at 32, 1.05-1.2x at 96, even
around 128-160, and slower from 256 on there (weights cold, as in a model too big for the cache;
torch 2.13, ``torch.ops.mkldnn._linear_pointwise``). Where torch's kernels are AVX-512 (a Zen 4
guest, 2026-12-07) oneDNN was the faster at every row count measured, 128 to 4,096, for
MiniLM's and bert-base's shapes (1.08-1.6x), so there it takes every row count
(:func:`max_rows`). Pruning shrinks the row counts, so compact inference is where this matters
most; :func:`linear` picks the kernel by the row count. On the prepacked kernel a GELU after the
product runs inside it (:func:`linear_activation`), which saves a pass over the feed-forward's
widest activations.

The packed copy of each weight is made on first use and kept in a weak-keyed cache next to the
module (``prepack`` makes them all at once), so the model itself is never changed: it can still
be trained, saved and moved. A weight changed in place (an optimiser step) or replaced is seen
by its version counter (and its bias's) and repacked. The cost is memory: a packed copy is as large as the
weight. ``TOP_PREPACK=0`` turns it off; torch builds without the oneDNN ops (torch 1.12 has no
``_linear_pointwise``) fall back to ``F.linear``.

Numerically the two kernels differ in summation order only (float32, ~1e-6 relative).
"""

from __future__ import annotations

import functools
import os
import weakref
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

MAX_ROWS = 96  # at most this many rows take the prepacked kernel where torch's kernels are not AVX-512
EXACT_GELU = "gelu"  # the activation the prepacked kernel can run inside (erf, as F.gelu's default)
ENV = "TOP_PREPACK"

# first module -> {the modules' ids: (their weights' and biases' versions, (packed weight, bias) or None)}
_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
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


def _version(tensor: Optional[torch.Tensor]) -> Tuple[int, int]:
    return (0, 0) if tensor is None else (tensor.data_ptr(), tensor._version)


def _packed(modules: Sequence[nn.Linear]) -> Optional[Tuple[torch.Tensor, Optional[torch.Tensor]]]:
    """One packed weight, and the bias, for linear layers on the same input (their outputs side by
    side), made now if missing or stale; None if it cannot be made. Cached on the first module."""
    key = tuple(_version(m.weight) + _version(m.bias) for m in modules)
    slots = _CACHE.setdefault(modules[0], {})
    ids = tuple(id(m) for m in modules)
    cached = slots.get(ids)
    if cached is not None and cached[0] == key:
        return cached[1]
    packed = None
    weights, biases = [m.weight for m in modules], [m.bias for m in modules]
    usable = all(w.device.type == "cpu" and w.dtype == torch.float32 and w.dim() == 2 for w in weights)
    if usable and (len(modules) == 1 or all(b is not None for b in biases)):
        try:
            with torch.no_grad():
                weight = torch.cat([w.detach() for w in weights], dim=0) if len(modules) > 1 else weights[0].detach()
                bias = torch.cat([b.detach() for b in biases], dim=0) if len(modules) > 1 else biases[0]
                packed = (torch.ops.mkldnn._reorder_linear_weight(weight, None), bias)
        except RuntimeError:
            packed = None
    slots[ids] = (key, packed)
    return packed


def packed_weight(module: nn.Linear) -> Optional[torch.Tensor]:
    """The prepacked copy of ``module.weight`` (made now if missing or stale), or None if it cannot be made."""
    packed = _packed((module,))
    return None if packed is None else packed[0]


@functools.lru_cache(maxsize=None)
def max_rows() -> Optional[int]:
    """The most rows the prepacked kernel takes: every count (None) where torch's CPU kernels are AVX-512
    (``ATEN_CPU_CAPABILITY``, read once at start-up, can lower them), :data:`MAX_ROWS` elsewhere. Asked
    once per process: every linear layer of every forward pass reads it."""
    capability = torch.backends.cpu.get_cpu_capability() if hasattr(torch.backends, "cpu") else ""
    return None if str(capability).upper().startswith("AVX512") else MAX_ROWS


def kernels() -> str:
    """Which kernel :func:`linear` takes here, in words (``bench.json``, a latency model's record)."""
    if not enabled():
        return "F.linear"
    limit = max_rows()
    if limit is None:
        return "oneDNN on prepacked weights at every row count (AVX-512 kernels)"
    return f"oneDNN on prepacked weights up to {limit} rows, F.linear above"


def _prepacked_fits(rows: torch.Tensor, module: nn.Linear) -> bool:
    limit = max_rows()
    return (
        rows.dim() == 2
        and (limit is None or rows.shape[0] <= limit)
        and rows.device.type == "cpu"
        and rows.dtype == torch.float32
        and not (torch.is_grad_enabled() and (rows.requires_grad or module.weight.requires_grad))
        and enabled()
    )


def linear(module: nn.Linear, rows: torch.Tensor) -> torch.Tensor:
    """``module(rows)`` for 2-D ``rows``, on the prepacked kernel when it is the faster one."""
    return linear_split((module,), rows)[0]


def linear_activation(module: nn.Linear, rows: torch.Tensor, activation) -> torch.Tensor:
    """``activation(module(rows))``, the exact GELU inside the prepacked product where that kernel runs."""
    if _is_exact_gelu(activation):
        fused = _joint_product((module,), rows, EXACT_GELU)
        if fused is not None:
            return fused
    return activation(linear(module, rows))


def _is_exact_gelu(activation) -> bool:
    """Whether ``activation`` is ``F.gelu`` as it stands (erf), bare or in transformers' ``GELUActivation``."""
    if activation is F.gelu:
        return True
    return (type(activation).__name__ == "GELUActivation" and getattr(activation, "act", None) is F.gelu)


def linear_split(modules: Sequence[nn.Linear], rows: torch.Tensor) -> List[torch.Tensor]:
    """``[m(rows) for m in modules]``, as column views of one prepacked product when that is the faster one.

    For attention's query, key and value: at few rows one wider product reads the input once;
    at many, three plain products leave no concatenation to copy.
    """
    joint = _joint_product(modules, rows)
    if joint is None:
        return [F.linear(rows, m.weight, m.bias) for m in modules]
    return list(joint.split([m.out_features for m in modules], dim=1))


def _joint_product(modules: Sequence[nn.Linear], rows: torch.Tensor,
                   activation: str = "none") -> Optional[torch.Tensor]:
    """The modules' outputs side by side from one prepacked product (``activation``: "none" or
    :data:`EXACT_GELU`, applied inside it), or None where that kernel is not the one."""
    if _prepacked_fits(rows, modules[0]):
        packed = _packed(modules)
        if packed is not None:
            algorithm = "none" if activation == EXACT_GELU else ""
            return torch.ops.mkldnn._linear_pointwise(rows, packed[0], packed[1], activation, [], algorithm)
    return None


def prepack(model: nn.Module) -> int:
    """Make the packed copies compact inference uses for ``model`` now; the bytes they take (0 when off).

    An attention block's query, key and value get one packed copy together (:func:`linear_split`),
    every other linear layer one of its own.
    """
    if not enabled():
        return 0
    total, together = 0, set()
    for module in model.modules():
        parts = [getattr(module, name, None) for name in ("query", "key", "value")]
        if all(isinstance(part, nn.Linear) for part in parts) and _packed(parts) is not None:
            together.update(id(part) for part in parts)
            total += sum(part.weight.numel() * part.weight.element_size() for part in parts)
    for module in model.modules():
        if isinstance(module, nn.Linear) and id(module) not in together and packed_weight(module) is not None:
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
