"""Peak memory of one forward pass per method: a fresh subprocess's resident-set rise on the CPU,
``torch.cuda.max_memory_allocated`` on a GPU."""

from __future__ import annotations

import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch

from top.evaluation.torch_timing import PREPACKED, load_models, method_functions
from top.method.checkpoint import load_checkpoint
from top.method.compact import CompactPlan
from top.method.prepacked import prepack, with_prepacked_linears
from top.storage.safeload import read_tree, write_tree

logger = logging.getLogger(__name__)


def _read_status_kb(field: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def memory_probe_main(argv: Optional[List[str]] = None) -> None:
    """Child process: load one method, run it once on the saved batch, print the peak rise in MB."""
    checkpoint_path, method, batch_path, threads = (argv or sys.argv[1:])[:4]
    torch.set_num_threads(int(threads))
    checkpoint = load_checkpoint(checkpoint_path)
    dense, top_model = load_models(checkpoint, need_dense=method != "compact", need_top=method == "compact")
    batch = read_tree(batch_path, what="benchmark batch")
    plan = CompactPlan.from_gates(checkpoint.token_z, checkpoint.pruner_z, checkpoint.prune_locations,
                                  batch["full"]["input_ids"].shape[1])
    # Packed weights are made before the measurement, as the model's are loaded before it:
    # bench.json reports their size apart (prepacked_weight_mb).
    if top_model is not None:
        prepack(top_model)
    dense_prepacked = with_prepacked_linears(dense) if method == PREPACKED else None
    functions = method_functions(dense, top_model, plan, dense_prepacked)
    before = _read_status_kb("VmRSS")
    how = "vmhwm" if before is not None and _reset_peak_rss() else "ru_maxrss"
    if how == "ru_maxrss":  # the lifetime peak, which loading may already have set
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with torch.no_grad():
        functions[method](batch)
    after = _read_status_kb("VmHWM") if how == "vmhwm" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"peak_mb": max(0, after - before) / 1024.0, "how": how}))


def measure_peak_memory(device: str, checkpoint, functions, batch,
                        threads: int) -> Tuple[Dict[str, Optional[float]], str]:
    """Peak memory (MB) one forward pass on ``batch`` adds, per method."""
    if device == "cuda":
        peaks = {}
        with torch.no_grad():
            for name, fn in functions.items():
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
                fn(batch)
                torch.cuda.synchronize()
                peaks[name] = (torch.cuda.max_memory_allocated() - base) / 2**20
        return peaks, "torch.cuda.max_memory_allocated rise during one batch"
    root = str(Path(__file__).resolve().parents[2])  # the folder holding the top package
    code = (f"import sys; sys.path.insert(0, {root!r}); "
            "from top.evaluation.memory_probe import memory_probe_main; memory_probe_main()")
    peaks, how = {}, "vmhwm"
    with tempfile.TemporaryDirectory() as tmp:
        batch_path = os.path.join(tmp, "batch.safetensors")
        write_tree(batch_path, batch)
        for name in functions:
            result = subprocess.run(
                [sys.executable, "-c", code, str(checkpoint.path), name, batch_path, str(threads)],
                capture_output=True, text=True,
            )
            try:
                report = json.loads(result.stdout.strip().splitlines()[-1])
                peaks[name], how = report["peak_mb"], report["how"]
            except (IndexError, ValueError, KeyError):
                logger.warning("memory probe for %s failed: %s", name, result.stderr.strip()[-300:])
                peaks[name] = None
    described = {
        "vmhwm": "peak resident set rise (VmHWM after clear_refs) during one batch, fresh process",
        "ru_maxrss": "ru_maxrss rise during one batch, fresh process (lifetime peak; may read low)",
    }[how]
    return peaks, described
