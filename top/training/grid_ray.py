"""``top grid --backend ray``: the grid as Ray Tune trials, one ``top train`` run per trial.

Ray is optional (the ``ray`` extra) and imported only here, when the backend is asked for.
With no ``--address`` (and no ``RAY_ADDRESS``), ``ray.init()`` starts Ray on this machine; with
one, the grid joins that cluster. Every node must reach ``OUT/`` at the same path (shared storage,
like Tune's own ``storage_path``) and run the same Ray and top versions.

A trial starts ``top train`` as a subprocess on its node, with ``--resume`` when the run directory
already holds a ``last/`` (an earlier attempt's, on any node), so a trial that Tune reschedules
after its node died (``FailureConfig``) continues where that attempt last saved, bit-identical to a
run that was never stopped. The child is tied to the Ray worker that started it (``PR_SET_PDEATHSIG``):
when the worker dies, so does the run, and no orphan goes on writing the directory. While the run
lives, the trial reports each dev evaluation from its ``log.jsonl`` to Tune. ``OUT/`` stays the
record (``grid_run.json`` lists every attempt and the node it ran on); ``OUT/ray/`` is Tune's view.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

from top.errors import UserError, install_hint
from top.storage import rundir
from top.storage.io import atomic_write_json
from top.training.grid_launch import FINISHED_EXITS, STATUS_FILE, launch, read_status, train_command_prefix

logger = logging.getLogger(__name__)

INSTALL_HINT = install_hint("ray")
# How long a new attempt waits for the run directory's lock to go (a killed attempt's run on this
# machine dies with its worker, a moment later); after that `top train` refuses with its own sentence.
LOCK_WAIT_S = 120.0
# `top train` exits 2 on bad input: the same attempt would fail again, so it is not retried.
USER_ERROR_EXIT = 2
REPORTED_KEYS = ("step", "score", "expected_sparsity", "expected_sequence_sparsity")


@dataclasses.dataclass(frozen=True)
class TrialSpec:
    """One run, as the driver hands it to a trial: its directory and its two possible argument lists."""

    run_id: str
    hyperparameters: Dict[str, Any]
    run_dir: str
    args: List[str]  # `top train` options, fresh
    resume_args: List[str]  # the same with --resume, taken when last/ exists as the attempt starts
    inputs: Optional[Dict[str, Any]] = None  # what the run is trained from, for grid_run.json


@dataclasses.dataclass(frozen=True)
class RaySettings:
    address: Optional[str] = None
    gpus_per_run: int = 1
    cpus_per_run: float = 1.0
    max_failures: int = 3
    prefix: Optional[List[str]] = None  # the command before the options; None: each node's own
    cwd: str = dataclasses.field(default_factory=os.getcwd)  # relative paths are read from here


def import_ray():
    """Ray and Ray Tune, or one sentence saying how to install them."""
    try:
        import ray
        from ray import tune
    except ImportError:
        raise UserError(f"--backend ray needs Ray Tune, which is not installed; run `{INSTALL_HINT}` "
                        "(every node of the cluster needs the same Ray version), or use --backend local.") from None
    return ray, tune


def _tune_api(ray, tune):
    """(report, RunConfig, FailureConfig) of this Ray: in ``ray.tune`` from 2.41, ``ray.train`` before."""
    major, minor = (int(p) for p in ray.__version__.split(".")[:2])
    if (major, minor) >= (2, 41):
        return tune.report, tune.RunConfig, tune.FailureConfig
    from ray import train as ray_train

    return ray_train.report, ray_train.RunConfig, ray_train.FailureConfig


def _check_reachable(address: str) -> None:
    """``HOST:PORT`` answers on TCP, or one sentence (ray.init would wait a long while first)."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"--address {address!r} is not auto or HOST:PORT; give the address `ray start --head` "
                        "printed, e.g. 10.0.0.1:6379.")
    try:
        with socket.create_connection((host, int(port)), timeout=5):
            return
    except OSError as exc:
        raise UserError(f"No Ray cluster answers at {address} ({exc.strerror or exc}); start one there with "
                        "`ray start --head --port PORT`, or drop --address to run Ray on this machine.") from None


def connect(ray, address: Optional[str]) -> None:
    """Join the cluster at ``address`` (or RAY_ADDRESS), or start Ray on this machine."""
    named = address or os.environ.get("RAY_ADDRESS")
    if named and named != "auto" and "://" not in named:
        _check_reachable(named)
    try:
        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING,
                 configure_logging=True, log_to_driver=True)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        where = f"at {named}" if named else "on this machine"
        raise UserError(f"Ray could not start or join a cluster {where} ({first}); check the address "
                        "(RAY_ADDRESS / --address), and on a token-authenticated cluster set RAY_AUTH_MODE=token "
                        "with the head's token.") from None


