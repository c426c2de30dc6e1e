"""``--device`` made a torch device: the one resolver every job calls, with one sentence when no GPU is there."""

from __future__ import annotations

from typing import Optional

import torch

from top.errors import UserError
from top.settings.common import DEVICES, resolve_device_name


def resolve_device(name: str, local_rank: Optional[int] = None) -> torch.device:
    """The torch device a ``--device`` value names (``auto``: a visible GPU, else the CPU; under torchrun,
    this process's GPU); ``cuda`` without a GPU is an error."""
    if name not in DEVICES:
        raise UserError(f"Unknown device {name!r}; pass --device {', '.join(DEVICES)}.")
    name = resolve_device_name(name, torch.cuda.is_available())
    if name == "cuda":
        if not torch.cuda.is_available():
            raise UserError("--device cuda was given but no CUDA GPU is visible; pass --device cpu or expose a GPU.")
        return torch.device("cuda") if local_rank is None else torch.device("cuda", local_rank)
    return torch.device("cpu")
