"""`nox -s gpu`: the CUDA checks, one prepared script of at most 8 minutes on one GPU.

Each step runs in a process of its own with a time limit of its own, and a step that fails is
recorded and the next one runs:

1. ``tests``: the tests that take a ``device`` (compact, faithful and training: ``-m device``) with
   ``pytest --device cuda``;
2. ``reproduce``: ``top reproduce --no-assert`` on the tests' checkpoints (tests/builders.py's tiny
   published-layout world: random weights, so the table is not asserted) on cuda;
3. ``bench``: ``top bench`` at batch 1 and 32 of a bert-base-shaped checkpoint with CoLA-like gates
   (built as scripts/bench_suite.py builds it: random weights, which is enough for timing) on a
   synthetic CoLA-like file;
4. ``calibrate``: ``top calibrate --device cuda`` of the same checkpoint at batch 32;
5. ``syncs``: the torch profiler over compact forward passes on cuda, counting what makes the host
   wait for the GPU (cudaStreamSynchronize, cudaDeviceSynchronize, aten::item and
   aten::_local_scalar_dense): the compact path reads the input lengths once per call and must not
   wait per layer.

Writes gpu.json and gpu.md to ``--output-dir`` (default: ``$OUT`` when set, else outputs/gpu).
Without a CUDA GPU it refuses in one sentence (exit status 2).

    python scripts/gpu_check.py --output-dir outputs/gpu
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]
BUDGET_S = 480  # the whole script: 8 minutes
STEP_LIMITS_S = {"tests": 170, "reproduce": 50, "bench": 130, "calibrate": 80, "syncs": 40}
# What makes the host wait for the device, as the profiler names it.
SYNC_EVENTS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "aten::item", "aten::_local_scalar_dense")
NO_GPU = ("nox -s gpu needs a CUDA GPU and torch sees none here; run it on a machine with one "
          "(nvidia-smi lists it) and a CUDA build of torch.")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = os.environ.get("OUT") or str(ROOT / "outputs" / "gpu")
    parser.add_argument("--output-dir", default=default, help="where gpu.json, gpu.md and each step's files go")
    parser.add_argument("--budget", type=int, default=BUDGET_S, help="seconds for the whole script")
    parser.add_argument("--steps", nargs="+", default=list(STEP_LIMITS_S), choices=list(STEP_LIMITS_S))
    return parser.parse_args(argv)


def cuda_missing() -> Optional[str]:
    """The one sentence to refuse with when there is no CUDA GPU (None when there is one)."""
    try:
        import torch
    except ImportError:
        return "nox -s gpu needs torch, which is not installed here; install a CUDA build of torch."
    return None if torch.cuda.is_available() else NO_GPU


# ----------------------------------------------------------------------------------------------
# Synchronisations per forward pass


def count_syncs(forward: Callable[[], Any], calls: int, device: str) -> Dict[str, float]:
    """Per call of ``forward``, how often each of SYNC_EVENTS happened (the torch profiler's count), and the
    host waits in all (``total``); ``forward`` runs once first, unprofiled."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with torch.no_grad():
        forward()
        if device == "cuda":
            torch.cuda.synchronize()
        with profile(activities=activities) as prof:
            for _ in range(calls):
                forward()
            if device == "cuda":
                torch.cuda.synchronize()  # outside the calls, but inside the profile: counted below
    counts = {name: 0 for name in SYNC_EVENTS}
    for event in prof.events():
        if event.name in counts:
            counts[event.name] += 1
    if device == "cuda":
        counts["cudaDeviceSynchronize"] = max(0, counts["cudaDeviceSynchronize"] - 1)  # the closing one
    per_call = {name: count / calls for name, count in counts.items()}
    # aten::item goes through aten::_local_scalar_dense: one wait, counted once.
    per_call["total"] = (per_call["cudaStreamSynchronize"] + per_call["cudaDeviceSynchronize"]
                         + max(per_call["aten::item"], per_call["aten::_local_scalar_dense"]))
    return per_call


def compact_sync_counts(device: str, layers: int = 12, calls: int = 5) -> Dict[str, Any]:
    """The compact path of a bert-base-deep tiny-wide model, pruning at 2..L-1, under the profiler."""
    import torch
    from transformers import BertConfig

    from top.method.compact import CompactPlan, compact_forward
    from top.method.modeling import ToPClassifier

    torch.manual_seed(0)
    config = BertConfig(vocab_size=100, hidden_size=64, num_hidden_layers=layers, num_attention_heads=4,
                        intermediate_size=128, num_labels=2)
    model = ToPClassifier.from_config(config).eval().to(device)
    locations = model.prune_locations
    token_z = torch.ones(len(locations), 10)
    token_z[:, 7:] = 0.0  # every location drops its three lowest-ranked bins: every layer after the first prunes
    plan = CompactPlan.from_gates(token_z.to(device), torch.ones(len(locations), device=device), locations, 64)
    ids = torch.randint(5, 100, (8, 64), device=device)
    mask = torch.ones_like(ids)
    for row, length in enumerate((64, 50, 41, 33, 20, 12, 7, 3)):
        mask[row, length:] = 0

    def forward():
        return compact_forward(model, plan, ids, mask)

    counts = count_syncs(forward, calls, device)
    kept = forward().kept_lengths
    return {"layers": layers, "pruning_layers": len(locations), "calls": calls, "per_call": counts,
            "tokens_dropped": bool((kept[:, -1] < kept[:, 0]).any()),
            "verdict": "one host wait per call (the input lengths), none per layer"
            if counts["total"] <= 1 else f"{counts['total']:g} host waits per call: the compact path synchronises"}


# ----------------------------------------------------------------------------------------------
# The steps


def run_step(name: str, command: List[str], limit: float, log: Path, env: Optional[Dict[str, str]] = None) -> Dict:
    started = time.perf_counter()
    with open(log, "w", encoding="utf-8") as handle:
        try:
            done = subprocess.run(command, cwd=str(ROOT), stdout=handle, stderr=subprocess.STDOUT,
                                  env=env, timeout=limit)
            status = "ok" if done.returncode == 0 else f"failed (exit status {done.returncode})"
        except subprocess.TimeoutExpired:
            status = f"timed out after {limit:.0f} s"
    seconds = round(time.perf_counter() - started, 1)
    print(f"{name}: {status} in {seconds} s (log {log})", flush=True)
    return {"step": name, "status": status, "seconds": seconds, "command": command, "log": str(log)}


def top_command(*args: str) -> List[str]:
    return [sys.executable, "-m", "top", *args]


def environment() -> Dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def prepare_bench_inputs(work: Path, n_examples: int = 256) -> Dict[str, Path]:
    """The bert-base-shaped checkpoint with CoLA-like gates, and a CoLA-like validation file of its words."""
    import torch
    from bench_suite import TASKS, build_checkpoint, make_example, synthetic_lengths

    from top.data.tasks import get_task

    spec = TASKS["cola"]
    task = get_task(spec["task"])
    gen = torch.Generator().manual_seed(0)
    lengths = synthetic_lengths(spec, task, gen)
    checkpoint = work / "cola-checkpoint"
    words, _ = build_checkpoint(checkpoint, "cola", lengths, small=False, seed=0)
    dev = work / "cola-dev.jsonl"
    with open(dev, "w", encoding="utf-8") as handle:
        for n in lengths[:n_examples]:
            example = make_example(n, False, words, gen)
            handle.write(json.dumps({"sentence": example.text_a, "label": example.label}) + "\n")
    return {"checkpoint": checkpoint, "dev": dev, "task_length": task.task_length}


def markdown(report: Dict[str, Any]) -> str:
    lines = [f"# nox -s gpu on {report['gpu']}", "", f"torch {report['torch']}, CUDA {report['cuda']}", "",
             "| step | status | seconds |", "| --- | --- | ---: |"]
    lines += [f"| {s['step']} | {s['status']} | {s['seconds']} |" for s in report["steps"]]
    if report.get("bench"):
        lines += ["", "| batch | compact ms | speedup vs dense_dynamic | FLOPs ratio | agreement |",
                  "| ---: | ---: | ---: | ---: | ---: |"]
        for b in report["bench"]:
            d = b["baselines"]["dense_dynamic"]
            lines.append("| {} | {:.2f} | {:.2f}x | {:.2f}x | {:.4f} |".format(
                b["batch_size"], b["compact"]["ms_per_batch"], d["speedup"], d["flops_ratio"],
                b["agreement_with_faithful"]))
    if report.get("calibrate"):
        c = report["calibrate"]
        held = c["compact"]["fit_error"]["held_back"]
        lines += ["", f"calibrate (batch {c['batch_size']}): per layer {c['per_layer_ms']['fixed']:.3f} ms fixed, "
                  f"{c['per_layer_ms']['per_attention_token']:.5f} ms per attention token; held-back error median "
                  f"{held['median_relative_error']}, max {held['max_relative_error']}"]
    if report.get("syncs"):
        s = report["syncs"]
        lines += ["", f"host waits per compact forward ({s['layers']} layers, {s['pruning_layers']} pruning): "
                  + ", ".join(f"{k} {v:g}" for k, v in s["per_call"].items()) + f" -> {s['verdict']}"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    missing = cuda_missing()
    if missing:
        print(f"error: {missing}", file=sys.stderr)
        return 2
    import torch

    out = Path(args.output_dir)
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    deadline = time.perf_counter() + args.budget
    env = environment()
    report: Dict[str, Any] = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__,
                              "cuda": torch.version.cuda, "steps": []}

    def limit(name: str) -> float:
        return max(1.0, min(STEP_LIMITS_S[name], deadline - time.perf_counter()))

    if "tests" in args.steps:
        report["steps"].append(run_step("tests", [
            sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--device", "cuda", "-m", "device",
            "tests/test_compact.py", "tests/test_modeling.py", "tests/test_train.py"], limit("tests"),
            out / "tests.log", env))
    if "reproduce" in args.steps:
        world = work / "world"
        subprocess.run([sys.executable, str(ROOT / "tests" / "builders.py"), str(world)], cwd=str(ROOT), env=env,
                       check=True, timeout=120)
        report["steps"].append(run_step("reproduce", top_command(
            "reproduce", "--checkpoint-dir", str(world / "checkpoints"), "--data-dir", str(world / "glue"),
            "--tasks", "cola,sst2", "--no-assert", "--device", "cuda", "--output-dir", str(out / "reproduce")),
            limit("reproduce"), out / "reproduce.log", env))
    inputs = None
    if "bench" in args.steps or "calibrate" in args.steps:
        inputs = prepare_bench_inputs(work)
    if "bench" in args.steps:
        report["bench"] = []
        for batch_size, examples in ((1, 48), (32, 256)):
            output = out / f"bench-b{batch_size}.json"
            step = run_step(f"bench batch {batch_size}", top_command(
                "bench", "--checkpoint", str(inputs["checkpoint"]), "--validation-file", str(inputs["dev"]),
                "--max-seq-length", str(inputs["task_length"]), "--batch-size", str(batch_size), "--device", "cuda",
                "--max-examples", str(examples), "--output", str(output)), limit("bench") / 2,
                out / f"bench-b{batch_size}.log", env)
            report["steps"].append(step)
            if output.is_file():
                report["bench"].append(json.loads(output.read_text()))
    if "calibrate" in args.steps:
        output = out / "latency-cuda-b32.json"
        report["steps"].append(run_step("calibrate", top_command(
            "calibrate", "--model", str(inputs["checkpoint"]), "--validation-file", str(inputs["dev"]),
            "--max-seq-length", str(inputs["task_length"]), "--batch-size", "32", "--device", "cuda",
            "--output", str(output)), limit("calibrate"), out / "calibrate.log", env))
        if output.is_file():
            report["calibrate"] = {k: v for k, v in json.loads(output.read_text()).items() if k != "points"}
    if "syncs" in args.steps:
        started = time.perf_counter()
        try:
            report["syncs"] = compact_sync_counts("cuda")
            status = "ok" if report["syncs"]["per_call"]["total"] <= 1 else "failed (the compact path synchronises)"
        except Exception as error:  # noqa: BLE001 - recorded, and the report is still written
            status = f"failed ({type(error).__name__}: {error})"
        report["steps"].append({"step": "syncs", "status": status,
                                "seconds": round(time.perf_counter() - started, 1)})
    (out / "gpu.json").write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    text = markdown(report)
    (out / "gpu.md").write_text(text, encoding="utf-8")
    print(text)
    return 0 if all(s["status"] == "ok" for s in report["steps"]) else 1


if __name__ == "__main__":
    sys.exit(main())
