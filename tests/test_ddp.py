"""Data parallel with torchrun: 2 CPU processes (gloo) equal one process with the same global batch."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest
import torch
from builders import FINISHED, read_log, single_thread, subprocess_env, tensors, train_argv

from top import cli

STEPS = (
    "--target-sparsity",
    "0.3",
    "--sparsity-epsilon",  # every evaluation after pruning starts qualifies: best/ is written and compared
    "0.3",
    "--max-steps",
    "6",
    "--warmup-epochs",
    "1",
    "--reg-learning-rate",
    "0.1",
    "--eval-steps",
    "3",
    "--save-steps",
    "3",
    "--logging-steps",
    "1",
)

one_thread = pytest.fixture(scope="module", autouse=True)(single_thread)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.multiprocess
def test_two_processes_match_one_process(tiny, tmp_path):
    single = tmp_path / "single"
    argv = train_argv(tiny, single, *STEPS, model_key="model_no_dropout")
    assert cli.main(argv) in FINISHED  # --batch-size 8 in one process

    double = tmp_path / "double"
    argv = train_argv(tiny, double, *STEPS, model_key="model_no_dropout")
    argv[argv.index("--batch-size") + 1] = "4"  # 2 x 4: the same global batch
    env = subprocess_env()
    launched = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes",
            "1",
            "--nproc_per_node",
            "2",
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(_free_port()),
            "-m",
            "top",
            *argv,
        ],
        cwd=str(tmp_path),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert launched.returncode == 0, launched.stdout[-3000:] + launched.stderr[-3000:]

    run = json.loads((double / "run.json").read_text())
    assert run["world_size"] == 2
    left, right = tensors(single / "last"), tensors(double / "last")
    assert left.keys() == right.keys()
    for key in left:
        assert torch.allclose(left[key], right[key], rtol=1e-4, atol=1e-5), key
    # Pruning really ran: the gates and lambdas moved from their start.
    assert float(right["g.lambda_2"]) != 0.0
    assert not torch.equal(right["g.token_loga"], torch.full_like(right["g.token_loga"], 10.0))

    # Only rank 0 writes: one log line per logging step and evaluation.
    single_log, double_log = read_log(single), read_log(double)
    assert [r["step"] for r in double_log] == [r["step"] for r in single_log]
    for a, b in zip(single_log, double_log):
        for key in ("expected_sparsity", "lambda_1", "lambda_2", "loss"):
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-5), (a["step"], key)
