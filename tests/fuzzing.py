"""Seeded fuzzing of ``top eval`` over a tiny checkpoint's files and a data file (issues 24 and 33).

Shared by ``tests/test_fuzz.py`` (a fixed seed and a bounded count in CI) and
``tests/fuzz_report.py`` (any seed and count; prints the table). Every trial copies the
checkpoint or the data file, mutates it with its own ``random.Random``, runs ``top eval`` on it
(in-process through ``cli.main``, or as a real subprocess) and is judged:

Besides byte flips, truncations and malformed tensors, the tokenizer's files (vocab.txt, tokenizer.json,
tokenizer_config.json, special_tokens_map.json) and config.json's keys are mutated field by field
(dropped, repeated, retyped, made huge), as a person editing them would, so without the manifest;
an ``auto_map`` must always be refused, and the code it names must never run.

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
    except KeyboardInterrupt:
        raise
    except BaseException:  # noqa: BLE001 - what the command line would print as a traceback (a panic included)
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
    if tb or "Traceback (most recent call last)" in err or "panicked at" in err:  # a Rust panic's report too
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
# Tokenizer files and config.json keys (issue 33): structural mutants, judged without the manifest


TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
# Values a field should never hold, and values past any sensible size.
ODD_VALUES = [None, True, False, "", "x" * 5000, [], {}, [1, [2]], {"a": {"b": 1}}, 1.5, -1, 0, "[PAD]", "\u0000"]
HUGE_VALUES = [10**9, 2**31, 2**63, 10**30, 1e308, -(10**9), -(2**63)]


def _json_nodes(obj, path=(), depth=0) -> List[Tuple]:
    """Every (path, value) in a JSON document, breadth bounded so a large vocabulary is sampled, not walked."""
    found = [(path, obj)]
    if depth >= 6:
        return found
    if isinstance(obj, dict):
        items = list(obj.items())
    elif isinstance(obj, list):
        items = list(enumerate(obj))
    else:
        return found
    for key, value in items[:40]:
        found += _json_nodes(value, path + (key,), depth + 1)
    return found


def _parent(obj, path):
    for key in path[:-1]:
        obj = obj[key]
    return obj


def _below(target, key):
    """The rest of the path ``target`` inside ``key`` (None when the path does not go through it)."""
    return target[1:] if target and target[0] == key else None


def _dumps_with_duplicate(obj, target, key, value) -> str:
    """``obj`` as JSON text whose object at ``target`` repeats ``key`` (with ``value``) after its own."""
    if isinstance(obj, dict):
        parts = [f"{json.dumps(k)}: {_dumps_with_duplicate(v, _below(target, k), key, value)}" for k, v in obj.items()]
        if target == ():
            parts.append(f"{json.dumps(key)}: {json.dumps(value)}")
        return "{" + ", ".join(parts) + "}"
    if isinstance(obj, list):
        return "[" + ", ".join(_dumps_with_duplicate(v, _below(target, i), key, value) for i, v in enumerate(obj)) + "]"
    return json.dumps(obj)


def mutate_json_fields(path: Path, rng: random.Random, huge: Sequence = HUGE_VALUES) -> None:
    """Drop a key, retype a value, make a number huge, repeat a key with another value, or nest the file."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        flip_bytes(path, rng)
        return
    kind = rng.choice(["drop", "retype", "huge", "duplicate", "nested", "truncate"])
    nodes = [(p, v) for p, v in _json_nodes(document) if p]
    if kind == "nested" or not nodes:
        depth = rng.choice([1000, 100_000])
        path.write_text("[" * depth + "]" * depth)
        return
    if kind == "truncate":
        truncate(path, rng)
        return
    where, value = rng.choice(nodes)
    parent = _parent(document, where)
    if kind == "drop":
        del parent[where[-1]]
    elif kind == "retype":
        parent[where[-1]] = rng.choice([v for v in ODD_VALUES if type(v) is not type(value)] or ODD_VALUES)
    elif kind == "huge":
        numbers = [(p, v) for p, v in nodes if isinstance(v, (int, float)) and not isinstance(v, bool)]
        where, _ = rng.choice(numbers or [(where, value)])
        _parent(document, where)[where[-1]] = rng.choice(list(huge))
    else:
        objects = [p for p, v in _json_nodes(document) if isinstance(v, dict) and v]
        target = rng.choice(objects)
        node = document
        for key in target:
            node = node[key]
        path.write_text(_dumps_with_duplicate(document, target, rng.choice(sorted(node)), rng.choice(ODD_VALUES)))
        return
    path.write_text(json.dumps(document))


