"""scripts/bench_train_step.py times the commands' own steps, not a copy of them."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from top.training import finetune
from top.training import step as step_module

ROOT = Path(__file__).resolve().parents[1]


def load_script():
    spec = importlib.util.spec_from_file_location("bench_train_step", ROOT / "scripts" / "bench_train_step.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_times_the_real_train_and_finetune_steps(tmp_path, monkeypatch):
    calls = {"train": [], "finetune": 0}
    real_train_step, real_finetune_step = step_module.ToPStep.__call__, finetune.finetune_step

    def counted_train_step(self, batch, step, *rest, teacher_out=None):
        values = real_train_step(self, batch, step, *rest, teacher_out=teacher_out)
        kind = "cached" if teacher_out is not None else "teacher"
        calls["train"].append((step, self.optimizers.pruning, self.gates.token_loga.detach().clone(), values, kind))
        return values

    def counted_finetune_step(*args):
        calls["finetune"] += 1
        return real_finetune_step(*args)

    monkeypatch.setattr(step_module.ToPStep, "__call__", counted_train_step)
    monkeypatch.setattr(finetune, "finetune_step", counted_finetune_step)
    before = torch.get_num_threads()
    try:
        code = load_script().main(
            ["--output-dir", str(tmp_path), "--layers", "3", "--hidden", "32", "--heads", "2", "--batch-size", "4",
             "--max-length", "12", "--steps", "3", "--bin-num", "5", "--topk", "3", "--threads", "1",
             "--warmup-steps", "4"]
        )
    finally:
        torch.set_num_threads(before)
    assert code == 0

    # 2 untimed + 3 timed calls of each; every ToP call prunes, at a new step index, with the teacher
    # run every step and with its outputs handed in (as from the cache).
    assert calls["finetune"] == 5
    for kind in ("teacher", "cached"):
        kept = [call for call in calls["train"] if call[4] == kind]
        assert [call[0] for call in kept] == list(range(step_module.PREPRUNING_STEPS, step_module.PREPRUNING_STEPS + 5))
        assert all(call[1] for call in kept)
        # The gate optimiser runs: once the Lagrangian's multipliers have moved off 0, so do the gate logits.
        assert not torch.equal(kept[1][2], kept[-1][2])
        # The target ramps over the warm-up as in `top train`, rather than standing at a constant.
        assert [call[3]["target"] for call in kept] == [0.5 * min(1.0, i / 4) for i in range(5)]

    result = json.loads((tmp_path / "train_step.json").read_text())
    assert result["ratio"] == pytest.approx(result["top_step_ms"] / result["finetune_step_ms"], rel=2e-3)
    assert result["ratio_cached"] == pytest.approx(result["top_step_cached_ms"] / result["finetune_step_ms"], rel=2e-3)
    assert result["timed_steps"] == 3 and result["threads"] == 1
