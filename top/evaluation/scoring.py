"""The one scoring loop: a model's forward pass over an encoded dev set, batch by batch, in order.

``top eval``, ``top finetune`` and ``top train`` score their dev sets through ``predict``; what
each needs besides the logits (sparsities, MACs, kept lengths) it measures per batch.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, List, Optional

import torch

from top.data import batching
from top.data.batching import Encoded, as_encoded_set, batches
from top.method.modeling import require_finite_logits  # noqa: F401 - scoring's check, stated there

Batch = Dict[str, torch.Tensor]


@dataclasses.dataclass
class Predictions:
    """Logits and labels of every example in order (float32 and the labels' dtype, on the CPU),
    and what ``measure`` returned for each batch."""

    logits: torch.Tensor
    labels: torch.Tensor
    per_batch: List[Any]


@torch.no_grad()
def predict(
    forward: Callable[[Batch], Any],
    encoded: Encoded,
    batch_size: int,
    device: torch.device,
    *,
    trim: bool = True,
    measure: Optional[Callable[[Batch, Any], Any]] = None,
    progress: Optional[str] = None,
) -> Predictions:
    """Run ``forward`` on consecutive batches of ``encoded`` (moved to ``device``).

    ``trim`` cuts each batch to its longest member, which changes nothing for a dense model. The
    faithful evaluation of a pruned one must not trim: there every padded row counts in the
    importance scores, as in ``top eval`` and the original's evaluation. ``measure(batch, output)``
    sees each batch and its output. ``progress`` names a progress bar over the batches (None: no bar).
    """
    from tqdm.auto import tqdm

    logits, labels, per_batch = [], [], []
    encoded = as_encoded_set(encoded)
    total = (len(encoded) + batch_size - 1) // max(1, batch_size)
    for batch in tqdm(batches(encoded, batch_size), total=total, desc=progress, disable=progress is None,
                      unit="batch"):
        batch = batching.to_device(batching.shorten(batch) if trim else batch, device)
        output = forward(batch)
        logits.append((output.logits if hasattr(output, "logits") else output).float().cpu())
        labels.append(batch["labels"].cpu())
        if measure is not None:
            per_batch.append(measure(batch, output))
    return Predictions(torch.cat(logits), torch.cat(labels), per_batch)
