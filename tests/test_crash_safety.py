"""A kill at any phase of a save leaves a run that ``--resume`` continues bit-identically; one run per OUT/.

The kill tests run ``top train`` in a subprocess that ends itself (``os._exit(137)``) at a named
phase of one save (``TOP_TEST_KILL_AT``, read by ``top.storage.io``), then resume in-process and compare
the final weights, gates and log with an uninterrupted run's.
"""

from __future__ import annotations

import errno
import json
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict

import pytest
import torch
from builders import (
    FINISHED,
    SHORT,
    WORDS,
    assert_bit_identical,
    read_log,
    single_thread,
    subprocess_env,
    tiny_model_dir,
    train_argv,
)

from top import cli
from top.errors import UserError
from top.method.checkpoint import load_checkpoint
from top.storage import rundir
from top.storage.io import KILL_ENV, KILL_PHASES, atomic_directory
from top.training import run_files

one_thread = pytest.fixture(scope="module", autouse=True)(single_thread)


# SHORT never reaches its target, so it writes no best/. On regression data, whose Pearson
# moves at every evaluation, these flags write best/ at steps 4, 6, 8, 10 and 12 on both stacks
# (a target reached as soon as pruning starts, and a learning rate that moves the score).
BEST_OFTEN = ("--target-sparsity", "0.01", "--sparsity-epsilon", "0.05", "--eval-steps", "2", "--learning-rate", "1e-2")