def mutate_vocab(directory: Path, rng: random.Random) -> None:
    """vocab.txt emptied, cut, reordered, repeated, grown past the embeddings or garbled; tokenizer.json
    (which the fast tokenizer would read instead) removed half the time."""
    if rng.random() < 0.5 and (directory / "tokenizer.json").exists():
        (directory / "tokenizer.json").unlink()
    path = directory / "vocab.txt"
    words = path.read_text(encoding="utf-8").splitlines()
    kind = rng.choice(["empty", "drop", "swap", "duplicate", "grow", "long-line", "binary", "crlf", "link"])
    if kind == "empty":
        words = []
    elif kind == "drop":
        for _ in range(rng.randint(1, 5)):
            if words:
                words.pop(rng.randrange(min(len(words), 8)))  # the special tokens first
    elif kind == "swap":
        i, j = rng.randrange(len(words)), rng.randrange(len(words))
        words[i], words[j] = words[j], words[i]
    elif kind == "duplicate":
        words.insert(rng.randrange(len(words)), rng.choice(words))
    elif kind == "grow":
        words += [f"[unused{i}]" for i in range(rng.choice([1, 100, 100_000]))]
    elif kind == "long-line":
        words.insert(rng.randrange(len(words)), "x" * rng.choice([1000, 1_000_000]))
    elif kind == "binary":
        path.write_bytes(bytes(rng.randrange(256) for _ in range(rng.randint(1, 4096))))
        return
    elif kind == "crlf":
        path.write_bytes("\r\n".join(words).encode("utf-8"))
        return
    else:
        path.unlink()
        os.symlink(rng.choice([str(directory / "nowhere.txt"), str(directory), str(directory / "config.json")]),
                   str(path))
        return
    path.write_text("\n".join(words) + ("\n" if words else ""), encoding="utf-8")


# A pattern that backtracks exponentially: tokenizers panics when Oniguruma gives up on "aaa...ab".
BACKTRACKING_REGEX = "(a+)+c"


def mutate_tokenizer_json(directory: Path, rng: random.Random) -> None:
    path = directory / "tokenizer.json"
    document = json.loads(path.read_text(encoding="utf-8"))
    kind = rng.choice(["fields", "fields", "regex", "bad-regex", "type", "ids", "padding", "truncation"])
    if kind == "fields":
        mutate_json_fields(path, rng)
        return
    if kind in ("regex", "bad-regex"):
        pattern = BACKTRACKING_REGEX if kind == "regex" else rng.choice(["(", "[a-", "(?<=a+)b", "\\"])
        document["pre_tokenizer"] = {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated",
                                     "invert": False}
    elif kind == "type":
        section = rng.choice(["model", "normalizer", "pre_tokenizer", "post_processor", "decoder"])
        if isinstance(document.get(section), dict):
            document[section]["type"] = rng.choice(["NoSuchType", "BPE", "Unigram", "", 5])
    elif kind == "ids":
        vocab = document.get("model", {}).get("vocab")
        if isinstance(vocab, dict) and vocab:
            vocab[rng.choice(sorted(vocab))] = rng.choice([10**6, 2**32 - 1, 2**40, -1])
    elif kind == "padding":
        document["padding"] = {"strategy": "BatchLongest", "direction": rng.choice(["Right", "Left"]),
                               "pad_to_multiple_of": rng.choice([None, 0, 10**6]), "pad_id": rng.choice([0, 10**6]),
                               "pad_type_id": rng.choice([0, 7]), "pad_token": "[PAD]"}
    else:
        document["truncation"] = {"direction": "Right", "max_length": rng.choice([0, 1, 10**12]),
                                  "strategy": "LongestFirst", "stride": rng.choice([0, 5])}
    path.write_text(json.dumps(document))


def mutate_tokenizer_config(directory: Path, rng: random.Random) -> None:
    path = directory / "tokenizer_config.json"
    document = json.loads(path.read_text(encoding="utf-8"))
    kind = rng.choice(["fields", "fields", "max-length", "class", "side", "special"])
    if kind == "fields":
        mutate_json_fields(path, rng)
        return
    if kind == "max-length":
        document["model_max_length"] = rng.choice([0, -1, 10**40, "512", 1e308, None])
    elif kind == "class":
        document["tokenizer_class"] = rng.choice(["NoSuchTokenizer", "RobertaTokenizer", "GPT2Tokenizer", 5, ""])
    elif kind == "side":
        document[rng.choice(["padding_side", "truncation_side"])] = rng.choice(["left", "middle", 1])
    else:
        document[rng.choice(["pad_token", "unk_token", "cls_token", "sep_token"])] = rng.choice(
            [None, "[NEW]", {"content": 5}, ["[PAD]"], "", "x" * 10_000])
    path.write_text(json.dumps(document))


def mutate_special_tokens_map(directory: Path, rng: random.Random) -> None:
    path = directory / "special_tokens_map.json"
    document = json.loads(path.read_text(encoding="utf-8"))
    if rng.random() < 0.5:
        mutate_json_fields(path, rng)
        return
    key = rng.choice(["pad_token", "unk_token", "cls_token", "sep_token", "mask_token", "additional_special_tokens"])
    if key == "additional_special_tokens":
        document[key] = rng.choice([[f"[S{i}]" for i in range(rng.choice([10, 20_000]))], "[S]", [5], [{}]])
    else:
        document[key] = rng.choice([None, "[NEW]", {"content": "[PAD]", "lstrip": "yes"}, {"content": 5}, 5, [], ""])
    path.write_text(json.dumps(document))


