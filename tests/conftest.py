import os

import torch

# Tiny models gain nothing from a second thread, and on a shared 2-core machine OpenMP threads
# that wait on each other make them several times slower. Subprocesses inherit the setting.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(1)


import pytest  # noqa: E402
from builders import build_tiny  # noqa: E402


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """The training commands' tiny world, built once per session: two tiny models, a train and a dev csv."""
    return build_tiny(tmp_path_factory)
