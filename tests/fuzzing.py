"""Seeded fuzzing of ``top eval`` over a tiny checkpoint's files and a data file (issue 24).

Shared by ``tests/test_fuzz.py`` (a fixed seed and a bounded count in CI) and
``tests/fuzz_report.py`` (any seed and count; prints the table). Every trial copies the
checkpoint or the data file, mutates it with its own ``random.Random``, runs ``top eval`` on it
(in-process through ``cli.main``, or as a real subprocess) and is judged:

* exit 0 only when every logit is finite and, for a file that is still vouched for (a checkpoint
  with its manifest, or a structural mutant re-signed so the reader itself is tested), equal to the
  original's; a checkpoint without a manifest may be accepted with other logits (nothing can tell
  a flipped weight from a trained one: that is what the manifest is for), counted on its own;
* otherwise exit 2 and one line on stderr, starting ``error:``;
* never a traceback, never more than ``TIME_LIMIT_S`` seconds, never more than ``MEMORY_LIMIT``
  bytes (the subprocess runs under that RLIMIT_AS; in-process runs must keep the peak RSS of the
  whole test process under it).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import io
import json
import math
import os
import random
import resource
import shutil
import signal
import struct
import subprocess
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TIME_LIMIT_S = 30
MEMORY_LIMIT = 4 << 30  # address space of a subprocess trial; peak RSS of an in-process one

SEED = int(os.environ.get("TOP_FUZZ_SEED", "24"))
# Trials of the largest category; the others take a fixed share of it (see CATEGORIES).
COUNT = int(os.environ.get("TOP_FUZZ_COUNT", "80"))


@dataclasses.dataclass
class World:
    root: Path
    checkpoint: Path  # written by top: it has its manifest
    dev_csv: Path
    dev_json: Path
    logits: List[List[float]]  # the original checkpoint's, on dev_csv (dev_json holds the same examples)


@dataclasses.dataclass
class Outcome:
    category: str
    trial: int
    code: Optional[int]
    error: str  # stderr's last line (or the traceback's last line)
    verdict: str  # refused / correct / differs / traceback / hang / memory / bad-exit / wrong
    seconds: float


def _eval_argv(checkpoint: Path, dev: Path, out: Path) -> List[str]:
    return ["eval", "--checkpoint", str(checkpoint), "--validation-file", str(dev), "--device", "cpu",
            "--no-progress", "--batch-size", "8", "--max-seq-length", "32", "--output-dir", str(out)]


def _predictions(out: Path) -> Optional[List[List[float]]]:
    file = out / "custom.predictions.jsonl"
    if not file.is_file():
        return None
    return [json.loads(line)["logits"] for line in file.read_text().splitlines()]


class _Hang(BaseException):
    pass


def _alarm(signum, frame):
    raise _Hang()


def run_in_process(argv: List[str]) -> Tuple[Optional[int], str, bool, bool]:
    """``(exit code, stderr, traceback?, hang?)`` of ``top ARGV`` run through ``cli.main``."""
    from top import cli

    err = io.StringIO()
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(TIME_LIMIT_S)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            code = cli.main(argv)
        return code, err.getvalue(), False, False
    except _Hang:
        return None, err.getvalue(), False, True
    except Exception:  # noqa: BLE001 - what the command line would print as a traceback
        return None, err.getvalue() + traceback.format_exc(), True, False
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def run_subprocess(argv: List[str]) -> Tuple[Optional[int], str, bool, bool]:
    """The same as a real process: ``python -m top``, under RLIMIT_AS and the time limit."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    try:
        done = subprocess.run([sys.executable, "-m", "top", *argv], capture_output=True, env=env,
                              timeout=TIME_LIMIT_S + 60, preexec_fn=_limit_memory)
    except subprocess.TimeoutExpired as expired:
        return None, (expired.stderr or b"").decode("utf-8", "replace"), False, True
    err = done.stderr.decode("utf-8", "replace")
    return done.returncode, err, "Traceback (most recent call last)" in err, False


def judge(world: World, code: Optional[int], err: str, tb: bool, hang: bool, out: Path, vouched: bool) -> str:
    if hang:
        return "hang"
    if tb or "Traceback (most recent call last)" in err:
        return "traceback"
    lines = [line for line in err.strip().splitlines() if line.strip()]
    if code == 0:
        logits = _predictions(out)
        if logits is None or not all(math.isfinite(x) for row in logits for x in row):
            return "wrong"
        if logits == world.logits:
            return "correct"
        return "wrong" if vouched else "differs"
    errors = [line for line in lines if line.startswith("error:")]
    if code == 2 and len(errors) == 1 and lines[-1] == errors[0]:
        return "refused"
    return "bad-exit"


