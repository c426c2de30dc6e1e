"""`top grid --backend ray` on a real Ray cluster on this machine.

Ray listens on every interface whatever `--node-ip-address` says (tests/test_ray_ports.py), so
`nox -s tests-ray` runs this file in a network namespace of its own with the loopback alone
(`unshare -rn`) where the machine allows it; the cluster asks for a token either way.

The cluster is two nodes of 1 CPU each, started with `ray start --head` and `ray start --address`,
each in its own process session, and stopped by pid at the end. The grid is four points of a tiny
model on a tiny custom task, so two runs go at once. `nox -s tests-ray` runs this file (Ray is the
optional extra `ray`: `pip install -e '.[ray]'`); without Ray it is skipped.
"""

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
import torch

ray = pytest.importorskip("ray")

from builders import kill_tree as _kill_tree  # noqa: E402
from builders import process_tree as _descendants  # noqa: E402
from builders import tensors, tiny_checkpoint, write_custom_csv  # noqa: E402

from top.cli import main  # noqa: E402
from top.training import grid_launch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RAY_BIN = Path(sys.executable).with_name("ray")
STEPS = 24  # long enough to kill a run between two of its saves


# The cluster's own token: with RAY_AUTH_MODE=token, `ray start --head` makes none (it found the
# ~/.ray/auth_token that an earlier ray.init() on the machine had written, and failed on a new one).
TOKEN = secrets.token_hex(32)


def _env():
    env = dict(os.environ)
    env.update(PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), str(REPO / "tests"), env.get("PYTHONPATH")])),
               OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="token",
               RAY_AUTH_TOKEN=TOKEN,
               TOKENIZERS_PARALLELISM="false")
    env.pop(grid_launch.TRAIN_COMMAND_ENV, None)
    env.pop("RAY_ADDRESS", None)
    return env


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    def __init__(self, root: Path):
        # Ray's socket paths live under the temp dir and may not exceed 107 bytes: a short root.
        root = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))
        self.root, self.port = root, _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.nodes = {}

    def start_node(self, name, head):
        where = ["--head", f"--port={self.port}", "--include-dashboard=false"] if head else [
            f"--address={self.address}"]
        temp = self.root / name
        # --block: `ray start` stays in the foreground as the node's parent, so the node is one pid tree.
        command = [str(RAY_BIN), "start", "--block", "--node-ip-address=127.0.0.1", "--num-cpus=1",
                   "--num-gpus=0", "--disable-usage-stats", f"--temp-dir={temp}", *where]
        log = open(self.root / f"{name}.log", "wb")
        self.nodes[name] = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=_env(),
                                            start_new_session=True)

    def alive_nodes(self):
        out = subprocess.run([str(RAY_BIN), "status", f"--address={self.address}"], capture_output=True,
                             text=True, env=_env(), timeout=60)
        active = out.stdout.split("Active:", 1)[-1].split("Pending:", 1)[0]
        return sum(line.strip().startswith("1 node_") for line in active.splitlines())

    def wait_for(self, count, timeout=120):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.alive_nodes() == count:
                return
            time.sleep(1)
        raise AssertionError(f"the cluster never had {count} node(s): " +
                             " ".join((self.root / f"{n}.log").read_text(errors="replace")[-2000:] for n in self.nodes))

    def pids(self, name):
        return set(_descendants(self.nodes[name].pid))

    def stop(self):
        for process in self.nodes.values():
            _kill_tree(process.pid)
            process.wait(timeout=30)
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def two_nodes(root):
    """A head and a worker node of 1 CPU each, stopped by pid at the end."""
    c = Cluster(root)
    try:
        c.start_node("head", head=True)
        c.wait_for(1)
        c.start_node("worker", head=False)
        c.wait_for(2)
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with two_nodes(tmp_path_factory.mktemp("ray")) as c:
        yield c


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    root = tmp_path_factory.mktemp("task")
    model = tiny_checkpoint(root / "dense", layers=3, pruned=False)
    train_file = write_custom_csv(root / "train.csv", n=48, seed=1)
    dev_file = write_custom_csv(root / "dev.csv", n=16, seed=2)
    grid = root / "grid.toml"
    grid.write_text(textwrap.dedent(
        f"""
        [grid]
        learning_rate = [1e-2, 1e-3]
        rank_loss_alpha = [0.01, 0.001]

        [fixed]
        train_file = "{train_file.as_posix()}"
        validation_file = "{dev_file.as_posix()}"
        max_steps = {STEPS}
        eval_steps = 6
        save_steps = 2
        batch_size = 8
        max_seq_length = 16
        bin_num = 4
        topk = 2
        target_sparsity = 0.01
        sparsity_epsilon = 0.05
        device = "cpu"
        no_progress = true
        """))
    return {"model": model, "grid": grid, "root": root}


def _grid_argv(task, out, *extra):
    return [sys.executable, "-m", "top", "grid", "--task", "sst2", "--grid", str(task["grid"]),
            "--model", str(task["model"]), "--output-dir", str(out), *extra]


def _run(argv, **kw):
    return subprocess.run(argv, capture_output=True, text=True, env=_env(), cwd=REPO, timeout=900, **kw)


def _assert_same_best(a_dir, b_dir):
    a, b = tensors(a_dir / "best"), tensors(b_dir / "best")
    assert a and a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs between {a_dir} and {b_dir}"


