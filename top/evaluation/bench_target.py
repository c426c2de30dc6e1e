"""``top bench`` of a checkpoint trained to a target speedup: the measured speedup beside the target and the prediction.

``top train --target-speedup`` writes ``latency_target.json`` into ``best/`` (the target, the
prediction of the evaluation that chose it, and the latency model). ``top bench`` then adds to
``bench.json`` the target, the latency model's prediction for the batches it timed (with the
checkpoint's own gates), the measured speedup over ``dense_dynamic``, and the conditions under
which the target does not apply: another batch size, runtime, device, thread count or machine
than the latency model was calibrated on, or other kernels of top's (an older top).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from top.errors import UserError
from top.method import latency
from top.method.compact import CompactPlan
from top.method.latency import LatencyModel
from top.runtime import machine

logger = logging.getLogger(__name__)

TARGET_FILE = "latency_target.json"  # written by top.training.loop
BASELINE = "dense_dynamic"  # the speedup a target is of


def read_target(checkpoint_dir: Path) -> Optional[Dict[str, Any]]:
    """The checkpoint's ``latency_target.json`` (None when it was not trained to a speedup)."""
    path = Path(checkpoint_dir) / TARGET_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        model = LatencyModel.from_record(record["latency_model"], str(record["latency_model_sha256"]), str(path))
        target = float(record["target_speedup"])
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise UserError(f"{path} is not the latency target `top train --target-speedup` writes; remove it or "
                        "train the checkpoint again.") from None
    return {"record": record, "model": model, "target_speedup": target}


def conditions(model: LatencyModel, batch_size: int, runtime: str, device: str, threads: int) -> List[str]:
    """How this bench differs from where the latency model was calibrated (empty: the target applies here)."""
    different = []
    if batch_size != model.batch_size:
        different.append(f"batch size {model.batch_size} there, {batch_size} here")
    here = latency.timing_conditions(machine.timing_machine(device, runtime, threads))
    return different + latency.machine_differences(model, here)


def target_fields(checkpoint_dir: Path, plan: CompactPlan, lengths: Sequence[int], batch_size: int, runtime: str,
                  device: str, threads: int, measured_speedup: float) -> Dict[str, Any]:
    """What ``bench.json`` adds for a checkpoint trained to a target speedup ({} for any other)."""
    target = read_target(checkpoint_dir)
    if target is None:
        return {}
    model: LatencyModel = target["model"]
    # The prediction for exactly these batches: the checkpoint's gates, the lengths of the timed examples.
    predicted = model.speedups(lengths, plan if plan.pruning else None)["predicted_speedup"]
    different = conditions(model, batch_size, runtime, device, threads)
    if different:
        logger.warning("The target speedup %gx was set for other conditions than this bench (%s); the measured "
                       "speedup is not a check of it.", target["target_speedup"], "; ".join(different))
    return {
        "target_speedup": target["target_speedup"],
        "predicted_speedup": predicted,
        "predicted_speedup_at_training": target["record"].get("predicted_speedup"),
        "measured_speedup": measured_speedup,
        "measured_over_target": measured_speedup / target["target_speedup"],
        "speedup_baseline": BASELINE,
        "latency_model_sha256": model.fingerprint,
        "target_conditions_differ": different,
    }