# ----------------------------------------------------------------------------------------------
# Mutations: each takes the copied directory (or data file) and the trial's generator


def flip_bytes(path: Path, rng: random.Random) -> None:
    data = bytearray(path.read_bytes())
    for _ in range(rng.randint(1, 16)):
        if data:
            data[rng.randrange(len(data))] ^= rng.randint(1, 255)
    path.write_bytes(bytes(data))


def truncate(path: Path, rng: random.Random) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: rng.randrange(len(data))] if data else b"")


def _checkpoint_file(directory: Path, rng: random.Random) -> Path:
    return rng.choice(sorted(p for p in directory.iterdir() if p.is_file()))


def _drop_manifest(directory: Path) -> None:
    if (directory / "manifest.json").exists():
        (directory / "manifest.json").unlink()


def _resign(directory: Path) -> None:
    from top.storage.manifest import write_manifest

    write_manifest(directory)


class _Layout:
    """Pickles as ``_rebuild_tensor_v2(storage, offset, size, stride)`` with a layout of our choosing."""

    def __init__(self, tensor: torch.Tensor, offset: int, size: Sequence[int], stride: Sequence[int]):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.storage = tensor.storage()
        self.offset, self.size, self.stride = offset, tuple(size), tuple(stride)

    def __reduce__(self):
        return (torch._utils._rebuild_tensor_v2,
                (self.storage, self.offset, self.size, self.stride, False, collections.OrderedDict()))


def _gate_state(directory: Path) -> Dict:
    from top.method.checkpoint import load_checkpoint

    return dict(load_checkpoint(directory).gate_state)


def _random_layout(rng: random.Random, elements: int, stride_zero: bool) -> Tuple[int, List[int], List[int]]:
    dims = rng.randint(1, 3)
    size = [rng.choice([1, 2, 3, 2 ** rng.randint(8, 40)]) for _ in range(dims)]
    if stride_zero:
        stride = [0] * dims
        size[-1] = max(size[-1], elements + rng.randint(1, 2**34))
    else:
        stride = [rng.choice([0, 1, 2, 7, 2 ** rng.randint(4, 40)]) for _ in range(dims)]
    return rng.choice([0, 0, 1, elements, 2 ** rng.randint(4, 40)]), size, stride


def bad_storage(directory: Path, rng: random.Random, stride_zero: bool) -> None:
    """A tensor of zs.pt, l0_module.pt or the weights (as pytorch_model.bin) declared larger than its storage."""
    from top.storage.safeload import read_safetensors

    target = rng.choice(["zs.pt", "l0_module.pt", "pytorch_model.bin"])
    small = torch.ones(rng.choice([1, 4, 10]))
    offset, size, stride = _random_layout(rng, small.numel(), stride_zero)
    layout = _Layout(small, offset, size, stride)
    if target == "zs.pt":
        masks = torch.load(str(directory / "zs.pt"))
        masks[rng.choice(["token_z", "pruner_z"])] = layout
        torch.save(masks, str(directory / "zs.pt"))
    elif target == "l0_module.pt":
        state = _gate_state(directory)
        state[rng.choice(["token_loga", "pruner_loga", "lambda_1"])] = layout
        torch.save(state, str(directory / "l0_module.pt"))
    else:
        weights: Dict = dict(read_safetensors(directory / "model.safetensors"))
        weights[rng.choice(sorted(weights))] = layout
        torch.save(weights, str(directory / "pytorch_model.bin"))
        (directory / "model.safetensors").unlink()
    _resign(directory)


