"""Which examples make up each training step's batch: seeded, resumable, optionally grouped by length."""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from top.data.batching import Encoded, as_encoded_set
from top.errors import UserError


class BatchOrder:
    """Which examples make up each step's batch: a seeded permutation per epoch.

    The permutation of epoch ``e`` depends only on ``(seed, e)``, so a resumed run finds the
    batch of any step without replaying the sampler. A step's global batch holds
    ``batch_size * world_size`` examples; rank ``r`` takes every ``world_size``-th of them from
    position ``r``. A final global batch too small to give every rank an example is dropped.

    After :meth:`group_by_length`, each epoch's permutation is cut into megabatches of
    ``MEGABATCH`` global batches, each sorted by length, and the resulting global batches are
    shuffled (as Hugging Face's ``LengthGroupedSampler`` groups, without its longest-first rule).
    """

    def __init__(self, num_examples: int, batch_size: int, seed: int, world_size: int = 1, rank: int = 0):
        self.num_examples = num_examples
        self.global_batch = batch_size * world_size
        self.seed = seed
        self.world_size = world_size
        self.rank = rank
        full, rest = divmod(num_examples, self.global_batch)
        self.steps_per_epoch = full + (1 if rest >= world_size else 0)
        if self.steps_per_epoch < 1:
            raise UserError(
                f"The training data has {num_examples} examples, fewer than one per process; "
                "give more examples or fewer processes."
            )

    MEGABATCH = 50
    lengths: Optional[torch.Tensor] = None

    def group_by_length(self, lengths: torch.Tensor) -> BatchOrder:
        """Batch examples of similar ``lengths`` (one per example) from now on."""
        if len(lengths) != self.num_examples:
            raise ValueError(f"{len(lengths)} lengths for {self.num_examples} examples")
        self.lengths = torch.as_tensor(lengths).long()
        return self

    def permutation(self, epoch: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 1000 + epoch)
        order = torch.randperm(self.num_examples, generator=generator)
        if self.lengths is None:
            return order
        mega = self.global_batch * self.MEGABATCH
        groups = []
        for start in range(0, self.num_examples, mega):
            group = order[start : start + mega]
            # Longest first; a stable sort keeps equal lengths in their random order.
            _, by_length = torch.sort(-self.lengths[group], stable=True)
            groups.append(group[by_length])
        grouped = torch.cat(groups)
        batches = list(torch.split(grouped, self.global_batch))
        full = self.num_examples // self.global_batch  # a smaller last batch stays last, as steps expect
        shuffled = torch.randperm(full, generator=generator).tolist() + list(range(full, len(batches)))
        return torch.cat([batches[i] for i in shuffled])

    def indices(self, step: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """This rank's example indices at ``step``, and the whole global batch's."""
        epoch, position = divmod(step, self.steps_per_epoch)
        order = self.permutation(epoch)
        chunk = order[position * self.global_batch : (position + 1) * self.global_batch]
        return chunk[self.rank :: self.world_size], chunk


def apply_length_grouping(enabled: bool, order: BatchOrder, train_set: Encoded) -> None:
    """``--group-by-length``: the batch order groups the encoded examples by their real length."""
    if enabled:
        order.group_by_length(as_encoded_set(train_set).lengths)
