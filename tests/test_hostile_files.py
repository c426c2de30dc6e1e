"""A hostile corpus, built here, in place of every torch file the project reads, through every
command that reads it: each load is refused with one sentence naming the file, and no payload runs.

Payloads: pickles whose reduce calls ``os.system`` or ``builtins.exec``, a raw (non-zip) pickle,
a legacy-format (pre-1.6) torch file, torch's tar format, and a TorchScript archive whose ``__setstate__`` creates a
file through ``torch.from_file`` (``torch.jit.load`` runs it). Each writes a marker file when it
runs; ``test_payloads_are_live`` shows that the unsafe loaders do run them.
"""

from __future__ import annotations

import os
import pickle
import shutil
import warnings
import zipfile
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import pytest
import torch
from builders import (
    FINISHED,
    single_thread,
    tiny_checkpoint,
    tiny_model_dir,
    write_cola_dev,
    write_custom_csv,
    write_data,
)

from top import cli
from top.errors import UserError
from top.storage.safeload import (
    flatten_tree,
    read_state_dict,
    read_torch_file,
    read_tree,
    unflatten_tree,
    write_tree,
)
from top.training import run_files

one_thread = pytest.fixture(scope="module", autouse=True)(single_thread)
HAS_WEIGHTS_ONLY = "weights_only" in __import__("inspect").signature(torch.load).parameters


# ------------------------------------------------------------------------------------- payloads


class ShellPayload:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, ("touch " + self.marker,))


class ExecPayload:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