def bad_safetensors_header(directory: Path, rng: random.Random) -> None:
    """model.safetensors with a huge header length, offsets past the end, overlapping offsets, a shape or dtype
    that lies, or a header that is not the JSON it should be."""
    path = directory / "model.safetensors"
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    body = data[8 + length :]
    names = sorted(k for k in header if k != "__metadata__")
    kind = rng.choice(["length", "past-end", "overlap", "shape", "dtype", "not-json", "nested"])
    if kind == "length":
        new_length = rng.choice([2**63, 2**40, len(data), length + rng.randint(1, 4096), 100_000_001,
                                 max(0, length - rng.randint(1, length))])
        path.write_bytes(struct.pack("<Q", new_length) + data[8:])
        _resign(directory)
        return
    name = rng.choice(names)
    start, end = header[name]["data_offsets"]
    if kind == "past-end":
        grow = rng.choice([1, 4, 2**20, 2**40])
        header[name]["data_offsets"] = [start + rng.choice([0, grow]), end + grow]
    elif kind == "overlap":
        other = rng.choice(names)
        header[name]["data_offsets"] = list(header[other]["data_offsets"])
        if rng.random() < 0.5:
            header[name]["data_offsets"] = [max(0, start - rng.randint(1, 64)), end]
    elif kind == "shape":
        shape = header[name]["shape"] or [1]
        shape[rng.randrange(len(shape))] *= rng.choice([0, 2, 2**20, 2**33])
        header[name]["shape"] = shape
    elif kind == "dtype":
        header[name]["dtype"] = rng.choice(["F64", "I8", "BOOL", "F16", "U64", "XYZ"])
    text = json.dumps(header)
    if kind == "not-json":
        text = text[: rng.randrange(len(text))]
    elif kind == "nested":
        text = "[" * 100_000 + "]" * 100_000
    raw = text.encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + body)
    _resign(directory)


def mutate_json_data(path: Path, rng: random.Random) -> None:
    records = json.loads(path.read_text())
    kind = rng.choice(["flip", "truncate", "nested", "digits", "label", "text"])
    if kind == "flip":
        flip_bytes(path, rng)
        return
    if kind == "truncate":
        truncate(path, rng)
        return
    if kind == "nested":
        depth = rng.choice([1000, 10_000, 100_000])
        path.write_text("[" * depth + "]" * depth)
        return
    record = rng.choice(records)
    if kind == "digits":
        text = json.dumps(records).replace(json.dumps(record), json.dumps(dict(record, label="@@")))
        path.write_text(text.replace('"@@"', "7" * rng.choice([101, 4301, 5000, 20000])))
        return
    if kind == "label":
        record["label"] = rng.choice([None, True, 1e308, -1, 2**70, "x" * 500, [1, [2]], {"a": 1}, "", 0.5])
    else:
        record["sentence"] = rng.choice(["", None, 5, ["a"], "good " * 20000, "\u0000\ud7ff\u2028", {"x": 1}])
    path.write_text(json.dumps(records))


def mutate_csv_data(path: Path, rng: random.Random) -> None:
    kind = rng.choice(["flip", "flip", "truncate", "digits", "quote"])
    if kind == "flip":
        flip_bytes(path, rng)
    elif kind == "truncate":
        truncate(path, rng)
    elif kind == "digits":
        lines = path.read_text().splitlines()
        row = rng.randrange(1, len(lines))
        lines[row] = lines[row].rsplit(",", 1)[0] + "," + "9" * rng.choice([101, 5000])
        path.write_text("\n".join(lines) + "\n")
    else:
        path.write_text(path.read_text().replace(",", ',"', 1))


# ----------------------------------------------------------------------------------------------
# Categories


@dataclasses.dataclass(frozen=True)
class Category:
    name: str
    share: float  # of COUNT
    kind: str  # "checkpoint" or "data"
    mutate: Callable[[World, Path, random.Random], Path]  # (world, trial dir, rng) -> what eval reads
    vouched: bool  # exit 0 requires the original's logits


def _copy(world: World, trial: Path, keep_manifest: bool) -> Path:
    directory = trial / "ckpt"
    shutil.copytree(str(world.checkpoint), str(directory))
    if not keep_manifest:
        _drop_manifest(directory)
    return directory


def _file_mutation(mutation, keep_manifest: bool):
    def mutate(world: World, trial: Path, rng: random.Random) -> Path:
        directory = _copy(world, trial, keep_manifest)
        mutation(_checkpoint_file(directory, rng), rng)
        return directory

    return mutate


def _structural(mutation):
    def mutate(world: World, trial: Path, rng: random.Random) -> Path:
        directory = _copy(world, trial, keep_manifest=True)
        mutation(directory, rng)
        return directory

    return mutate


def _data(name: str, mutation):
    def mutate(world: World, trial: Path, rng: random.Random) -> Path:
        source = world.dev_csv if name.endswith(".csv") else world.dev_json
        path = trial / source.name
        shutil.copyfile(str(source), str(path))
        mutation(path, rng)
        return path

    return mutate


