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


# `pytest --device cuda` runs the tests that take a `device` on the GPU (nox -s gpu); they carry the
# marker `device`, so `-m device` selects them alone.
def pytest_addoption(parser):
    parser.addoption("--device", default="cpu", choices=("cpu", "cuda"),
                     help="where the tests that take a `device` run (default cpu)")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "device" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.device)


@pytest.fixture(scope="session")
def device(request):
    """The torch device of `--device`; cuda without a GPU fails the test rather than passing on the CPU."""
    name = request.config.getoption("--device")
    if name == "cuda" and not torch.cuda.is_available():
        pytest.fail("--device cuda was given but torch sees no CUDA GPU")
    return torch.device(name)