def _script_module(marker: str):
    class Scripted(torch.nn.Module):
        def __init__(self, path: str):
            super().__init__()
            self.path = path
            self.buffer = torch.zeros(1, dtype=torch.uint8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

        @torch.jit.export
        def __getstate__(self) -> Tuple[str, bool]:
            return (self.path, self.training)

        @torch.jit.export
        def __setstate__(self, state: Tuple[str, bool]) -> None:
            self.path = state[0]
            self.training = state[1]
            # Creates (and writes) the file at ``path`` when the archive is loaded.
            self.buffer = torch.from_file(state[0], shared=True, size=1, dtype=torch.uint8)
            self.buffer.fill_(33)

    return torch.jit.script(Scripted(marker))


def write_shell_zip(path: Path, marker: Path) -> None:
    torch.save({"weights": ShellPayload(str(marker))}, str(path))


def write_exec_zip(path: Path, marker: Path) -> None:
    torch.save({"weights": ExecPayload(str(marker))}, str(path))


def write_raw_pickle(path: Path, marker: Path) -> None:
    path.write_bytes(pickle.dumps({"weights": ShellPayload(str(marker))}, protocol=2))


def write_legacy(path: Path, marker: Path) -> None:
    torch.save({"weights": ShellPayload(str(marker))}, str(path), _use_new_zipfile_serialization=False)


def write_legacy_tar(path: Path, marker: Path) -> None:
    """torch's oldest format, a tar of pickles (torch.load still reads it through ``_legacy_load``)."""
    import io
    import tarfile

    with tarfile.open(str(path), mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in ("storages", "tensors", "pickle"):
            data = pickle.dumps(ShellPayload(str(marker)), protocol=2)
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def write_torchscript(path: Path, marker: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch 2.x deprecates TorchScript
        torch.jit.save(_script_module(str(marker)), str(path))


PAYLOADS: Dict[str, Callable[[Path, Path], None]] = {
    "os.system": write_shell_zip,
    "exec": write_exec_zip,
    "raw-pickle": write_raw_pickle,
    "legacy": write_legacy,
    "legacy-tar": write_legacy_tar,
    "torchscript": write_torchscript,
}


@pytest.mark.parametrize("payload", list(PAYLOADS))
def test_payloads_are_live(tmp_path, payload):
    """The corpus is real: torch's unsafe loaders run every payload (so a missing marker means something)."""
    marker, file = tmp_path / "ran", tmp_path / "evil.pt"
    PAYLOADS[payload](file, marker)
    if payload == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.jit.load(str(file))
    elif payload == "raw-pickle":
        pickle.loads(file.read_bytes())
    else:
        kwargs = {"weights_only": False} if HAS_WEIGHTS_ONLY else {}
        try:
            torch.load(str(file), **kwargs)
        except Exception:  # noqa: BLE001 - the tar payload runs before torch finds the file malformed
            assert payload == "legacy-tar"
    assert marker.exists()


# ------------------------------------------------------------------------------------- the setting


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Dict[str, Path]:
    """A pruned checkpoint, CoLA dev data, a custom csv, a fine-tuned tiny model and a run's last/."""
    root = tmp_path_factory.mktemp("hostile")
    checkpoints = root / "checkpoints"
    tiny_checkpoint(checkpoints / "tiny-cola", layers=3, keep_bins=5, seed=3)
    write_cola_dev(root / "glue", n=12)
    write_custom_csv(root / "dev.csv", n=12)
    model = tiny_model_dir(root / "model")
    train, dev = write_data(root / "train.csv", 16, seed=1), write_data(root / "tdev.csv", 8, seed=2)
    run = root / "run"
    assert cli.main(train_argv(model, model, train, dev, run, "--max-steps", "3", "--save-steps", "3")) in FINISHED
    table = root / "table.toml"
    table.write_text(
        '[cola]\nmetric = "matthews_correlation"\nscore = 0.0\nflops_reduction = 1.0\n'
        'checkpoint = "test/tiny-cola"\nscore_tolerance = 1.0\nflops_tolerance = 1.0\n',
        encoding="utf-8",
    )
    return {"root": root, "checkpoints": checkpoints, "model": model, "train": train, "dev": dev, "run": run,
            "table": table}


def train_argv(model, teacher, train, dev, out, *extra) -> List[str]:
    return ["train", "--model", str(model), "--teacher", str(teacher), "--train-file", str(train),
            "--validation-file", str(dev), "--bin-num", "4", "--topk", "3", "--batch-size", "8",
            "--target-sparsity", "0.3", "--eval-steps", "100", "--device", "cpu", "--no-progress",
            "--output-dir", str(out), *extra]


def place(directory: Path, name: str, payload: str, marker: Path) -> Path:
    """Put a hostile ``name`` into ``directory``; the weights file replaces the safetensors one.

    The directory's manifest goes too: it would refuse the swapped file by its checksum before any
    reader saw it, and the readers are what is under test (a hostile file comes without one).
    """
    (directory / "manifest.json").unlink()
    if name == "pytorch_model.bin":
        (directory / "model.safetensors").unlink()
    if name == "trainer_state.pt":
        (directory / "trainer_state.safetensors").unlink()
    file = directory / name
    PAYLOADS[payload](file, marker)
    return file


def checkpoint_copy(world, tmp_path) -> Path:
    target = tmp_path / "checkpoints" / "tiny-cola"
    shutil.copytree(str(world["checkpoints"] / "tiny-cola"), str(target))
    return target


def run_eval(world, tmp_path, checkpoint: Path) -> List[str]:
    return ["eval", "--task", "cola", "--checkpoint", str(checkpoint), "--data-dir", str(world["root"] / "glue"),
            "--device", "cpu", "--output-dir", str(tmp_path / "out")]


def run_bench(world, tmp_path, checkpoint: Path) -> List[str]:
    return ["bench", "--task", "cola", "--checkpoint", str(checkpoint), "--validation-file", str(world["root"] /
            "dev.csv"), "--batch-size", "4", "--threads", "1", "--passes", "5", "--warmup-passes", "0",
            "--output", str(tmp_path / "bench.json")]


def run_reproduce(world, tmp_path, checkpoint: Path) -> List[str]:
    return ["reproduce", "--checkpoint-dir", str(checkpoint.parent), "--data-dir", str(world["root"] / "glue"),
            "--results-table", str(world["table"]), "--device", "cpu", "--output-dir", str(tmp_path / "out"),
            "--no-progress"]


CHECKPOINT_COMMANDS = {"eval": run_eval, "bench": run_bench, "reproduce": run_reproduce}
CHECKPOINT_FILES = ["zs.pt", "l0_module.pt", "pytorch_model.bin"]


def error_lines(err: str) -> List[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


def assert_refused(code: int, err: str, file: Path, marker: Path) -> None:
    lines = error_lines(err)
    assert code == 2, err[-2000:]
    assert len(lines) == 1 and str(file) in lines[0], err[-2000:]
    assert "refusing to load it" in lines[0], lines[0]
    assert not marker.exists()


# ------------------------------------------------------------------------------------- the trials


@pytest.mark.parametrize("payload", list(PAYLOADS))
@pytest.mark.parametrize("name", CHECKPOINT_FILES)
@pytest.mark.parametrize("command", ["eval", "bench"])
def test_hostile_checkpoint_file_is_refused(world, tmp_path, capsys, command, name, payload):
    checkpoint = checkpoint_copy(world, tmp_path)
    marker = tmp_path / "payload-ran"
    file = place(checkpoint, name, payload, marker)
    code = cli.main(CHECKPOINT_COMMANDS[command](world, tmp_path, checkpoint))
    assert_refused(code, capsys.readouterr().err, file, marker)


@pytest.mark.parametrize("payload", list(PAYLOADS))
@pytest.mark.parametrize("name", CHECKPOINT_FILES)
def test_hostile_checkpoint_file_fails_its_reproduce_task(world, tmp_path, capsys, name, payload):
    """reproduce reports a task it cannot evaluate and exits 1 (its contract: other tasks still run)."""
    checkpoint = checkpoint_copy(world, tmp_path)
    marker = tmp_path / "payload-ran"
    file = place(checkpoint, name, payload, marker)
    code = cli.main(run_reproduce(world, tmp_path, checkpoint))
    err = capsys.readouterr().err
    assert code == 1
    import json

    (task,) = json.loads((tmp_path / "out" / "report.json").read_text())["tasks"]
    assert task["status"] == "error" and str(file) in task["reason"] and "refusing to load it" in task["reason"]
    assert task["reason"] in err
    assert not marker.exists()


@pytest.mark.parametrize("payload", list(PAYLOADS))
@pytest.mark.parametrize("flag", ["--model", "--teacher"])
def test_hostile_model_stops_training(world, tmp_path, capsys, flag, payload):
    hostile = tmp_path / "hostile-model"
    shutil.copytree(str(world["model"]), str(hostile))
    marker = tmp_path / "payload-ran"
    weights = [p for p in hostile.iterdir() if p.name in ("pytorch_model.bin", "model.safetensors")]
    for p in weights:
        p.unlink()
    file = hostile / "pytorch_model.bin"
    PAYLOADS[payload](file, marker)
    model, teacher = (hostile, world["model"]) if flag == "--model" else (world["model"], hostile)
    out = tmp_path / "out"
    code = cli.main(train_argv(model, teacher, world["train"], world["dev"], out, "--max-steps", "2"))
    assert_refused(code, capsys.readouterr().err, file, marker)
    assert not (out / "last").exists()


@pytest.mark.parametrize("payload", list(PAYLOADS))
@pytest.mark.parametrize("name", ["trainer_state.pt", "pytorch_model.bin", "zs.pt", "l0_module.pt"])
def test_hostile_file_in_last_stops_resume(world, tmp_path, capsys, name, payload):
    out = tmp_path / "run"
    shutil.copytree(str(world["run"]), str(out))
    marker = tmp_path / "payload-ran"
    file = place(out / "last", name, payload, marker)
    argv = train_argv(world["model"], world["model"], world["train"], world["dev"], out, "--max-steps", "6",
                      "--save-steps", "3", "--resume")
    code = cli.main(argv)
    assert_refused(code, capsys.readouterr().err, file, marker)


@pytest.mark.parametrize("payload", list(PAYLOADS))
def test_hostile_model_stops_finetuning(world, tmp_path, capsys, payload):
    hostile = tmp_path / "hostile-model"
    shutil.copytree(str(world["model"]), str(hostile))
    for p in hostile.iterdir():
        if p.name in ("pytorch_model.bin", "model.safetensors"):
            p.unlink()
    marker = tmp_path / "payload-ran"
    file = hostile / "pytorch_model.bin"
    PAYLOADS[payload](file, marker)
    code = cli.main(["finetune", "--model", str(hostile), "--train-file", str(world["train"]), "--validation-file",
                     str(world["dev"]), "--max-steps", "1", "--device", "cpu", "--no-progress",
                     "--output-dir", str(tmp_path / "ft")])
    assert_refused(code, capsys.readouterr().err, file, marker)


# ------------------------------------------------------------------------------------- the reader itself


def test_flipped_bytes_in_stored_weights_are_refused(tmp_path):
    state = {"w": torch.arange(64, dtype=torch.float32).reshape(8, 8), "b": torch.ones(8)}
    file = tmp_path / "pytorch_model.bin"
    torch.save(state, str(file))
    data = bytearray(file.read_bytes())
    with zipfile.ZipFile(str(file)) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith("data/0"))
    # The member's data starts after its local header (30 bytes + name + extra field).
    name_length = int.from_bytes(data[info.header_offset + 26: info.header_offset + 28], "little")
    extra_length = int.from_bytes(data[info.header_offset + 28: info.header_offset + 30], "little")
    start = info.header_offset + 30 + name_length + extra_length
    data[start + 17] ^= 0x40  # one bit of one stored float
    file.write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"pytorch_model\.bin is corrupt.*CRC"):
        read_torch_file(file)


def _reference_load(file: Path):
    """torch's own loader on a file we wrote ourselves (weights_only where torch has it)."""
    kwargs = {"weights_only": True} if HAS_WEIGHTS_ONLY else {}
    return torch.load(str(file), map_location="cpu", **kwargs)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_legitimate_files_load_as_torch_loads_them(tmp_path, legacy):
    base = torch.randn(6, 5)
    obj = {
        "float": base,
        "view": base[2:, 1:4],
        "transposed": base.t(),
        "half": torch.randn(3).half(),
        "bfloat16": torch.randn(3).to(torch.bfloat16),
        "long": torch.arange(5),
        "bool": torch.tensor([True, False, True]),
        "uint8": torch.tensor([1, 255], dtype=torch.uint8),
        "empty": torch.empty(0, 4),
        "scalar": torch.tensor(2.5),
        "plain": [1, 2.5, "text", None, (3, 4), {"nested": torch.ones(2)}],
    }
    file = tmp_path / "file.pt"
    torch.save(obj, str(file), _use_new_zipfile_serialization=not legacy)
    ours, theirs = read_torch_file(file), _reference_load(file)
    for key, value in theirs.items():
        if torch.is_tensor(value):
            assert ours[key].dtype == value.dtype and ours[key].shape == value.shape, key
            assert ours[key].stride() == value.stride() and torch.equal(ours[key], value), key
    assert ours["plain"][:5] == theirs["plain"][:5]
    assert torch.equal(ours["plain"][5]["nested"], theirs["plain"][5]["nested"])


def test_a_real_model_state_dict_loads_identically(tmp_path):
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                        vocab_size=99)
    torch.manual_seed(0)
    file = tmp_path / "pytorch_model.bin"
    torch.save(BertForSequenceClassification(config).state_dict(), str(file))
    ours, theirs = read_state_dict(tmp_path), _reference_load(file)
    assert list(ours) == list(theirs)
    assert all(torch.equal(ours[k], theirs[k]) and ours[k].dtype == theirs[k].dtype for k in theirs)


def test_state_dict_prefers_safetensors_and_refuses_sharded(tmp_path):
    from top.storage.safeload import write_safetensors

    (tmp_path / "pytorch_model.bin").write_bytes(b"never read")
    write_safetensors(tmp_path / "model.safetensors", {"w": torch.ones(2)})
    assert torch.equal(read_state_dict(tmp_path)["w"], torch.ones(2))
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    (sharded / "model.safetensors.index.json").write_text("{}")
    with pytest.raises(UserError, match="sharded checkpoint"):
        read_state_dict(sharded)


def test_tree_round_trip_keeps_types_and_bits(tmp_path):
    import numpy as np

    params = [torch.nn.Parameter(torch.randn(3)), torch.nn.Parameter(torch.randn(2, 2))]
    optimizer = torch.optim.AdamW(params, lr=0.1, betas=(0.8, 0.9))
    for p in params:
        p.grad = torch.randn_like(p)
    optimizer.step()
    tree = {
        "step": 7,
        "big": 2**70,
        "floats": [0.1, float("inf"), float("-inf"), -0.0, 1e-300],
        "flags": (True, False, None),
        "text": "a.b",
        "optimizer": optimizer.state_dict(),
        "numpy": np.arange(5, dtype=np.uint32),
        "rng": torch.get_rng_state(),
        3: {"int key": torch.zeros(0)},
    }
    write_tree(tmp_path / "t.safetensors", tree)
    back = read_tree(tmp_path / "t.safetensors")
    assert back["step"] == 7 and back["big"] == 2**70 and back["flags"] == (True, False, None)
    assert [x.hex() for x in back["floats"]] == [x.hex() for x in tree["floats"]]
    assert back["optimizer"]["param_groups"] == tree["optimizer"]["param_groups"]
    assert isinstance(back["optimizer"]["param_groups"][0]["betas"], tuple)
    for index, state in tree["optimizer"]["state"].items():
        for key, value in state.items():
            assert torch.equal(back["optimizer"]["state"][index][key], value), (index, key)
    assert back["numpy"].dtype == np.uint32 and (back["numpy"] == tree["numpy"]).all()
    assert torch.equal(back["rng"], tree["rng"]) and back[3]["int key"].shape == (0,)
    structure, tensors = flatten_tree({"a": {"b": torch.ones(1)}, "a.b": torch.zeros(1)})
    assert len(tensors) == 2 and torch.equal(unflatten_tree(structure, tensors)["a.b"], torch.zeros(1))


def test_old_training_state_is_still_read(world, tmp_path):
    """A last/ written before the move to safetensors (trainer_state.pt) resumes."""

    out = tmp_path / "run"
    shutil.copytree(str(world["run"]), str(out))
    state = run_files.load_state_file(out / "last")
    (out / "last" / "trainer_state.safetensors").unlink()
    (out / "last" / "manifest.json").unlink()  # written since; an old last/ has none
    torch.save(state, str(out / "last" / "trainer_state.pt"))
    again = run_files.load_state_file(out / "last")
    assert again["step"] == state["step"] == 3
    assert torch.equal(again["rng"][0]["torch"], state["rng"][0]["torch"])
    argv = train_argv(world["model"], world["model"], world["train"], world["dev"], out, "--max-steps", "6",
                      "--save-steps", "3", "--resume")
    assert cli.main(argv) in FINISHED
    assert run_files.load_state_file(out / "last")["step"] == 6


def test_unknown_hub_model_offline_is_one_sentence(tmp_path, monkeypatch):
    from top.storage.hub import resolve_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(UserError, match=r"--model nobody/nothing is not a model directory and could not be found"):
        resolve_model("nobody/nothing", "--model")
    with pytest.raises(UserError, match="is not a model directory"):
        resolve_model(str(tmp_path / "missing-dir"), "--model")



def test_train_refuses_a_model_without_its_classifier_head(world, tmp_path, capsys):
    """top train loads --model strictly: a head left out is an error, never a random one."""
    from top.storage.safeload import write_safetensors

    headless = tmp_path / "headless"
    shutil.copytree(str(world["model"]), str(headless))
    state = {k: v for k, v in read_state_dict(headless).items() if not k.startswith("classifier.")}
    for p in headless.iterdir():
        if p.name in ("pytorch_model.bin", "model.safetensors"):
            p.unlink()
    write_safetensors(headless / "model.safetensors", state)
    out = tmp_path / "out"
    code = cli.main(train_argv(headless, world["model"], world["train"], world["dev"], out, "--max-steps", "2"))
    (line,) = error_lines(capsys.readouterr().err)
    assert code == 2 and str(headless) in line and "missing classifier.weight" in line
    assert not (out / "last").exists()


# ------------------------------------------------------------------------------------- code a config names (auto_map)

# A model folder's own code: importing it writes the marker. transformers imports it when a config.json
# (or tokenizer_config.json) names it in an auto_map and remote code is trusted; without a model_type
# (current transformers, trust_remote_code unset) it first asks on stdin, waiting 15 s for an answer.
CUSTOM_CODE = """open({marker!r}, "w").close()
from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast


class EvilConfig(BertConfig):
    model_type = "evil"


class EvilModel(BertForSequenceClassification):
    config_class = EvilConfig


class EvilTokenizer(BertTokenizerFast):
    pass
"""
AUTO_MAPS = {
    "config": {"AutoConfig": "cfg.EvilConfig", "AutoModelForSequenceClassification": "cfg.EvilModel"},
    "tokenizer": [None, "cfg.EvilTokenizer"],  # (slow, fast): the form both transformers 4.16 and 4.5x read
}
# Where the auto_map is: config.json without a model_type (the case that prompts), config.json with
# one, tokenizer_config.json (beside a tokenizer_class: transformers 4.16 reads a tokenizer's
# auto_map only then).
AUTO_MAP_PLACES = ("config-without-model-type", "config-with-model-type", "tokenizer-config")
PROMPT = "Do you wish to run the custom code"


def with_auto_map(source: Path, target: Path, place: str, marker: Path) -> Path:
    """A copy of ``source`` whose ``place`` names the folder's own cfg.py (which writes ``marker``)."""
    import json

    shutil.copytree(str(source), str(target))
    if (target / "manifest.json").exists():
        (target / "manifest.json").unlink()  # it would refuse the edited file before any reader saw it
    (target / "cfg.py").write_text(CUSTOM_CODE.format(marker=str(marker)), encoding="utf-8")
    name = "tokenizer_config.json" if place == "tokenizer-config" else "config.json"
    fields = json.loads((target / name).read_text(encoding="utf-8"))
    if place == "config-without-model-type":
        fields.pop("model_type", None)
    if place == "tokenizer-config":
        fields["tokenizer_class"] = fields.get("tokenizer_class") or "BertTokenizer"
        fields["auto_map"] = AUTO_MAPS["tokenizer"]
    else:
        fields["auto_map"] = AUTO_MAPS["config"]
    (target / name).write_text(json.dumps(fields), encoding="utf-8")
    return target


def code_env(tmp_path: Path) -> Dict[str, str]:
    """The environment of a subprocess: transformers copies a folder's code under HF_MODULES_CACHE
    before it imports it, so a copy there is a trace of code about to run."""
    from builders import subprocess_env

    return dict(subprocess_env(), HF_MODULES_CACHE=str(tmp_path / "modules"))


def copied_code(tmp_path: Path) -> List[Path]:
    return list((tmp_path / "modules").rglob("cfg.py")) if (tmp_path / "modules").is_dir() else []


@pytest.mark.parametrize("place", AUTO_MAP_PLACES)
def test_auto_map_payloads_are_live(world, tmp_path, place):
    """The folders are real: transformers, told to trust remote code, imports their cfg.py."""
    import subprocess
    import sys

    marker = tmp_path / "code-ran"
    folder = with_auto_map(world["model"], tmp_path / "evil", place, marker)
    loader = "AutoTokenizer" if place == "tokenizer-config" else "AutoConfig"
    script = f"import transformers; transformers.{loader}.from_pretrained({str(folder)!r}, trust_remote_code=True)"
    done = subprocess.run([sys.executable, "-c", script], env=code_env(tmp_path), capture_output=True, text=True,
                          timeout=300)
    assert marker.exists(), done.stderr[-2000:]


def auto_map_argv(world, tmp_path: Path, command: str, folder: Path) -> List[str]:
    if command == "eval":
        return run_eval(world, tmp_path, folder)
    if command == "finetune":
        return ["finetune", "--model", str(folder), "--train-file", str(world["train"]), "--validation-file",
                str(world["dev"]), "--max-steps", "1", "--device", "cpu", "--no-progress",
                "--output-dir", str(tmp_path / "ft")]
    model, teacher = (folder, world["model"]) if command == "train --model" else (world["model"], folder)
    return train_argv(model, teacher, world["train"], world["dev"], tmp_path / "out", "--max-steps", "2")


# Every command and place with "y" on stdin; with a stdin open and silent, the place that makes
# transformers ask (a subprocess each: the cost is Python's start). `top train` reads only the
# student's tokenizer: a teacher's tokenizer_config.json is never loaded, so that trial is left out.
AUTO_MAP_TRIALS = [(command, place, stdin) for command in ("eval", "finetune", "train --model", "train --teacher")
                   for place in AUTO_MAP_PLACES for stdin in ("y", "silent")
                   if (command, place) != ("train --teacher", "tokenizer-config")
                   and (stdin == "y" or place == "config-without-model-type")]


@pytest.mark.parametrize("command, place, stdin", AUTO_MAP_TRIALS, ids=["-".join(t) for t in AUTO_MAP_TRIALS])
def test_a_folder_that_names_its_own_code_is_refused_whatever_stdin_says(world, tmp_path, command, place, stdin):
    """`echo y | top eval ...`, and a stdin left open that says nothing: one sentence naming the file and
    its auto_map, exit 2, no prompt, and the folder's code neither copied nor run."""
    import subprocess
    import sys

    marker = tmp_path / "code-ran"
    source = world["checkpoints"] / "tiny-cola" if command == "eval" else world["model"]
    folder = with_auto_map(source, tmp_path / "evil", place, marker)
    argv = [sys.executable, "-m", "top", *auto_map_argv(world, tmp_path, command, folder)]
    with open(tmp_path / "stdout", "w+") as out, open(tmp_path / "stderr", "w+") as err:
        process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=out, stderr=err, env=code_env(tmp_path),
                                   text=True)
        try:
            if stdin == "y":
                process.stdin.write("y\n" * 4)
                process.stdin.flush()
            code = process.wait(timeout=300)  # stdin stays open, unanswered, until the command has ended
        finally:
            process.stdin.close()
            if process.poll() is None:
                process.kill()
        out.seek(0)
        err.seek(0)
        said, errors = out.read(), err.read()
    file = folder / ("tokenizer_config.json" if place == "tokenizer-config" else "config.json")
    lines = error_lines(errors)
    assert code == 2 and len(lines) == 1, errors[-2000:]
    named = str(file) in lines[0] or f"The {file.name} of --{command.split('--')[-1].strip()} {folder}" in lines[0]
    assert named and "has an auto_map" in lines[0] and "never runs code" in lines[0], lines[0]
    assert PROMPT not in said + errors and "Traceback" not in errors
    assert not marker.exists() and not copied_code(tmp_path)
