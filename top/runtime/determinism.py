"""Seeding, deterministic kernels, RNG snapshots and a record of the software a run used."""

import contextlib
import inspect
import os
import platform
import random
import sys
from typing import Any, Dict, Iterator, List, Optional

import numpy as np
import torch

from top.settings.common import SEED  # noqa: F401 - the seed of every run that names none

# cuBLAS needs a fixed workspace to be deterministic (CUDA >= 10.2); the original sets this value.
CUBLAS_WORKSPACE_CONFIG = ":16:8"


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators (every CUDA device included)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def set_deterministic() -> Dict[str, Any]:
    """Ask torch for deterministic kernels, as the original's ``set_cuda_deterministic`` does.

    ``warn_only`` keeps ops without a deterministic kernel running (with a warning) instead of
    failing; torch versions without that switch are left alone, so nothing breaks there.
    Returns the flags that were set, for the run's record.
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE_CONFIG)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    use_algorithms = getattr(torch, "use_deterministic_algorithms", None)
    warn_only = use_algorithms is not None and "warn_only" in inspect.signature(use_algorithms).parameters
    if warn_only:
        use_algorithms(True, warn_only=True)
    return {
        "CUBLAS_WORKSPACE_CONFIG": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
        "cudnn_deterministic": True,
        "cudnn_benchmark": False,
        "deterministic_algorithms": "warn_only" if warn_only else "not available",
    }


def rng_state() -> Dict[str, Any]:
    """Every generator's state as tensors, lists and numbers (loadable with ``weights_only``)."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: Dict[str, Any] = {
        "python": [int(version), [int(x) for x in internal], gauss],
        "numpy": [
            str(kind),
            torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            int(pos),
            int(has_gauss),
            float(cached),
        ],
        "torch": torch.get_rng_state(),
        "cuda": [],
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    version, internal, gauss = state["python"]
    random.setstate((int(version), tuple(int(x) for x in internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    torch.set_rng_state(state["torch"])
    cuda_states: List[torch.Tensor] = list(state.get("cuda") or [])
    if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda_states)


def _version(module_name: str) -> Optional[str]:
    try:
        module = __import__(module_name)
    except ImportError:
        return None
    return getattr(module, "__version__", None)


def environment_record() -> Dict[str, Any]:
    """Versions of Python and the numeric stack, and the accelerator, for a run's record."""
    record: Dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "transformers": _version("transformers"),
        "numpy": np.__version__,
        "scipy": _version("scipy"),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "CUBLAS_WORKSPACE_CONFIG": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
        "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
    }
    return record


@contextlib.contextmanager
def global_state_restored() -> Iterator[None]:
    """Put back on exit what a run changes of the process's global state: every random generator,
    torch's deterministic-algorithm and cuDNN switches, ``CUBLAS_WORKSPACE_CONFIG`` and torch's
    thread count. A run called from Python leaves its caller's process as it found it."""
    rng = rng_state()
    cudnn = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    enabled = getattr(torch, "are_deterministic_algorithms_enabled", lambda: False)()
    warn_only = getattr(torch, "is_deterministic_algorithms_warn_only_enabled", lambda: False)()
    cublas = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    threads = torch.get_num_threads()
    try:
        yield
    finally:
        set_rng_state(rng)
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = cudnn
        use_algorithms = getattr(torch, "use_deterministic_algorithms", None)
        if use_algorithms is not None:
            if "warn_only" in inspect.signature(use_algorithms).parameters:
                use_algorithms(enabled, warn_only=warn_only)
            else:
                use_algorithms(enabled)
        if cublas is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        else:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = cublas
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