TOKENIZER_MUTATIONS = {
    "vocab.txt": mutate_vocab,
    "tokenizer.json": mutate_tokenizer_json,
    "tokenizer_config.json": mutate_tokenizer_config,
    "special_tokens_map.json": mutate_special_tokens_map,
}


def mutate_tokenizer_files(directory: Path, rng: random.Random) -> None:
    present = [name for name in TOKENIZER_FILES if (directory / name).is_file()]
    TOKENIZER_MUTATIONS[rng.choice(present)](directory, rng)


# config.json fields of a BERT classifier, and values past any model's size.
CONFIG_HUGE = [10**9, 2**31, 2**63, 10**30, 1e308, -1, 0, -(2**63)]


def mutate_config_keys(directory: Path, rng: random.Random) -> None:
    """config.json with a key dropped, repeated with another value, retyped or made huge (or negative)."""
    path = directory / "config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    key = rng.choice(sorted(config))
    kind = rng.choice(["drop", "duplicate", "retype", "huge"])
    if kind == "duplicate":
        path.write_text(_dumps_with_duplicate(config, (), key, rng.choice(ODD_VALUES + CONFIG_HUGE)))
        return
    if kind == "drop":
        del config[key]
    elif kind == "retype":
        config[key] = rng.choice([v for v in ODD_VALUES if type(v) is not type(config[key])])
    else:
        numeric = sorted(k for k, v in config.items() if isinstance(v, (int, float)) and not isinstance(v, bool))
        config[rng.choice(numeric or [key])] = rng.choice(CONFIG_HUGE)
    path.write_text(json.dumps(config))


# What an auto_map's module does when imported: leave a mark (the trial fails if it is there).
MARK = "code-ran"
REMOTE_CODE = (
    "import pathlib\n"
    f"pathlib.Path(__file__).with_name({MARK!r}).write_text('ran')\n"
    "from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast\n"
    "class Config(BertConfig):\n    pass\n"
    "class Model(BertForSequenceClassification):\n    config_class = Config\n"
    "class Tokenizer(BertTokenizerFast):\n    pass\n"
)


def add_auto_map(directory: Path, rng: random.Random) -> None:
    """An ``auto_map`` that points transformers at the folder's own code (config.json's, with or without
    its model_type, or tokenizer_config.json's). It must be refused in one sentence, and never run."""
    (directory / "remote.py").write_text(REMOTE_CODE)
    where = rng.choice(["config", "config-no-model-type", "tokenizer_config"])
    if where.startswith("config"):
        config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
        config["auto_map"] = {"AutoConfig": "remote.Config", "AutoModelForSequenceClassification": "remote.Model"}
        if where == "config-no-model-type":
            config.pop("model_type", None)
        (directory / "config.json").write_text(json.dumps(config))
    else:
        tokenizer = json.loads((directory / "tokenizer_config.json").read_text(encoding="utf-8"))
        tokenizer["auto_map"] = {"AutoTokenizer": ["remote.Tokenizer", "remote.Tokenizer"]}
        (directory / "tokenizer_config.json").write_text(json.dumps(tokenizer))


# ----------------------------------------------------------------------------------------------
# Categories


@dataclasses.dataclass(frozen=True)
class Category:
    name: str
    share: float  # of COUNT
    kind: str  # "checkpoint" or "data"
    mutate: Callable[[World, Path, random.Random], Path]  # (world, trial dir, rng) -> what eval reads
    vouched: bool  # exit 0 requires the original's logits
    must_refuse: bool = False  # anything but a one-sentence refusal is wrong


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


def _edited(mutation):
    def mutate(world: World, trial: Path, rng: random.Random) -> Path:
        directory = _copy(world, trial, keep_manifest=False)
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
    # issue 33: the tokenizer's files and config.json's keys, edited by hand (so without the manifest)
    Category("tokenizer files, no manifest", 1.0, "checkpoint", _edited(mutate_tokenizer_files), False),
    Category("config.json keys, no manifest", 0.5, "checkpoint", _edited(mutate_config_keys), False),
    Category("auto_map (must be refused: issue 33 item 2)", 0.1, "checkpoint", _edited(add_auto_map), False,
             must_refuse=True),
]


def trials_of(category: Category, count: int = COUNT) -> int:
    return max(1, int(round(category.share * count)))


def build_world(root: Path) -> World:
    from builders import tiny_checkpoint, write_custom_csv

    from top.data.custom import load_custom_file

    root.mkdir(parents=True, exist_ok=True)
    checkpoint = tiny_checkpoint(root / "checkpoint", layers=3, keep_bins=5, seed=3)
    dev_csv = write_custom_csv(root / "dev.csv", n=8)
    with open(dev_csv, "a", encoding="utf-8") as handle:  # what a backtracking pre-tokenizer pattern gives up on
        handle.write("a" * 40 + "b,1\n")
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
        if category.must_refuse and verdict not in FAILURES and verdict != "refused":
            verdict = "wrong"
        if any(trial.rglob(MARK)):
            verdict = "ran code"
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


FAILURES = ("traceback", "hang", "memory", "bad-exit", "wrong", "ran code")


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
                     count["hang"], count["memory"] + count["bad-exit"] + count["wrong"] + count["ran code"]))
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)