def _die_with_parent() -> None:
    """In the child, before exec: be killed when the Ray worker that started it dies (Linux)."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() == 1:  # the worker died before prctl took hold
        os._exit(137)


class EvalReporter:
    """Reads the dev evaluations a run appends to its ``log.jsonl`` and hands each one to ``report``
    once (a resumed run rewrites its log as a new file, cut back to its step: it is read again from
    the start, and steps already reported are not sent again)."""

    def __init__(self, log_path: Path, report, run_id: str):
        self.path, self.report, self.run_id = Path(log_path), report, run_id
        self.offset, self.inode, self.reported = 0, None, set()

    def __call__(self) -> None:
        try:
            stat = self.path.stat()
        except OSError:
            return
        if stat.st_ino != self.inode or stat.st_size < self.offset:  # a new file, or cut short
            self.offset, self.inode = 0, stat.st_ino
        with open(self.path, "rb") as log:
            log.seek(self.offset)
            chunk = log.read()
        whole = chunk[: chunk.rfind(b"\n") + 1]  # a line still being written waits for the next call
        self.offset += len(whole)
        for line in whole.splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict) and "score" in record and record.get("step") not in self.reported:
                    self.reported.add(record.get("step"))
                    self.report({"run_id": self.run_id, **{k: record.get(k) for k in REPORTED_KEYS}})


def _node_alive(ray, node_id: Optional[str]) -> bool:
    if not node_id:
        return True
    with contextlib.suppress(Exception):
        return any(n.get("NodeID") == node_id and n.get("Alive") for n in ray.nodes())
    return True


def _wait_for_run_dir(ray, run_dir: Path) -> None:
    """Wait while the run directory is still held by an earlier attempt; a lock whose node the
    cluster saw die (another machine's, so no flock can tell) is taken over."""
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        held = rundir.holder(run_dir)
        if held is None:
            return
        attempts = read_status(run_dir).get("attempt_log") or [{}]
        last = attempts[-1] if isinstance(attempts[-1], dict) else {}
        if (held.get("host") and held.get("host") == last.get("host") and held.get("host") != socket.gethostname()
                and not _node_alive(ray, last.get("node_id"))):
            rundir.release_for_lost_host(run_dir, held["host"], f"{last.get('node_id')} died")
            return
        if time.monotonic() > deadline:
            return
        time.sleep(1.0)


def _trial(config: Mapping[str, Any], specs: Mapping[str, TrialSpec], settings: RaySettings) -> None:
    """One Tune trial: one attempt at one `top train` run, on the node Ray gave it."""
    ray, tune = import_ray()
    report = _tune_api(ray, tune)[0]
    spec = specs[config["run_id"]]
    run_dir = Path(spec.run_dir)
    _wait_for_run_dir(ray, run_dir)
    context = ray.get_runtime_context()
    where = {"node_id": context.get_node_id(), "host": socket.gethostname(),
             "ip": ray.util.get_node_ip_address(), "worker_pid": os.getpid()}
    where["node"] = f"{where['host']} {where['ip']} node {where['node_id'][:12]}"
    prefix = train_command_prefix(settings.gpus_per_run, settings.prefix)
    args = spec.resume_args if (run_dir / "last").is_dir() else spec.args
    reporter = EvalReporter(run_dir / "log.jsonl", report, spec.run_id)
    status = launch(spec.run_id, spec.hyperparameters, prefix + args, run_dir, where=where, poll=reporter,
                    preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None, cwd=settings.cwd,
                    inputs=spec.inputs)
    attempt = status["attempt_log"][-1]
    logger.info("run %s attempt %d on %s: %s, exit %d", spec.run_id, attempt["attempt"], where["node"],
                f"resumed from step {attempt['resumed_from_step']}" if attempt.get("resumed_from_step") is not None
                else "from the start", status["returncode"])
    if status["returncode"] not in FINISHED_EXITS + (USER_ERROR_EXIT,):
        raise RuntimeError(f"top train for {spec.run_id} exited {status['returncode']} on {where['node']}; "
                           f"see {run_dir / 'train.log'}")
    report({"run_id": spec.run_id, "done": status["returncode"] in FINISHED_EXITS})


def _resources(ray, settings: RaySettings) -> Dict[str, float]:
    """What each trial asks for: its CPUs, and --gpus-per-run GPUs when the cluster has any."""
    has_gpus = float(ray.cluster_resources().get("GPU", 0)) > 0
    return {"cpu": settings.cpus_per_run, "gpu": float(settings.gpus_per_run) if has_gpus else 0.0}


def run_trials(trials: Sequence[TrialSpec], output_dir: Path, settings: RaySettings) -> None:
    """Run ``trials`` as a Tune grid; each run's directory records its attempts and outcome."""
    ray, tune = import_ray()
    if not trials:
        return
    connect(ray, settings.address)
    try:
        _report, run_config, failure_config = _tune_api(ray, tune)
        resources = _resources(ray, settings)
        logger.info("Ray %s: %d trial(s), each asking for %s; cluster %s", ray.__version__, len(trials),
                    resources, ray.cluster_resources())
        trainable = tune.with_resources(
            tune.with_parameters(_trial, specs={t.run_id: t for t in trials}, settings=settings), resources)
        tuner = tune.Tuner(
            trainable,
            param_space={"run_id": tune.grid_search([t.run_id for t in trials])},
            tune_config=tune.TuneConfig(reuse_actors=False),
            run_config=run_config(name="grid", storage_path=str(Path(output_dir) / "ray"), verbose=1,
                                  failure_config=failure_config(max_failures=settings.max_failures)),
        )
        tuner.fit()
    finally:
        ray.shutdown()
    for spec in trials:  # an attempt whose node died leaves "running": after the grid it is a failure
        status = read_status(Path(spec.run_dir))
        if status.get("status") == "running":
            status["status"] = "failed"
            status["note"] = "the last attempt was lost with its node; rerun top grid to resume it"
            atomic_write_json(Path(spec.run_dir) / STATUS_FILE, status)
