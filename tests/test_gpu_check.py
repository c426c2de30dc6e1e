"""scripts/gpu_check.py (`nox -s gpu`): what of it runs without a GPU. It refuses in one sentence, and
its count of host waits sees a synchronisation per layer where one happens and none in compact inference."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from builders import subprocess_env
from gpu_check import compact_sync_counts, count_syncs
from test_noxfile import load_noxfile

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: the script would run")
def test_without_a_gpu_the_script_refuses_in_one_sentence(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--output-dir", str(tmp_path)],
                          capture_output=True, text=True, env=subprocess_env(), timeout=300)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: nox -s gpu needs a CUDA GPU"), done.stderr
    assert not list(tmp_path.iterdir())  # nothing written


def test_the_nox_session_runs_the_script_on_the_systems_torch(monkeypatch):
    module, declared, _ = load_noxfile(monkeypatch)
    assert declared["gpu"]["venv_params"] == ["--system-site-packages"]
    calls = []

    class Session:
        posargs = ["--steps", "syncs"]

        def run(self, *args, **kwargs):
            calls.append((args, kwargs))

    monkeypatch.delenv("TOP_GPU_INSTALL", raising=False)
    module.gpu(Session())
    (args, kwargs), = calls
    assert args[:2] == ("python", str(ROOT / "scripts" / "gpu_check.py")) and args[2:] == ("--steps", "syncs")
    assert kwargs["env"]["PYTHONPATH"] == str(ROOT)


def test_the_sync_count_sees_a_wait_per_layer():
    x = torch.ones(4)

    def per_layer():
        return [float(x.sum().item()) for _ in range(6)]  # a .item() per "layer", what compact must not do

    counts = count_syncs(per_layer, 3, "cpu")
    assert counts["aten::item"] == 6 and counts["total"] == 6


def test_compact_inference_waits_for_nothing_per_layer_here():
    """On the CPU the profiler sees no wait at all; `nox -s gpu` runs the same on cuda (one: the lengths)."""
    found = compact_sync_counts("cpu", layers=6, calls=2)
    assert found["tokens_dropped"] and found["pruning_layers"] == 4
    assert found["per_call"]["total"] == 0