def _table(out):
    grid = json.loads((out / "grid.json").read_text())
    return grid["best"], {r["run_id"]: (r["status"], r["best_score"], r["sparsity"]) for r in grid["runs"]}


@pytest.fixture(scope="module")
def local_grid(task):
    out = task["root"] / "local"
    done = _run(_grid_argv(task, out))
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def test_the_grid_on_a_two_node_cluster_equals_the_local_backend(cluster, task, local_grid):
    out = task["root"] / "cluster"
    done = _run(_grid_argv(task, out, "--backend", "ray", "--address", cluster.address))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert _table(out) == _table(local_grid)
    best, rows = _table(out)
    assert best is not None and all(status == "done" for status, _, _ in rows.values())
    for run_id in rows:
        _assert_same_best(out / "runs" / run_id, local_grid / "runs" / run_id)
    nodes = {grid_launch.read_status(out / "runs" / r)["attempt_log"][-1]["node_id"] for r in rows}
    assert len(nodes) == 2  # both nodes ran trials
    assert (out / "ray").is_dir()  # Tune's own view, beside the record


def _wait_until(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _running_with_last(run_dir):
    """The run is being trained and has saved last/ at least once."""
    status = grid_launch.read_status(run_dir)
    return status.get("status") == "running" and (run_dir / "last").is_dir()


def test_a_lost_node_loses_nothing(tmp_path_factory, task, local_grid):
    with two_nodes(tmp_path_factory.mktemp("ray-kill")) as cluster:
        out = task["root"] / "killed-node"
        driver = subprocess.Popen(_grid_argv(task, out, "--backend", "ray", "--address", cluster.address),
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=_env(), cwd=REPO)
        worker_pids = cluster.pids("worker")

        def on_worker():  # a run whose attempt is on the worker node and has saved last/
            for run_dir in (out / "runs").glob("*"):
                attempts = grid_launch.read_status(run_dir).get("attempt_log") or []
                on_that_node = attempts and attempts[-1].get("worker_pid") in cluster.pids("worker")
                if on_that_node and _running_with_last(run_dir):
                    return run_dir
            return None

        victim = _wait_until(on_worker, 300, "a run on the worker node to save last/")
        assert worker_pids
        _kill_tree(cluster.nodes["worker"].pid)  # the machine is gone: every process of that node
        cluster.nodes["worker"].wait(timeout=30)
        output = driver.communicate(timeout=900)[0].decode(errors="replace")
        assert driver.returncode == 0, output[-4000:]
        status = grid_launch.read_status(victim)
        first, last = status["attempt_log"][0], status["attempt_log"][-1]
        print(f"\n{victim.name} attempts:\n" + "\n".join(json.dumps(a) for a in status["attempt_log"]))
        assert status["status"] == "done" and len(status["attempt_log"]) >= 2
        assert first["node_id"] != last["node_id"] and last["resume"] is True
        assert last["resumed_from_step"] is not None and 0 < last["resumed_from_step"] < STEPS
        assert _table(out) == _table(local_grid)
        for run_id in _table(out)[1]:
            _assert_same_best(out / "runs" / run_id, local_grid / "runs" / run_id)


def test_a_killed_driver_continues_and_skips_finished_runs(cluster, task, local_grid):
    out = task["root"] / "killed-driver"
    driver = subprocess.Popen(_grid_argv(task, out, "--backend", "ray", "--address", cluster.address),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env(), cwd=REPO,
                              start_new_session=True)

    def one_done_one_saved():
        statuses = [grid_launch.read_status(d) for d in (out / "runs").glob("*")]
        done = [s for s in statuses if s.get("status") == "done"]
        return done and any(_running_with_last(out / "runs" / s["run_id"]) for s in statuses)

    _wait_until(one_done_one_saved, 300, "one finished run and one that has saved last/")
    finished = {d.name: (d / "train.log").stat().st_size for d in (out / "runs").glob("*")
                if grid_launch.is_finished(d)}
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait(timeout=30)
    again = _run(_grid_argv(task, out, "--backend", "ray", "--address", cluster.address))
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    for run_id, size in finished.items():  # finished runs were not run again
        assert (out / "runs" / run_id / "train.log").stat().st_size == size
        assert len(grid_launch.read_status(out / "runs" / run_id)["attempt_log"]) == 1
    # A run the killed driver left unfinished either finished in its orphaned trial before Ray
    # reaped it, or was resumed (or restarted) by the second driver; either way it is done now.
    assert all(grid_launch.is_finished(d) for d in (out / "runs").glob("*"))
    assert _table(out) == _table(local_grid)
    for run_id in _table(out)[1]:
        _assert_same_best(out / "runs" / run_id, local_grid / "runs" / run_id)


def test_an_address_with_no_cluster_is_one_sentence(tmp_path, task, capsys):
    code = main(["grid", "--task", "sst2", "--grid", str(task["grid"]), "--model", str(task["model"]),
                 "--output-dir", str(tmp_path / "out"), "--backend", "ray", "--address", f"127.0.0.1:{_free_port()}"])
    err = capsys.readouterr().err
    assert code == 2
    assert "No Ray cluster answers at 127.0.0.1:" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_the_embedded_default_starts_ray_on_this_machine(tmp_path, task, local_grid, monkeypatch):
    """No --address and no RAY_ADDRESS: ray.init() starts a local instance and the grid runs there."""
    out = tmp_path / "embedded"
    done = _run(_grid_argv(task, out, "--backend", "ray"))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert _table(out) == _table(local_grid)