CATEGORIES = [
    Category("checkpoint byte flips, with manifest", 1.0, "checkpoint", _file_mutation(flip_bytes, True), True),
    Category("checkpoint truncation, with manifest", 0.5, "checkpoint", _file_mutation(truncate, True), True),
    Category("checkpoint byte flips, no manifest", 1.0, "checkpoint", _file_mutation(flip_bytes, False), False),
    Category("checkpoint truncation, no manifest", 0.5, "checkpoint", _file_mutation(truncate, False), False),
    Category("stride-0 storages (re-signed)", 0.3, "checkpoint",
             _structural(lambda d, rng: bad_storage(d, rng, stride_zero=True)), True),
    Category("oversized storages (re-signed)", 0.3, "checkpoint",
             _structural(lambda d, rng: bad_storage(d, rng, stride_zero=False)), True),
    Category("bad safetensors headers (re-signed)", 0.5, "checkpoint", _structural(bad_safetensors_header), True),
    Category("data file: csv", 0.4, "data", _data("dev.csv", mutate_csv_data), False),
    Category("data file: json", 0.4, "data", _data("dev.json", mutate_json_data), False),
]


def trials_of(category: Category, count: int = COUNT) -> int:
    return max(1, int(round(category.share * count)))


def build_world(root: Path) -> World:
    from builders import tiny_checkpoint, write_custom_csv

    from top.data.custom import load_custom_file

    root.mkdir(parents=True, exist_ok=True)
    checkpoint = tiny_checkpoint(root / "checkpoint", layers=3, keep_bins=5, seed=3)
    dev_csv = write_custom_csv(root / "dev.csv", n=8)
    examples, _, labels = load_custom_file(dev_csv)
    dev_json = root / "dev.json"
    dev_json.write_text(json.dumps([{"sentence": e.text_a, "label": int(labels[e.label])} for e in examples]))
    out = root / "original"
    code, err, tb, hang = run_in_process(_eval_argv(checkpoint, dev_csv, out))
    assert code == 0 and not tb and not hang, err
    logits = _predictions(out)
    json_out = root / "original-json"
    assert run_in_process(_eval_argv(checkpoint, dev_json, json_out))[0] == 0
    assert _predictions(json_out) == logits
    return World(root, checkpoint, dev_csv, dev_json, logits)


def run_trial(world: World, category: Category, number: int, seed: int = SEED, subprocess_run: bool = False
              ) -> Outcome:
    rng = random.Random(f"{seed}:{category.name}:{number}")
    trial = world.root / "trials" / f"{CATEGORIES.index(category)}-{number}"
    shutil.rmtree(str(trial), ignore_errors=True)
    trial.mkdir(parents=True)
    try:
        target = category.mutate(world, trial, rng)
        if category.kind == "checkpoint":
            argv = _eval_argv(target, world.dev_csv, trial / "out")
        else:
            argv = _eval_argv(world.checkpoint, target, trial / "out")
        started = time.perf_counter()
        code, err, tb, hang = (run_subprocess if subprocess_run else run_in_process)(argv)
        seconds = time.perf_counter() - started
        verdict = judge(world, code, err, tb, hang, trial / "out", category.vouched)
        if not subprocess_run and peak_rss() > MEMORY_LIMIT:
            verdict = "memory"
        lines = err.strip().splitlines()
        return Outcome(category.name, number, code, lines[-1][:300] if lines else "", verdict, seconds)
    finally:
        shutil.rmtree(str(trial), ignore_errors=True)


def peak_rss() -> int:
    """The process's peak resident set size, in bytes (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_all(world: World, count: int = COUNT, seed: int = SEED, progress=None) -> List[Outcome]:
    outcomes = []
    for category in CATEGORIES:
        for number in range(trials_of(category, count)):
            outcome = run_trial(world, category, number, seed)
            outcomes.append(outcome)
            if progress is not None:
                progress(outcome)
    return outcomes


FAILURES = ("traceback", "hang", "memory", "bad-exit", "wrong")


def table(outcomes: List[Outcome]) -> str:
    """The closing note's table, one row per category and a total."""
    head = ("category", "trials", "one-sentence refusals", "correct accepts",
            "accepts, other logits (no manifest, or changed data)", "tracebacks", "hangs", "other failures")
    rows = []
    for name in [c.name for c in CATEGORIES] + ["total"]:
        mine = [o for o in outcomes if o.category == name or name == "total"]
        if not mine:
            continue
        count = collections.Counter(o.verdict for o in mine)
        rows.append((name, len(mine), count["refused"], count["correct"], count["differs"], count["traceback"],
                     count["hang"], count["memory"] + count["bad-exit"] + count["wrong"]))
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)
