"""Whether a training run's batches fit in memory, estimated before the run starts.

At 512 tokens a step's activations, not the weights, fill the memory: every layer keeps for its
backward pass a few ``[batch, tokens, hidden]`` and ``[batch, tokens, intermediate]`` tensors and,
where it materialises its attention, ``[batch, heads, tokens, tokens]`` ones. The count follows
Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer Models"), in
float32: per token and layer ``34 hidden + 8 intermediate`` bytes, per attention entry 9 bytes
(softmax output, dropout mask and dropout output). Weights take 16 bytes a parameter for the
student (weights, gradients, AdamW's two moments) and 4 for a teacher held in memory.

``PEAK_FACTOR`` scales that count to the peak resident memory measured for ``top train`` (teacher
cache on, eager attention on the CPU, where the fused kernel materialises it too in training):
on the AMD EPYC Zen 4 CPU of the development machine, torch 2.13, batch 16 x 512, 5 and 4 steps
(pruning in the last 3 and 2), MiniLM-L6 (6 x 384) peaked at 6.51 GB (6.06 GiB) against 5.49 GB
counted (1.19x), and a randomly initialised BERT-base shape (12 x 768) at 17.16 GB (15.98 GiB)
against 13.68 GB (1.25x), the allocator's free lists included.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

# bytes per token and layer, per unit of hidden and of intermediate width (float32)
HIDDEN_BYTES, INTERMEDIATE_BYTES = 34, 8
# bytes per entry of a materialised attention map: softmax output, dropout mask, dropout output
ATTENTION_ENTRY_BYTES = 9
STUDENT_BYTES_PER_PARAMETER = 16  # weights, gradients, AdamW's exp_avg and exp_avg_sq
TEACHER_BYTES_PER_PARAMETER = 4
RUNTIME_BYTES = 1 << 30  # Python, torch, the tokenizer and the encoded data of a modest training set
PEAK_FACTOR = 1.25  # measured peak / count: the larger of 1.19 and 1.25 (see the module docstring)
GIB = float(1 << 30)


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
    activations: int
    weights: int
    runtime: int

    @property
    def total(self) -> int:
        """The expected peak: the count scaled by ``PEAK_FACTOR``."""
        return int(PEAK_FACTOR * (self.activations + self.weights + self.runtime))


def parameter_count(config: Any) -> int:
    """Parameters of a BERT-style classifier from its config (embeddings, layers, pooler, head)."""
    hidden, layers = int(config.hidden_size), int(config.num_hidden_layers)
    intermediate = int(config.intermediate_size)
    embeddings = (int(config.vocab_size) + int(config.max_position_embeddings)
                  + int(getattr(config, "type_vocab_size", 2))) * hidden + 2 * hidden
    layer = 4 * (hidden * hidden + hidden) + 2 * hidden * intermediate + intermediate + hidden + 4 * hidden
    head = hidden * hidden + hidden + (hidden + 1) * int(getattr(config, "num_labels", 2))
    return embeddings + layers * layer + head


def activation_bytes(config: Any, batch_size: int, length: int, materialised_layers: Optional[int] = None) -> int:
    """Bytes a training step keeps for its backward pass at ``batch_size`` x ``length`` tokens.

    ``materialised_layers``: how many layers keep their attention maps (default: every layer,
    as on the CPU; on a GPU a layer running the fused kernel keeps none).
    """
    hidden, layers = int(config.hidden_size), int(config.num_hidden_layers)
    heads, intermediate = int(config.num_attention_heads), int(config.intermediate_size)
    materialised = layers if materialised_layers is None else int(materialised_layers)
    tokens = batch_size * length
    per_layer = tokens * (HIDDEN_BYTES * hidden + INTERMEDIATE_BYTES * intermediate)
    attention = batch_size * heads * length * length * ATTENTION_ENTRY_BYTES
    return layers * per_layer + materialised * attention


def training_estimate(config: Any, batch_size: int, length: int, teacher_config: Any = None,
                      materialised_layers: Optional[int] = None) -> MemoryEstimate:
    """The expected peak of a training step: the student's activations and weights, a teacher held in
    memory (None: none, as with the teacher cache once built), the runtime."""
    weights = STUDENT_BYTES_PER_PARAMETER * parameter_count(config)
    if teacher_config is not None:
        weights += TEACHER_BYTES_PER_PARAMETER * parameter_count(teacher_config)
    return MemoryEstimate(activation_bytes(config, batch_size, length, materialised_layers), weights, RUNTIME_BYTES)


def available_bytes(device: str = "cpu") -> Optional[int]:
    """Memory free for the run: the GPU's free memory, or the kernel's MemAvailable; None if unknown."""
    if str(device).startswith("cuda"):
        import torch

        try:
            return int(torch.cuda.mem_get_info(torch.device(device))[0])
        except (RuntimeError, AssertionError):
            return None
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def memory_warning(estimate: MemoryEstimate, available: Optional[int], batch_size: int, length: int,
                   model: str) -> Optional[str]:
    """One sentence when the estimated peak exceeds ``available`` bytes, naming the fix; else None."""
    if available is None or estimate.total <= available:
        return None
    activations_per_example = estimate.activations / batch_size
    fixed = estimate.total - PEAK_FACTOR * estimate.activations
    fitting = int((available - fixed) / (PEAK_FACTOR * activations_per_example)) if available > fixed else 0
    fix = (f"give --batch-size {fitting} or less" if fitting >= 1
           else "give a shorter --max-seq-length or a smaller model")
    return (
        f"Training {model} at batch {batch_size} x {length} tokens needs about {estimate.total / GIB:.1f} GiB "
        f"({estimate.activations / GIB:.1f} GiB of it activations), more than the {available / GIB:.1f} GiB free "
        f"here; {fix}."
    )
