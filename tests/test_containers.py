"""The compose services, run for real: ``docker compose run`` in a Docker engine, offline.

``nox -s docker`` (docker/ci.py) starts a private engine, builds ``top:current`` and runs
this file with ``TOP_DOCKER_CLI`` set; anywhere else it is skipped. Every service runs with the
CPU override (docker-compose.cpu.yml) and ``network_mode: none`` (an override written here), so
compose creates no network. Checkpoints in the published layout and GLUE-layout data are made
inside the image by tests/builders.py and mounted read-only. The tests run in file order and
share one world: train-cola's teacher is what grid-cola prunes.

Each service run is a row of ``$TOP_CONTAINER_REPORT/services.md``: service, image, exit,
seconds, what it wrote and who owns it.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import subprocess
import time
from pathlib import Path
from typing import Dict, List, Optional

import pytest

ROOT = Path(__file__).resolve().parent.parent
CLI = os.environ.get("TOP_DOCKER_CLI", "")
IMAGE = os.environ.get("TOP_CONTAINER_IMAGE", "top:current")
REPORT_DIR = Path(os.environ.get("TOP_CONTAINER_REPORT", ROOT / "outputs" / "docker-ci"))
PROJECT = f"top-ci-{os.getpid()}"
# The user the services run as: a uid that owns the mounted folders (root makes one up, so that
# "owned by the invoking user" is not trivially root).
UID = 4242 if os.geteuid() == 0 else os.getuid()
GID = 4242 if os.geteuid() == 0 else os.getgid()
# A short recipe that reaches its target (the tests' own, test_train.SHORT), long enough to be killed.
TRAIN_ARGS = ("--max-steps 400 --save-steps 8 --eval-steps 50 --batch-size 8 --max-seq-length 32 --warmup-epochs 1 "
              "--target-sparsity 0.3 --reg-learning-rate 0.1 --bin-num 10 --topk 4 --logging-steps 50 --no-progress")
FINETUNE_ARGS = "--epochs 1 --batch-size 16 --max-seq-length 32 --no-progress"
PUBLISHED_LAYOUT = {"config.json", "model.safetensors", "zs.pt", "l0_module.pt", "vocab.txt"}

pytestmark = pytest.mark.skipif(not CLI, reason="runs in the Docker engine that `nox -s docker` starts")

ROWS: List[Dict] = []


def base_note() -> str:
    base = json.loads(os.environ.get("TOP_CONTAINER_BASE") or "{}")
    if base.get("source") == "stand-in":
        return f"{IMAGE} (on a stand-in {base.get('image')})"
    return IMAGE


def snapshot(directory: Path) -> Dict[str, tuple]:
    """{relative path: (sha256, mtime_ns)} of every file under ``directory``."""
    files = {}
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            files[str(path.relative_to(directory))] = (hashlib.sha256(path.read_bytes()).hexdigest(),
                                                       path.stat().st_mtime_ns)
    return files


def written_at(directory: Path) -> Dict[Path, int]:
    """{file: mtime_ns} under ``directory``: a file is written when it is new or its time moved."""
    return {p: p.stat().st_mtime_ns for p in directory.rglob("*") if p.is_file()}


def owners(paths) -> str:
    found = sorted({f"{p.stat().st_uid}:{p.stat().st_gid}" for p in paths})
    return ", ".join(found) or "–"


class World:
    """The host folders the services mount, and `docker compose run` over them."""

    def __init__(self, root: Path):
        self.root = root
        self.outputs = root / "outputs"
        self.cache = root / "hf-cache"
        self.data = root / "fixtures"
        for directory in (self.outputs, self.cache, self.data):
            directory.mkdir(parents=True)
            os.chown(directory, UID, GID)
        self.override = root / "offline.yml"
        services = self.services()
        self.override.write_text("services:\n" + "".join(f"  {s}: {{network_mode: none}}\n" for s in services))

    def services(self) -> List[str]:
        result = self.docker("compose", "-f", str(ROOT / "docker-compose.yml"), "config", "--services",
                             env=self.env())
        return result.stdout.split()

    def env(self, **extra: str) -> Dict[str, str]:
        environment = dict(os.environ)
        environment.update(
            TOP_IMAGE_TARGET=IMAGE.split(":", 1)[1], TOP_OUTPUTS=str(self.outputs),
            TOP_CHECKPOINTS=str(self.data / "checkpoints"), GLUE_DIR=str(self.data / "glue"),
            HF_CACHE=str(self.cache), HF_HUB_OFFLINE="1", TOP_UID=str(UID), TOP_GID=str(GID),
        )
        environment.update(extra)
        return {k: v for k, v in environment.items() if v is not None}

    def docker(self, *argv: str, env: Optional[Dict[str, str]] = None, timeout: float = 900,
               check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run([CLI, *argv], env=env or dict(os.environ), capture_output=True, text=True,
                              timeout=timeout, check=check)

    def compose_argv(self, service: str, *args: str, cpu: bool = True, name: Optional[str] = None) -> List[str]:
        files = ["-f", str(ROOT / "docker-compose.yml")]
        if cpu:
            files += ["-f", str(ROOT / "docker-compose.cpu.yml")]
        files += ["-f", str(self.override)]
        extra = ["--name", name] if name else []
        return [CLI, "compose", "-p", PROJECT, "--project-directory", str(ROOT), *files, "run", "--rm", *extra,
                service, *args]

    def compose(self, service: str, *args: str, cpu: bool = True, outputs: Optional[Path] = None,
                record: bool = True, note: str = "", **env: str) -> subprocess.CompletedProcess:
        outputs = outputs or self.outputs
        before = written_at(outputs)
        environment = self.env(**env)
        environment["TOP_OUTPUTS"] = str(outputs)
        start = time.monotonic()
        result = subprocess.run(self.compose_argv(service, *args, cpu=cpu), env=environment, capture_output=True,
                                text=True, timeout=1200)
        seconds = time.monotonic() - start
        if record:
            self.record(service, args, result.returncode, seconds, outputs, before, env, note)
        return result

    def record(self, service, args, code, seconds, outputs, before, env, note: str = "") -> None:
        after = written_at(outputs)
        files = sorted(p for p, mtime in after.items() if before.get(p) != mtime)
        tops = sorted({str(p.relative_to(outputs)).split("/")[0] for p in files})
        label = " ".join([service, *args]) if args else service
        ROWS.append({
            "service": label + (f" ({note})" if note else ""), "image": base_note(), "exit": code,
            "seconds": round(seconds, 1),
            "wrote": f"{len(files)} files in {', '.join(f'outputs/{t}/' for t in tops)}" if files else "nothing",
            "owner": owners(files),
        })


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    world = World(tmp_path_factory.mktemp("containers"))
    # The checkpoints and data, made in the image by the tests' own builders, as the test user.
    made = world.docker("run", "--rm", "--network", "none", "--user", f"{UID}:{GID}",
                        "-v", f"{world.data}:/fixtures", IMAGE, "python", "/opt/top/tests/builders.py", "/fixtures",
                        check=False)
    assert made.returncode == 0, made.stderr[-2000:]
    world.before = snapshot(world.data)
    yield world
    write_rows()


def write_rows() -> None:
    if not ROWS:
        return
    REPORT_DIR.mkdir(parents=True, exist_ok=True)
    (REPORT_DIR / "services.json").write_text(json.dumps(ROWS, indent=2) + "\n", encoding="utf-8")
    lines = ["## Services run in containers", "", f"As uid:gid {UID}:{GID} unless the row says otherwise.", "",
             "| service | image | exit | seconds | wrote | owner |", "| --- | --- | ---: | ---: | --- | --- |"]
    lines += [f"| `{r['service']}` | {r['image']} | {r['exit']} | {r['seconds']} | {r['wrote']} | {r['owner']} |"
              for r in ROWS]
    (REPORT_DIR / "services.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def read_json(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


def test_eval_cola_scores_the_published_layout_checkpoint(world):
    result = world.compose("eval-cola")
    assert result.returncode == 0, result.stderr[-3000:]
    record = read_json(world.outputs / "eval-cola" / "cola.json")
    assert record["task"] == "cola" and record["n_examples"] == 23
    assert (world.outputs / "eval-cola" / "cola.predictions.jsonl").stat().st_uid == UID


def test_eval_all_reports_every_published_task(world):
    result = world.compose("eval-all")
    assert result.returncode == 0, result.stderr[-3000:]
    report = read_json(world.outputs / "reproduce" / "report.json")
    status = {row["task"]: row["status"] for row in report["tasks"]}
    assert status["rte"] == "not published"
    assert status["qqp"] == "missing" and status["mnli"] == "missing"
    assert status["cola"] != "missing" and status["sst2"] != "missing"
    assert (world.outputs / "reproduce" / "report.md").exists()
    world.measured = {row["task"]: row for row in report["tasks"] if row["task"] in ("cola", "sst2")}


def test_reproduce_passes_against_a_table_made_for_these_checkpoints(world):
    rows = world.measured
    table = world.outputs / "results-ours.toml"
    text = ""
    for task, row in rows.items():
        text += (f'[{task}]\nmetric = "{row["metric"]}"\nscore = {row["measured_score"]!r}\n'
                 f'flops_reduction = {row["measured_flops_reduction"]!r}\n'
                 f'checkpoint = "senfu/bert-base-uncased-top-pruned-{task}"\n'
                 "score_tolerance = 0.01\nflops_tolerance = 0.001\n\n")
    table.write_text(text, encoding="utf-8")
    result = world.compose("reproduce", "--results-table", "outputs/results-ours.toml")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = read_json(world.outputs / "reproduce" / "report.json")
    assert [row["status"] for row in report["tasks"]] == ["pass", "pass"]


def test_reproduce_fails_against_the_papers_table_and_names_the_tasks(world):
    result = world.compose("reproduce", "--tasks", "cola,sst2")
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    said = result.stdout + result.stderr
    assert "FAILED 2 of 2 tasks" in said and "cola" in said and "sst2" in said


def wait_for(path: Path, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if path.exists():
            return True
        time.sleep(0.1)
    return False


def test_train_cola_is_killed_and_resumes_to_a_published_layout_best(world):
    env = dict(BASE_MODEL="/opt/top/checkpoints/tiny-base", TOP_FINETUNE_ARGS=FINETUNE_ARGS,
               TOP_TRAIN_ARGS=TRAIN_ARGS)
    environment = world.env(**env)
    name = f"{PROJECT}-train-killed"
    before = written_at(world.outputs)
    start = time.monotonic()
    process = subprocess.Popen(world.compose_argv("train-cola", name=name), env=environment,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        last = world.outputs / "cola" / "last"
        assert wait_for(last, 600), "train-cola never wrote outputs/cola/last/"
        # Freeze it at once, so that the kill lands mid-run, then kill it as a lost machine would.
        world.docker("pause", name, check=False)
        finished = (world.outputs / "cola" / "summary.json").exists()
        world.docker("kill", name, check=False)
        output, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    world.record("train-cola", (), process.returncode, time.monotonic() - start, world.outputs, before, {},
                 "killed once last/ existed")
    assert not finished, "the run finished before it could be killed; give it more steps"
    assert process.returncode != 0
    result = world.compose("train-cola", note="again: resumes", **env)
    said = result.stdout + result.stderr
    assert result.returncode == 0, said[-3000:]
    assert "resumed from" in said, said[-3000:]
    best = world.outputs / "cola" / "best"
    assert PUBLISHED_LAYOUT <= {p.name for p in best.iterdir()}
    written = [p for p in (world.outputs / "cola").rglob("*")]
    assert {(p.stat().st_uid, p.stat().st_gid) for p in written} == {(UID, GID)}
    summary = read_json(world.outputs / "cola" / "summary.json")
    assert summary["steps"] == 400 and summary["best"]["score"] is not None


def test_grid_cola_runs_a_two_point_grid_and_promotes_the_winner(world):
    grid = world.outputs / "grid-two.toml"
    grid.write_text(
        "[grid]\nlearning_rate = [5e-5, 1e-4]\n\n[fixed]\nmax_steps = 100\neval_steps = 25\nsave_steps = 50\n"
        "batch_size = 8\nmax_seq_length = 32\nwarmup_epochs = 1\ntarget_sparsity = 0.3\nreg_learning_rate = 0.1\n"
        "bin_num = 10\ntopk = 4\nno_progress = true\n", encoding="utf-8")
    result = world.compose("grid-cola", "--grid", "outputs/grid-two.toml")
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    report = read_json(world.outputs / "grid-cola" / "grid.json")
    assert len(report["runs"]) == 2 and report["best"] is not None
    assert PUBLISHED_LAYOUT <= {p.name for p in (world.outputs / "grid-cola" / "best").iterdir()}


def test_grid_cola_on_ray_runs_its_trials_on_the_ray_head_container(world):
    """RAY_ADDRESS turns grid-cola into a Ray Tune driver of the cluster that ray-head started in another
    container: grid-cola joins it as a node without CPUs, so every trial runs on the head. The two share
    a network namespace (loopback only), where real machines share the host network. Same grid as the
    local test above: same winner, bit-identical weights."""
    head = f"{PROJECT}-ray-head"
    joined = world.root / "ray-joined.yml"
    joined.write_text(f'services:\n  grid-cola: {{network_mode: "container:{head}"}}\n')
    env = world.env(RAY_AUTH_TOKEN=secrets.token_hex(16), RAY_NODE_IP="127.0.0.1",
                    RAY_ADDRESS="127.0.0.1:6379")
    files = ["-f", str(ROOT / "docker-compose.yml"), "-f", str(ROOT / "docker-compose.cpu.yml"),
             "-f", str(world.override)]
    compose = [CLI, "compose", "-p", PROJECT, "--project-directory", str(ROOT)]
    start, before = time.monotonic(), written_at(world.outputs)
    started = subprocess.run([*compose, *files, "run", "-d", "--name", head, "ray-head"], env=env,
                             capture_output=True, text=True, timeout=300)
    assert started.returncode == 0, started.stderr[-3000:]
    try:
        deadline, logs = time.monotonic() + 180, ""
        while time.monotonic() < deadline and "Ray runtime started" not in logs:
            time.sleep(2)
            logs = world.docker("logs", head, check=False).stdout
        assert "Ray runtime started" in logs, logs[-3000:]
        head_host = world.docker("inspect", "-f", "{{.Config.Hostname}}", head).stdout.strip()
        world.record("ray-head", (), 0, time.monotonic() - start, world.outputs, before, {}, "up, detached")
        before = written_at(world.outputs)
        start = time.monotonic()
        # Ray sets OMP_NUM_THREADS to a trial's CPUs: 2, as torch has in the local grid's container, so
        # that both sum in the same order.
        result = subprocess.run([*compose, *files, "-f", str(joined), "run", "--rm", "grid-cola",
                                 "--grid", "outputs/grid-two.toml", "--output-dir", "outputs/grid-cola-ray",
                                 "--cpus-per-run", "2"],
                                env=env, capture_output=True, text=True, timeout=1200)
        world.record("grid-cola --grid outputs/grid-two.toml --output-dir outputs/grid-cola-ray --cpus-per-run 2", (),
                     result.returncode, time.monotonic() - start, world.outputs, before, {},
                     "RAY_ADDRESS: ray-head's cluster")
        said = result.stdout + result.stderr
        assert result.returncode == 0, said[-3000:]
    finally:
        world.docker("rm", "-f", head, check=False)
    local, on_ray = world.outputs / "grid-cola", world.outputs / "grid-cola-ray"
    report, local_report = read_json(on_ray / "grid.json"), read_json(local / "grid.json")
    assert report["best"] is not None and report["best"] == local_report["best"]
    assert sorted(r["run_id"] for r in report["runs"]) == sorted(r["run_id"] for r in local_report["runs"])
    assert (on_ray / "ray").is_dir(), "Tune's own results folder is missing"
    for run in report["runs"]:
        status = read_json(on_ray / "runs" / run["run_id"] / "grid_run.json")
        attempts = status["attempt_log"]
        assert attempts and all(a.get("node_id") and a.get("host") == head_host for a in attempts), status
    digest = lambda path: hashlib.sha256(path.read_bytes()).hexdigest()  # noqa: E731
    assert digest(on_ray / "best" / "model.safetensors") == digest(local / "best" / "model.safetensors")


def test_the_test_service_passes_a_stated_subset_inside_the_image(world):
    subset = ["tests/test_pruning.py", "tests/test_gates.py", "tests/test_flops.py", "tests/test_checkpoint.py",
              "tests/test_hostile_files.py", "-q"]
    subset = [s for s in subset if s.startswith("-") or (ROOT / s).exists()]
    result = world.compose("test", *subset)
    assert result.returncode == 0, result.stdout[-3000:]
    assert " passed" in result.stdout.strip().splitlines()[-1]


def test_the_default_uid_on_a_root_owned_clone_gets_one_sentence(world):
    if os.geteuid() != 0:
        pytest.skip("needs root to make a root-owned outputs folder")
    root_owned = world.root / "root-owned-outputs"
    root_owned.mkdir(mode=0o755)
    result = world.compose("eval-cola", outputs=root_owned, note="default uid 1000, root-owned outputs",
                           TOP_UID=None, TOP_GID=None)
    assert result.returncode == 2, result.stderr[-3000:]
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "TOP_UID" in lines[0] and "not writable by uid 1000" in lines[0], result.stderr
    assert list(root_owned.iterdir()) == []


def test_a_plain_run_without_the_nvidia_runtime_is_refused_by_the_engine(world):
    runtimes = world.docker("info", "--format", "{{json .Runtimes}}").stdout
    if "nvidia" in runtimes:
        pytest.skip("this engine has the NVIDIA runtime")
    result = world.compose("eval-cola", cpu=False, record=False)
    assert result.returncode != 0
    assert 'could not select device driver "nvidia"' in result.stderr
    assert "docker-compose.cpu.yml" in (ROOT / "docs" / "DOCKER.md").read_text(encoding="utf-8")


def test_the_read_only_checkpoint_mount_was_never_written(world):
    assert snapshot(world.data) == world.before
