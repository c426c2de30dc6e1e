"""Who is told of each finished training step (the demo's time estimate listens)."""

from __future__ import annotations

from typing import Callable, List

# Told of every finished training step as (command, step, total_steps); the demo's time estimate listens.
STEP_LISTENERS: List[Callable[[str, int, int], None]] = []


def step_finished(command: str, step: int, total_steps: int) -> None:
    for listener in list(STEP_LISTENERS):
        listener(command, step, total_steps)
