"""How a training run reports its progress: a tqdm bar on stderr, log lines, and the caller's callback.

``top.train(config, callback=f)`` calls ``f(Progress(...))`` after every step and every
evaluation; the demo's time estimate is such a callback. Nothing here prints to stdout.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable, Dict, Mapping, Optional

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Progress:
    """One event of a run: a finished training step (``kind="step"``) or a scored dev set (``"evaluation"``)."""

    command: str  # "train" or "finetune"
    kind: str
    step: int
    total_steps: int
    values: Mapping[str, Any]  # the step's losses and sparsity, or the evaluation's record


Callback = Callable[[Progress], None]


class Reporter:
    """The progress bar (on stderr, hidden with ``enabled=False``) and the callback of one run."""

    def __init__(self, command: str, description: str, total_steps: int, initial: int, enabled: bool,
                 callback: Optional[Callback] = None):
        from tqdm.auto import tqdm

        self.command, self.total_steps, self.callback = command, total_steps, callback
        self.bar = tqdm(total=total_steps, initial=initial, desc=description, disable=not enabled,
                        dynamic_ncols=True)

    def step(self, step: int, values: Dict[str, float], shown: Dict[str, str]) -> None:
        self.bar.set_postfix(shown, refresh=False)
        self.bar.update(1)
        if self.callback is not None:
            self.callback(Progress(self.command, "step", step, self.total_steps, dict(values)))

    def evaluation(self, step: int, record: Dict[str, Any], line: str) -> None:
        if self.bar.disable:
            logger.info("%s", line)
        else:
            self.bar.write(line, file=self.bar.fp)  # above the bar, on its stream (stderr)
        if self.callback is not None:
            self.callback(Progress(self.command, "evaluation", step, self.total_steps, dict(record)))

    def close(self) -> None:
        self.bar.close()
