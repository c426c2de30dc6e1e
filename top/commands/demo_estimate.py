"""``top demo``'s time estimate: the training calls' progress callback, which prints the total time."""

from __future__ import annotations

import time
from typing import Any, Dict, List

from top.commands.demo_recipe import ETA_AFTER_STEPS, ETA_FROM_STEP, ETA_UNITS
from top.training.progress import Progress


class TimeEstimate:
    """Listens to the training commands' steps; after the first few of each, prints the demo's total time.

    The first estimate comes after the fine-tune's first steps (or ToP's, when the teacher is reused);
    ToP's first steps refine it. ``estimates`` keeps each (when, minutes) for the report.
    """

    def __init__(self, recipe: Dict[str, Any], started: float, write=print):
        finetune_steps = -(-recipe["n_train"] // recipe["batch_size"])
        train_steps = -(-recipe["n_train"] // recipe["prune_batch_size"])
        self.recipe = recipe
        self.started = started
        self.write = write
        self.total = {"finetune": finetune_steps * recipe["finetune_epochs"],
                      "train": int(-(-recipe["epochs"] * train_steps // 1))}
        self.evals = {"finetune": recipe["finetune_epochs"], "train": -(-self.total["train"] // recipe["eval_steps"])}
        self.step_seconds: Dict[str, float] = {}
        self.marks: Dict[str, float] = {}
        self.skipped: set = set()
        self.estimates: List[Dict[str, Any]] = []

    def __call__(self, event: Progress) -> None:
        if event.kind != "step":
            return
        command, step = event.command, event.step
        now = time.perf_counter()
        if step == ETA_FROM_STEP:
            self.marks[command] = now
        elif step == ETA_AFTER_STEPS and command in self.marks:
            self.step_seconds[command] = (now - self.marks[command]) / (ETA_AFTER_STEPS - ETA_FROM_STEP)
            self.report(command, step, now)

    def finetune_done(self) -> None:
        """The teacher is ready (trained or reused): no fine-tuning left to wait for."""
        self.total["finetune"] = self.evals["finetune"] = 0

    def report(self, command: str, step: int, now: float) -> None:
        # A ToP step of the recipe's batch costs about train_step x batch / 32 fine-tune steps.
        train_units = ETA_UNITS["train_step"] * self.recipe["prune_batch_size"] / self.recipe["batch_size"]
        unit = self.step_seconds.get("finetune") or self.step_seconds["train"] / train_units
        train_step = self.step_seconds.get("train", unit * train_units)
        evaluation = self.recipe["n_select"] * ETA_UNITS["dev_example"] * unit  # one of the training commands'
        final_evaluation = 3 * self.recipe["n_dev"] * ETA_UNITS["dev_example"] * unit
        done = {"finetune": step if command == "finetune" else self.total["finetune"], "train": 0}
        if command == "train":
            done["train"] = step
        left = {
            "fine-tune": (self.total["finetune"] - done["finetune"]) * unit
            + (self.evals["finetune"] if command == "finetune" else 0) * evaluation,
            "pruning": (self.total["train"] - done["train"]) * train_step + self.evals["train"] * evaluation
            + (0 if command == "train"
               else -(-self.recipe["n_train"] // self.recipe["batch_size"]) * ETA_UNITS["cache_batch"] * unit),
            "evaluation and benchmarks": ETA_UNITS["after_training"] * unit + final_evaluation,
        }
        minutes = (now - self.started + sum(left.values())) / 60
        self.estimates.append({"after": command, "step": step, "minutes": round(minutes, 1)})
        parts = ", ".join(f"{name} ~{seconds / 60:.1f}" for name, seconds in left.items())
        self.write(f"demo: about {minutes:.0f} minutes in all, estimated after {step} {command} steps "
                   f"(minutes left: {parts})")
