"""What machine a figure was measured on: the CPU's name, its vector instructions, torch's choice of kernels."""

from __future__ import annotations

import os
import platform
from typing import Dict, List, Optional


def _cpuinfo(field: str) -> str:
    """The first ``field`` line of /proc/cpuinfo (Linux), or "" where there is none."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith(field):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def cpu_name() -> str:
    """The processor's model name where the system says it (Linux), else its architecture."""
    return _cpuinfo("model name") or platform.processor() or platform.machine() or "unknown"


def _cpu_flags() -> List[str]:
    return _cpuinfo("flags").split()


def describe() -> Dict[str, object]:
    """The CPU, its widest vector extension, the kernels torch was told to use, and the core count.

    ``ATEN_CPU_CAPABILITY=avx2`` with ``ONEDNN_MAX_CPU_ISA=AVX2`` makes an AVX-512 machine time as
    one without AVX-512 would (in its instruction set, not its clock).
    """
    import torch

    flags = _cpu_flags()
    widest = "avx512" if "avx512f" in flags else "avx2" if "avx2" in flags else "other"
    limited = os.environ.get("ATEN_CPU_CAPABILITY") or os.environ.get("ONEDNN_MAX_CPU_ISA")
    capability = torch.backends.cpu.get_cpu_capability() if hasattr(torch.backends, "cpu") else None
    return {
        "cpu": cpu_name(),
        "cpu_vector_extension": widest,
        "torch_cpu_capability": capability,
        "limited_to": {k: os.environ[k] for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA") if k in os.environ}
        if limited else {},
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }


def one_line(description: Dict[str, object]) -> str:
    """``AMD EPYC (avx512; torch kernels AVX512), 2 cores`` and the like."""
    text = f"{description['cpu']} ({description['cpu_vector_extension']}"
    if description.get("torch_cpu_capability"):
        text += f"; torch kernels {description['torch_cpu_capability']}"
    if description.get("limited_to"):
        text += "; limited by " + " ".join(f"{k}={v}" for k, v in description["limited_to"].items())
    return text + f"), {description['cores']} cores"


def timing_machine(device: str, runtime: str = "torch", threads: Optional[int] = None) -> Dict[str, object]:
    """What a time measured here depends on besides the model and its inputs: the device (the CPU's name, or
    the GPU's), the cores and threads, torch's version and the runtime's. A latency model records it."""
    import torch

    gpu = None
    if device == "cuda" and torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(torch.cuda.current_device())
    runtime_version = torch.__version__
    if runtime == "onnxruntime":
        try:
            import onnxruntime

            runtime_version = onnxruntime.__version__
        except ImportError:
            runtime_version = None
    return {
        "device": device,
        "cpu": cpu_name(),
        "gpu": gpu,
        "cores": os.cpu_count(),
        "threads": int(threads if threads is not None else torch.get_num_threads()),
        "torch": torch.__version__,
        "runtime": runtime,
        "runtime_version": runtime_version,
        "cpu_vector_extension": describe()["cpu_vector_extension"],
    }