def write_regression_data(path: Path, n: int, seed: int) -> Path:
    """Sentences of 8-30 words; the label counts 'good' and (half) 'bad'."""
    rng = random.Random(seed)
    lines = ["sentence,label"]
    for _ in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(8, 30))]
        lines.append(" ".join(words) + f",{words.count('good') + 0.5 * words.count('bad'):.2f}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def runs(tiny, tmp_path_factory):
    """Per kind of run: its data and flags, and its uninterrupted output (made once)."""
    root = tmp_path_factory.mktemp("regression")
    regression = {
        "model": tiny_model_dir(root / "model", num_labels=1),
        "train": write_regression_data(root / "train.csv", 64, seed=1),
        "dev": write_regression_data(root / "dev.csv", 24, seed=2),
    }
    kinds = {"classification": (tiny, ()), "regression": (regression, BEST_OFTEN)}
    made: Dict[str, Path] = {}

    def run(kind: str):
        data, flags = kinds[kind]
        if kind not in made:
            made[kind] = tmp_path_factory.mktemp("reference") / "out"
            assert cli.main(train_argv(data, made[kind], *SHORT, *flags)) in FINISHED
        return data, flags, made[kind]

    return run


def checkpoint_tensors(directory: Path) -> Dict[str, torch.Tensor]:
    """What the checkpoint loader reads: weights, masks and gate tensors (lambdas included)."""
    checkpoint = load_checkpoint(directory)
    found = {f"w.{k}": v for k, v in checkpoint.state_dict.items()}
    found["token_z"], found["pruner_z"] = checkpoint.token_z, checkpoint.pruner_z
    found.update({f"g.{k}": v for k, v in (checkpoint.gate_state or {}).items() if torch.is_tensor(v)})
    return found


def assert_same_outputs(reference: Path, out: Path) -> None:
    for name in ("last", "best"):
        assert (out / name).exists() == (reference / name).exists(), name
        if (reference / name).exists():
            left, right = checkpoint_tensors(reference / name), checkpoint_tensors(out / name)
            assert left.keys() == right.keys()
            different = [k for k in left if not torch.equal(left[k], right[k])]
            assert not different, f"{name} differs: {different[:5]}"
    assert read_log(out) == read_log(reference)
    leftovers = sorted(p.name for p in out.iterdir() if p.name.startswith(".") and p.name != rundir.LOCK_FILE)
    assert not leftovers, leftovers
    assert not (out / rundir.LOCK_FILE).exists()


def run_until_killed(tiny, out: Path, spec: str, flags: tuple = ()) -> subprocess.CompletedProcess:
    env = dict(subprocess_env(), **{KILL_ENV: spec})
    return subprocess.run(
        [sys.executable, "-m", "top", *train_argv(tiny, out, *SHORT, *flags)],
        cwd=str(out.parent),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.multiprocess
# SHORT saves last/ at steps 3, 6, 9, 12; its second save (step 6) replaces a whole step-3 one.
# The second save of best/ in the regression run (step 6) replaces the step-4 one.
@pytest.mark.parametrize(
    "spec, kind",
    [(f"{phase}:last:2", "classification") for phase in KILL_PHASES]
    + [(f"{phase}:best:2", "regression") for phase in KILL_PHASES],
)
def test_kill_at_every_phase_of_a_save_then_resume_is_bit_identical(runs, tmp_path, spec, kind):
    data, flags, reference = runs(kind)
    out = tmp_path / "out"
    killed = run_until_killed(data, out, spec, flags)
    assert killed.returncode == 137, killed.stderr[-3000:]
    phase, name = spec.split(":")[:2]
    if phase == "moved-aside":  # the moment the issue found: the save looked lost
        assert not (out / name).exists() and (out / f".{name}.old").is_dir()
    if phase in ("mid-write", "written"):
        assert list(out.glob(f".{name}.tmp-*")), "the kill should have left the temporary directory"

    assert cli.main(train_argv(data, out, *SHORT, *flags, "--resume")) in FINISHED
    assert_same_outputs(reference, out)


def test_kill_between_renames_then_fresh_start_keeps_nothing_stale(tiny, tmp_path):
    """After recovery a fresh run (--overwrite-output-dir, not --resume) starts clean, the killed run's
    recovered last/ is moved aside whole, and no temporary directory survives."""
    out = tmp_path / "out"
    assert run_until_killed(tiny, out, "written:last:2").returncode == 137
    assert cli.main(train_argv(tiny, out, *SHORT[:-6], "--save-steps", "12", "--logging-steps", "12",
                               "--overwrite-output-dir")) in FINISHED
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    assert json.loads((out / "last" / "trainer_state.json").read_text())["step"] == 12
    assert json.loads((out / "previous-1" / "last" / "trainer_state.json").read_text())["step"] == 3


# ------------------------------------------------------------------------------------- the lock

HOLDER = r"""
import sys, time
from pathlib import Path
from top.storage import rundir
with rundir.claim(Path(sys.argv[1])):
    (Path(sys.argv[1]) / "log.jsonl").write_text('{"step": 1}\n')
    print("holding", flush=True)
    time.sleep(120)
"""


def test_second_run_on_the_same_output_dir_is_refused(tiny, tmp_path, capsys):
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(out)], env=subprocess_env(), stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "holding"
        assert cli.main(train_argv(tiny, out, *SHORT)) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("error:") and str(out) in err[-1] and f"pid {holder.pid}" in err[-1]
        assert "Traceback" not in "\n".join(err)
        finetune = ["finetune", "--model", str(tiny["model"]), "--train-file", str(tiny["train"]),
                    "--validation-file", str(tiny["dev"]), "--device", "cpu", "--output-dir", str(out)]
        assert cli.main(finetune) == 2
        # The first run is unharmed: its lock and its log are as it left them.
        assert json.loads((out / rundir.LOCK_FILE).read_text())["pid"] == holder.pid
        assert (out / "log.jsonl").read_text() == '{"step": 1}\n'
        assert holder.poll() is None
    finally:
        holder.kill()
        holder.wait()


def test_stale_lock_is_taken_over_with_a_warning(tiny, tmp_path, caplog):
    out = tmp_path / "out"
    out.mkdir()
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(gone.stdout)
    (out / rundir.LOCK_FILE).write_text(json.dumps({"pid": dead_pid, "host": socket.gethostname()}))
    with caplog.at_level("WARNING"):
        assert cli.main(train_argv(tiny, out, *SHORT)) in FINISHED
    assert any(str(dead_pid) in r.getMessage() and "no longer runs" in r.getMessage() for r in caplog.records)
    assert not (out / rundir.LOCK_FILE).exists()


def test_lock_of_another_host_or_being_written_is_respected(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    lock = out / rundir.LOCK_FILE
    lock.write_text(json.dumps({"pid": 1, "host": socket.gethostname() + "-elsewhere"}))
    with pytest.raises(UserError, match="in use"):
        with rundir.claim(out):
            pass
    lock.write_text("")  # created a moment ago by a process still writing it
    with pytest.raises(UserError, match="in use"):
        with rundir.claim(out):
            pass
    old = time.time() - 60
    os.utime(str(lock), (old, old))  # ...or left empty by one killed long ago
    with rundir.claim(out):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert not lock.exists()


FLOCK_HOLDER = r"""
import fcntl, json, os, sys, time
fd = os.open(sys.argv[1], os.O_CREAT | os.O_WRONLY, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, json.dumps({"pid": 1, "host": "a-container", "boot_id": sys.argv[2]}).encode())
print("holding", flush=True)
time.sleep(120)
"""


@pytest.mark.skipif(rundir.boot_id() is None or rundir.fcntl is None, reason="needs Linux's boot id and flock")
def test_a_lock_from_another_container_on_this_kernel_is_judged_by_its_flock(tmp_path, caplog):
    # A killed `docker compose run` leaves a lock of pid 1 on the dead container's hostname.
    out = tmp_path / "out"
    out.mkdir()
    lock = out / rundir.LOCK_FILE
    holder = subprocess.Popen([sys.executable, "-c", FLOCK_HOLDER, str(lock), rundir.boot_id()],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        with pytest.raises(UserError, match=r"in use by another top run \(pid 1 on a-container\)"):
            with rundir.claim(out):
                pass
    finally:
        holder.kill()
        holder.wait()
    assert json.loads(lock.read_text())["host"] == "a-container"  # the kill left it behind
    with caplog.at_level("WARNING"):
        with rundir.claim(out):
            mine = json.loads(lock.read_text())
            assert mine["pid"] == os.getpid() and mine["boot_id"] == rundir.boot_id()
    assert any("a-container" in r.getMessage() and "no longer runs" in r.getMessage() for r in caplog.records)
    assert not lock.exists()
    # Another kernel's lock (another boot id) is another machine's: never taken.
    lock.write_text(json.dumps({"pid": 1, "host": "a-container", "boot_id": "another-boot"}))
    with pytest.raises(UserError, match="in use"):
        with rundir.claim(out):
            pass


def test_only_rank_0_takes_the_lock(tmp_path):
    out = tmp_path / "out"
    with rundir.claim(out, is_main=False):
        assert not out.exists()


# ------------------------------------------------------------------------------------- failures


def test_failed_directory_write_leaves_the_old_copy_and_no_temporary(tmp_path):
    target = tmp_path / "last"
    target.mkdir()
    (target / "weights").write_text("old")
    with pytest.raises(OSError) as raised:
        with atomic_directory(target) as tmp:
            (tmp / "weights").write_text("half")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert raised.value.filename == str(target)
    assert (target / "weights").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]


def test_failed_log_write_leaves_no_half_line(tmp_path, monkeypatch):

    log = run_files.JsonLog(tmp_path / "log.jsonl", True)
    log.write({"step": 1, "loss": float("nan")})
    real_write = os.write

    def half_then_full(fd, data):
        real_write(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(run_files.os, "write", half_then_full)
    with pytest.raises(OSError) as raised:
        log.write({"step": 2, "loss": 0.5})
    assert raised.value.filename == str(tmp_path / "log.jsonl")
    assert (tmp_path / "log.jsonl").read_text() == '{"step": 1, "loss": null}\n'


# ------------------------------------------------------------------------------------- a real full disk (issue 33)


@pytest.fixture
def small_file_system(tmp_path):
    """A 16 MB tmpfs at ``tmp_path / "disk"``, where mounting one is permitted (root); skipped elsewhere."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.decode(errors='replace').strip()[:80]})")
    try:
        yield disk
    finally:
        if subprocess.run(["umount", str(disk)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(disk)], capture_output=True)  # busy: detach it now, free it later


def fill(disk: Path, leave: int) -> Path:
    """Fill ``disk`` until ``leave`` bytes are free; returns the filler file."""
    filler = disk / "filler"
    fd = os.open(str(filler), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        while os.statvfs(str(disk)).f_bavail * os.statvfs(str(disk)).f_frsize > leave:
            os.write(fd, b"\0" * 4096)
    finally:
        os.close(fd)
    return filler


def test_a_disk_that_fills_during_a_save_of_last_is_one_sentence_and_resume_goes_on(tiny, small_file_system, tmp_path,
                                                                                  capsys, monkeypatch):
    """The disk fills after the save at step 2: the save at step 4 fails (safetensors says so in a SafetensorError),
    which is one sentence and exit 1; last/ still holds step 2 whole, and once there is room --resume ends where an
    uninterrupted run ends."""
    from top.training.progress import Reporter

    out = small_file_system / "out"
    flags = ("--target-sparsity", "0.3", "--max-steps", "4", "--save-steps", "2", "--eval-steps", "100",
             "--no-teacher-cache")
    filler = []

    report_step = Reporter.step

    def fill_after_first_save(reporter, step, values, shown):
        report_step(reporter, step, values, shown)
        if step == 3 and not filler:
            filler.append(fill(small_file_system, leave=24 * 1024))

    monkeypatch.setattr(Reporter, "step", fill_after_first_save)
    assert cli.main(train_argv(tiny, out, *flags)) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines()[-1] == (
        f"error: cannot write {out / 'last'}: No space left on device; free some space there."), err
    assert run_files.load_state_file(out / "last")["step"] == 2
    assert not [p for p in small_file_system.rglob("*") if ".tmp" in p.name or p.name.endswith(".old")]
    filler[0].unlink()

    monkeypatch.setattr(Reporter, "step", report_step)
    resumed = cli.main(train_argv(tiny, out, *flags, "--resume"))
    reference = tmp_path / "reference"
    assert resumed in FINISHED and cli.main(train_argv(tiny, reference, *flags)) == resumed
    assert_bit_identical(out / "last", reference / "last")
