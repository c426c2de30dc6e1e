"""Every bad input gets one sentence and exit 2; every environment failure one sentence and exit 1.

Each row builds its input in a temporary directory, runs the command line in-process and checks
the exit status, that stderr ends in one line starting with ``error:`` that names the input, and
that no traceback was printed.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path
from typing import Callable, Dict, List, NamedTuple, Optional

import pytest
import torch
from builders import (
    FINISHED,
    finetune_argv,
    single_thread,
    tiny_checkpoint,
    train_argv,
    write_cola_dev,
    write_custom_csv,
    write_data,
)

from top import cli

one_thread = pytest.fixture(scope="module", autouse=True)(single_thread)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "ckpt")


def eval_argv(checkpoint: Path, out: Path, *extra: str) -> List[str]:
    return ["eval", "--checkpoint", str(checkpoint), "--device", "cpu", "--no-progress", "--output-dir", str(out),
            *extra]




def replace_flag(argv: List[str], flag: str, value: str) -> List[str]:
    argv = list(argv)
    argv[argv.index(flag) + 1] = value
    return argv


def copy_with_config(source: Path, target: Path, **fields) -> Path:
    """A copy with config.json edited by hand, as its manifest (removed) would otherwise report."""
    shutil.copytree(str(source), str(target))
    if (target / "manifest.json").exists():
        (target / "manifest.json").unlink()
    config = json.loads((target / "config.json").read_text())
    config.update(fields)
    (target / "config.json").write_text(json.dumps(config))
    return target


def copy_checkpoint(checkpoint: Path, target: Path) -> Path:
    """A copy to change by hand: without the manifest, which would report every change as damage."""
    shutil.copytree(str(checkpoint), str(target), symlinks=True)
    (target / "manifest.json").unlink()
    return target


class Case(NamedTuple):
    id: str
    argv: Callable[[Dict[str, Path], Path, Path], List[str]]  # (tiny, checkpoint, tmp) -> argv
    status: int
    needle: Callable[[Path], str]  # what the error line must name
    patch: Optional[Callable[[pytest.MonkeyPatch], None]] = None


# ------------------------------------------------------------------------------------- inputs


def non_utf8_csv(tmp: Path) -> Path:
    path = tmp / "latin1.csv"
    path.write_bytes("sentence,label\nthe film,1\nun caf\xe9 bad,0\n".encode("latin-1"))
    return path


def non_utf8_json(tmp: Path) -> Path:
    path = tmp / "latin1.json"
    path.write_bytes('[{"sentence": "caf\xe9", "label": 1}]'.encode("latin-1"))
    return path


def non_utf8_glue(tmp: Path) -> Path:
    path = write_cola_dev(tmp / "glue", n=10)
    path.write_bytes(path.read_bytes() + b"src0\t1\t\tna\xefve\n")
    return tmp / "glue"


def long_field_csv(tmp: Path) -> Path:
    path = write_data(tmp / "long.csv", 10, seed=1)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write('"' + "good " * 30000 + '",1\n')
    return path


def long_field_glue(tmp: Path) -> Path:
    path = write_cola_dev(tmp / "glue", n=10)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write("src0\t1\t\t" + "good " * 30000 + "\n")
    return tmp / "glue"


def stsb_with_label(tmp: Path, label: str) -> Path:
    glue = tmp / "glue"
    (glue / "STS-B").mkdir(parents=True)
    header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"
    rows = [
        header,
        "0\tg\tf\t2012\t0\ts\ts\tthe film\tthe movie\t3.5",
        f"1\tg\tf\t2012\t1\ts\ts\ta film\tgood\t{label}",
    ]
    (glue / "STS-B" / "dev.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return glue


def custom_with_label(tmp: Path, label: str) -> Path:
    path = write_custom_csv(tmp / "labels.csv", n=10, regression=True)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(f"the good film,{label}\n")
    return path


def bad_config_model(tiny: Dict[str, Path], tmp: Path) -> Path:
    return copy_with_config(tiny["model"], tmp / "twelve", num_hidden_layers="twelve")


def bad_config_checkpoint(checkpoint: Path, tmp: Path) -> Path:
    return copy_with_config(checkpoint, tmp / "twelve", num_hidden_layers="twelve")


def short_position_checkpoint(checkpoint: Path, tmp: Path) -> Path:
    return tiny_checkpoint(tmp / "short", max_position_embeddings=16)


def zero_bin_checkpoint(checkpoint: Path, tmp: Path) -> Path:
    target = copy_checkpoint(checkpoint, tmp / "zero-bins")
    (target / "l0_module.pt").unlink()
    torch.save({"token_z": torch.ones(2, 0), "pruner_z": torch.ones(2)}, str(target / "zs.pt"))
    return target


def directory_in_place_of(name: str) -> Callable[[Path, Path], Path]:
    def build(checkpoint: Path, tmp: Path) -> Path:
        target = copy_checkpoint(checkpoint, tmp / f"dir-{name}")
        (target / name).unlink()
        (target / name).mkdir()
        return target

    return build


def dangling_link_in_place_of(name: str) -> Callable[[Path, Path], Path]:
    def build(checkpoint: Path, tmp: Path) -> Path:
        target = copy_checkpoint(checkpoint, tmp / f"link-{name}")
        (target / name).unlink()
        os.symlink(str(tmp / "nowhere.pt"), str(target / name))
        return target

    return build


def a_file(tmp: Path) -> Path:
    path = tmp / "a-file"
    path.write_text("not a directory\n")
    return path


def disk_full(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every atomic file write fails as on a full disk, when its data is flushed to the device."""
    import top.storage.io

    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(top.storage.io.os, "fsync", no_space)


def checkpoint_disk_full(monkeypatch: pytest.MonkeyPatch) -> None:
    """The disk fills up while a checkpoint is written (after part of it is on disk)."""
    import top.method.checkpoint
    import top.training.checkpoints

    real = top.method.checkpoint.save_checkpoint

    def save_then_fail(path, **kwargs):
        real(path, **kwargs)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(Path(path) / "weights"))

    monkeypatch.setattr(top.method.checkpoint, "save_checkpoint", save_then_fail)
    monkeypatch.setattr(top.training.checkpoints, "save_checkpoint", save_then_fail)  # the name `top train` calls



# ------------------------------------------------------------------------------------- fuzzed inputs (issue 24)


def gate_file_with(checkpoint: Path, tmp: Path, name: str, **fields) -> Path:
    """A copy whose l0_module.pt holds the gate state with ``fields`` replaced (zs.pt removed)."""
    from top.method.checkpoint import load_checkpoint

    state = dict(load_checkpoint(checkpoint).gate_state)
    state.update(fields)
    target = copy_checkpoint(checkpoint, tmp / name)
    (target / "zs.pt").unlink()
    torch.save(state, str(target / "l0_module.pt"))
    return target


def stride_zero_masks(checkpoint: Path, tmp: Path) -> Path:
    """zs.pt whose token_z is one float viewed as [1, 2**34] (stride 0): 4 bytes on disk, 64 GiB as a copy."""
    target = copy_checkpoint(checkpoint, tmp / "bomb-zs")
    (target / "l0_module.pt").unlink()
    torch.save({"token_z": torch.ones(1).expand(1, 2**34), "pruner_z": torch.ones(1)}, str(target / "zs.pt"))
    return target


def nested_bin_num(checkpoint: Path, tmp: Path, depth: int = 50_000) -> Path:
    """l0_module.pt whose bin_num is a list nested ``depth`` deep (spliced into data.pkl: torch.save cannot)."""
    import zipfile

    target = gate_file_with(checkpoint, tmp, "nested", bin_num="NESTME")
    file = target / "l0_module.pt"
    with zipfile.ZipFile(str(file)) as archive:
        members = [(info.filename, archive.read(info.filename)) for info in archive.infolist()]
    marker = b"X" + len(b"NESTME").to_bytes(4, "little") + b"NESTME"  # BINUNICODE 'NESTME'
    with zipfile.ZipFile(str(file), "w", zipfile.ZIP_STORED) as archive:
        for name, data in members:
            if name.endswith("data.pkl"):
                assert marker in data
                data = data.replace(marker, b"]" * depth + b"a" * (depth - 1))
            archive.writestr(name, data)
    return target


def fifo_tar_gates(checkpoint: Path, tmp: Path) -> Path:
    """l0_module.pt as torch's legacy tar format whose 'storages' member is a FIFO (torch would block on it)."""
    import tarfile

    target = copy_checkpoint(checkpoint, tmp / "fifo")
    (target / "zs.pt").unlink()
    (target / "l0_module.pt").unlink()
    with tarfile.open(str(target / "l0_module.pt"), "w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("storages")
        info.type = tarfile.FIFOTYPE
        tar.addfile(info)
    return target


def nan_weights(checkpoint: Path, tmp: Path) -> Path:
    """A checkpoint (no manifest: someone else's) whose classifier bias is NaN: every logit is NaN."""
    from top.storage.safeload import read_safetensors, write_safetensors

    target = copy_checkpoint(checkpoint, tmp / "nan")
    weights = read_safetensors(target / "model.safetensors")
    weights["classifier.bias"] = torch.full_like(weights["classifier.bias"], float("nan"))
    write_safetensors(target / "model.safetensors", weights)
    return target


def flipped_weights(checkpoint: Path, tmp: Path) -> Path:
    """A checkpoint top wrote, with one byte of its weights flipped: its manifest says so."""
    target = tmp / "flipped"
    shutil.copytree(str(checkpoint), str(target))
    data = bytearray((target / "model.safetensors").read_bytes())
    data[-7] ^= 0x10
    (target / "model.safetensors").write_bytes(bytes(data))
    return target


def damaged_manifest(checkpoint: Path, tmp: Path) -> Path:
    target = tmp / "manifest"
    shutil.copytree(str(checkpoint), str(target))
    text = (target / "manifest.json").read_text()
    (target / "manifest.json").write_text(text[: len(text) // 2])
    return target


def config_model(tiny: Dict[str, Path], tmp: Path, **fields) -> Path:
    return copy_with_config(tiny["model"], tmp / ("model-" + "-".join(fields)), **fields)


def nested_json(tmp: Path, depth: int = 100_000) -> Path:
    path = tmp / "nested.json"
    path.write_text("[" * depth + "]" * depth, encoding="utf-8")
    return path


def long_label_json(tmp: Path) -> Path:
    path = tmp / "digits.json"
    path.write_text('[{"sentence": "the film", "label": 1}, {"sentence": "a film", "label": ' + "7" * 5000 + "}]",
                    encoding="utf-8")
    return path


def long_label_csv(tmp: Path) -> Path:
    path = write_data(tmp / "digits.csv", 10, seed=1)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write("the good film," + "7" * 5000 + "\n")
    return path


def many_examples(tmp: Path) -> Path:
    return write_data(tmp / "many.csv", 200, seed=3)


def written(tmp: Path, name: str, text: str) -> Path:
    path = tmp / name
    path.write_text(text, encoding="utf-8")
    return path


def duplicate_label_column(tmp: Path) -> Path:
    """A header naming 'label' twice: csv's DictReader silently kept the second column's values."""
    return written(tmp, "twice.csv", "sentence,label,label\nthe good film,1,0\na dull plot,0,1\n")


def sentence_as_object(tmp: Path) -> Path:
    """A sentence given as a JSON object, which used to become its Python repr as text."""
    rows = [{"sentence": "the good film", "label": 1}, {"sentence": {"text": "a dull plot"}, "label": 0}]
    return written(tmp, "object.json", json.dumps(rows))


def quoted_tsv_with_tabs(tmp: Path) -> Path:
    """Quoted sentences with tabs in them: read unquoted, the tab split each row and the label column
    held the sentences' second halves, which was reported as "has 1 label"."""
    return written(tmp, "quoted.tsv", 'sentence\tlabel\n"the good\tfilm"\t1\n"a dull\tfilm"\t0\n')


def glue_row_missing_a_column(tmp: Path) -> Path:
    """SST-2's dev.tsv with a row that lacks its label column (line 3)."""
    glue = tmp / "glue"
    (glue / "SST-2").mkdir(parents=True)
    (glue / "SST-2" / "dev.tsv").write_text("sentence\tlabel\nthe good film\t1\na row without its label\n"
                                            "a dull plot\t0\n", encoding="utf-8")
    return glue


# ------------------------------------------------------------------------------------- issue 33: run folders


def finished_run(tmp: Path, name: str = "done") -> Path:
    """A folder holding another run's files: best/ and last/ (a config each), log.jsonl, run.json, summary.json."""
    out = tmp / name
    for saved in ("best", "last"):
        (out / saved).mkdir(parents=True)
        (out / saved / "config.json").write_text("{}")
    for file in ("log.jsonl", "run.json", "summary.json"):
        (out / file).write_text("{}\n")
    return out


def planted_links(tmp: Path) -> Path:
    """best and last planted as links to a folder of someone else's."""
    out, elsewhere = tmp / "planted", tmp / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("mine")
    for name in ("best", "last"):
        os.symlink(str(elsewhere), str(out / name))
    return out


def teacher_in_run(tiny: Dict[str, Path], tmp: Path) -> Path:
    """R/best a fine-tuned teacher (the tiny model), as `top finetune --output-dir R` leaves it."""
    run = finished_run(tmp, "R")
    shutil.rmtree(str(run / "best"))
    shutil.copytree(str(tiny["model"]), str(run / "best"))
    return run


def train_reading(tiny: Dict[str, Path], tmp: Path, model: Path, out: Path, *flags: str) -> List[str]:
    argv = replace_flag(replace_flag(train(tiny, tmp, *flags), "--model", str(model)), "--teacher", str(model))
    return replace_flag(argv, "--output-dir", str(out))


def grid_file(tmp: Path, text: str) -> Path:
    path = tmp / "grid.toml"
    path.write_text(text, encoding="utf-8")
    return path


def grid_argv(tiny: Dict[str, Path], tmp: Path, text: str, *extra: str) -> List[str]:
    return ["grid", "--task", "sst2", "--grid", str(grid_file(tmp, text)), "--model", str(tiny["model"]),
            "--output-dir", str(tmp / "grid"), *extra]


def grid_of_another_model(tiny: Dict[str, Path], tmp: Path) -> List[str]:
    """A grid folder whose one run was trained from another model (its grid_run.json says so)."""
    run = tmp / "grid" / "runs" / "lr2e-05"
    run.mkdir(parents=True)
    inputs = {"task": "sst2", "options": {"model": str(tmp / "other"), "teacher": str(tmp / "other"),
                                         "learning_rate": 2e-5}, "contents": {}}
    (run / "grid_run.json").write_text(json.dumps({"run_id": "lr2e-05", "status": "done", "inputs": inputs}))
    return grid_argv(tiny, tmp, "[grid]\nlearning_rate = [2e-5]\n", "--dry-run")


# ------------------------------------------------------------------------------------- issue 33


def dangling_vocab(source: Path, target: Path) -> Path:
    """A copy whose vocab.txt is a link to a file that does not exist (and whose tokenizer.json is gone)."""
    target = empty_vocab(source, target)
    (target / "vocab.txt").unlink()
    (target / "vocab.txt").symlink_to(target / "gone" / "vocab.txt")
    return target


def empty_vocab(source: Path, target: Path) -> Path:
    """A copy whose vocab.txt is empty and whose tokenizer.json is gone: the tokenizer loads, and then
    fails on the first example (WordPiece error: Missing [UNK] token)."""
    target = copy_checkpoint(source, target) if (source / "manifest.json").exists() else Path(
        shutil.copytree(str(source), str(target)))
    if (target / "tokenizer.json").exists():
        (target / "tokenizer.json").unlink()
    (target / "vocab.txt").write_text("")
    return target


# A pattern that backtracks exponentially: on "aaa...ab" Oniguruma hits its retry limit and the
# tokenizers library panics (pyo3_runtime.PanicException, a BaseException).
BACKTRACKING_SPLIT = {"type": "Split", "pattern": {"Regex": "(a+)+c"}, "behavior": "Isolated", "invert": False}
BACKTRACKING_TEXT = "a" * 40 + "b"


def backtracking_tokenizer(source: Path, target: Path) -> Path:
    target = copy_checkpoint(source, target) if (source / "manifest.json").exists() else Path(
        shutil.copytree(str(source), str(target)))
    spec = json.loads((target / "tokenizer.json").read_text())
    spec["pre_tokenizer"] = BACKTRACKING_SPLIT
    (target / "tokenizer.json").write_text(json.dumps(spec))
    return target


def with_row(data: Path, target: Path, text: str) -> Path:
    target.write_text(data.read_text() + f"{text},1\n", encoding="utf-8")
    return target


def pairs_csv(tmp: Path) -> Path:
    path = tmp / "pairs.csv"
    path.write_text("sentence1,sentence2,label\nthe film,a plot,1\na good film,bad,0\n", encoding="utf-8")
    return path


def without_pad_token(checkpoint: Path, tmp: Path) -> Path:
    target = copy_checkpoint(checkpoint, tmp / "no-pad")
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        if (target / name).exists():
            fields = json.loads((target / name).read_text())
            fields["pad_token"] = None
            (target / name).write_text(json.dumps(fields))
    spec = json.loads((target / "tokenizer.json").read_text())
    spec["padding"] = None
    (target / "tokenizer.json").write_text(json.dumps(spec))
    return target


class FullDisk:
    """A disk that fills up while ``last/`` (or ``best/``) is written: from then on every write through
    ``os.write`` / ``os.fsync`` fails with ENOSPC, and the writer that filled it fails as it does on a
    real full disk (safetensors: ``SafetensorError``; torch.save: a ``RuntimeError`` naming no errno;
    the tokenizers: a plain ``Exception``; transformers' JSON writers: an ``OSError`` naming no file)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, directory: str, writer: str):
        import safetensors.torch
        import transformers

        import top.storage.io

        self.full = False
        real_write, real_fsync = os.write, os.fsync

        def write(fd, data):
            if self.full:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real_write(fd, data)

        def fsync(fd):
            if self.full:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real_fsync(fd)

        monkeypatch.setattr(top.storage.io.os, "write", write)
        monkeypatch.setattr(top.storage.io.os, "fsync", fsync)

        def filling(real, error):
            def fill(*args, **kwargs):
                target = str(args[1] if len(args) > 1 else kwargs.get("f", kwargs.get("filename", args[0])))
                if f".{directory}.tmp" in target or self.full:
                    self.full = True
                    raise error()
                return real(*args, **kwargs)

            return fill

        if writer == "safetensors":
            from safetensors import SafetensorError

            full = "Error while serializing: I/O error: No space left on device (os error 28)"
            monkeypatch.setattr(safetensors.torch, "save_file",
                                filling(safetensors.torch.save_file, lambda: SafetensorError(full)))
        elif writer == "torch.save":
            import top.method.checkpoint

            monkeypatch.setattr(top.method.checkpoint.torch, "save", filling(torch.save, lambda: RuntimeError(
                "[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")))
        elif writer == "tokenizer":
            real_save = transformers.PreTrainedTokenizerBase.save_pretrained

            def save_pretrained(tokenizer, save_directory, *args, **kwargs):
                if f".{directory}.tmp" in str(save_directory):
                    self.full = True
                    raise Exception("No space left on device (os error 28)")
                return real_save(tokenizer, save_directory, *args, **kwargs)

            monkeypatch.setattr(transformers.PreTrainedTokenizerBase, "save_pretrained", save_pretrained)
        else:
            assert writer == "config", writer
            real_json = transformers.PretrainedConfig.to_json_file

            def to_json_file(config, path, *args, **kwargs):
                if f".{directory}.tmp" in str(path):
                    self.full = True
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                return real_json(config, path, *args, **kwargs)

            monkeypatch.setattr(transformers.PretrainedConfig, "to_json_file", to_json_file)


def disk_fills_at(directory: str, writer: str) -> Callable[[pytest.MonkeyPatch], None]:
    return lambda monkeypatch: FullDisk(monkeypatch, directory, writer) and None


def results_table(tmp: Path, name: str, body) -> Path:
    path = tmp / name
    path.write_bytes(body if isinstance(body, bytes) else body.encode("utf-8"))
    return path


def table_row(**fields: str) -> str:
    row = {"metric": '"matthews_correlation"', "score": "10.0", "flops_reduction": "1.5",
           "checkpoint": '"x/tiny-cola"', "score_tolerance": "0.5", "flops_tolerance": "0.05", **fields}
    return "[cola]\n" + "".join(f"{key} = {value}\n" for key, value in row.items())


def reproduce_argv(table: Path, tmp: Path) -> List[str]:
    return ["reproduce", "--results-table", str(table), "--device", "cpu", "--no-progress", "--output-dir",
            str(tmp / "out")]


def env(name: str, value: str) -> Callable[[pytest.MonkeyPatch], None]:
    return lambda monkeypatch: monkeypatch.setenv(name, value)


def bench_argv(tiny: Dict[str, Path], checkpoint: Path, *extra: str) -> List[str]:
    return ["bench", "--task", "sst2", "--checkpoint", str(checkpoint), "--validation-file", str(tiny["dev"]), *extra]


def train(tiny, tmp, *flags) -> List[str]:
    return train_argv(tiny, tmp / "out", "--target-sparsity", "0.3", "--max-steps", "4", *flags)


CASES = [
    # data files
    Case("glue-not-utf8", lambda t, c, tmp: eval_argv(c, tmp / "out", "--task", "cola", "--data-dir",
                                                      str(non_utf8_glue(tmp))), 2, lambda tmp: "dev.tsv line 11"),
    Case("csv-not-utf8", lambda t, c, tmp: replace_flag(train(t, tmp), "--train-file", str(non_utf8_csv(tmp))), 2,
         lambda tmp: "latin1.csv line 3"),
    Case("json-not-utf8", lambda t, c, tmp: eval_argv(c, tmp / "out", "--validation-file", str(non_utf8_json(tmp))),
         2, lambda tmp: "latin1.json line 1"),
    Case("csv-field-too-long", lambda t, c, tmp: replace_flag(train(t, tmp), "--validation-file",
                                                              str(long_field_csv(tmp))), 2,
         lambda tmp: "long.csv line 12"),
    Case("glue-field-too-long", lambda t, c, tmp: eval_argv(c, tmp / "out", "--task", "cola", "--data-dir",
                                                            str(long_field_glue(tmp))), 2,
         lambda tmp: "dev.tsv line 11"),
    Case("stsb-label-nan", lambda t, c, tmp: eval_argv(c, tmp / "out", "--task", "stsb", "--data-dir",
                                                       str(stsb_with_label(tmp, "nan"))), 2,
         lambda tmp: "dev.tsv line 3"),
    Case("stsb-label-inf", lambda t, c, tmp: eval_argv(c, tmp / "out", "--task", "stsb", "--data-dir",
                                                       str(stsb_with_label(tmp, "inf"))), 2,
         lambda tmp: "dev.tsv line 3"),
    Case("custom-label-nan", lambda t, c, tmp: eval_argv(c, tmp / "out", "--validation-file",
                                                         str(custom_with_label(tmp, "nan"))), 2,
         lambda tmp: "labels.csv line 12 has the label"),
    # sequence length against the model's positions
    Case("train-max-seq-length", lambda t, c, tmp: train(t, tmp, "--max-seq-length", "512"), 2,
         lambda tmp: "--max-seq-length 512"),
    Case("finetune-max-seq-length", lambda t, c, tmp: finetune_argv(t, tmp / "out", "--max-seq-length", "512"), 2,
         lambda tmp: "--max-seq-length 512"),
    Case("eval-max-seq-length", lambda t, c, tmp: eval_argv(c, tmp / "out", "--validation-file", str(t["dev"]),
                                                            "--max-seq-length", "512"), 2,
         lambda tmp: "--max-seq-length 512"),
    Case("bench-task-length", lambda t, c, tmp: ["bench", "--task", "sst2", "--checkpoint",
                                                 str(short_position_checkpoint(c, tmp)), "--validation-file",
                                                 str(t["dev"]), "--output", str(tmp / "bench.json")], 2,
         lambda tmp: "16 positions"),
    # flags
    Case("epochs-nan", lambda t, c, tmp: train(t, tmp)[:-2] + ["--epochs", "nan"], 2, lambda tmp: "--epochs"),
    Case("epochs-inf", lambda t, c, tmp: train(t, tmp)[:-2] + ["--epochs", "inf"], 2, lambda tmp: "--epochs"),
    Case("epochs-negative", lambda t, c, tmp: finetune_argv(t, tmp / "out", "--epochs", "-1"), 2,
         lambda tmp: "--epochs"),
    Case("warmup-epochs-nan", lambda t, c, tmp: train(t, tmp, "--warmup-epochs", "nan"), 2,
         lambda tmp: "--warmup-epochs"),
    Case("warmup-epochs-negative", lambda t, c, tmp: train(t, tmp, "--warmup-epochs", "-2"), 2,
         lambda tmp: "--warmup-epochs"),
    Case("distill-temperature-zero", lambda t, c, tmp: train(t, tmp, "--distill-temperature", "0"), 2,
         lambda tmp: "--distill-temperature"),
    Case("max-steps-zero", lambda t, c, tmp: replace_flag(train(t, tmp), "--max-steps", "0"), 2,
         lambda tmp: "--max-steps"),
    Case("finetune-max-steps-zero", lambda t, c, tmp: finetune_argv(t, tmp / "out", "--max-steps", "0"), 2,
         lambda tmp: "--max-steps"),
    # ranges that moved from hand checks into the flags' argparse types
    Case("train-topk-zero", lambda t, c, tmp: train(t, tmp, "--topk", "0"), 2, lambda tmp: "--topk"),
    Case("train-reg-learning-rate-zero", lambda t, c, tmp: train(t, tmp, "--reg-learning-rate", "0"), 2,
         lambda tmp: "--reg-learning-rate"),
    Case("train-eval-steps-zero", lambda t, c, tmp: train(t, tmp, "--eval-steps", "0"), 2,
         lambda tmp: "--eval-steps"),
    Case("finetune-learning-rate-negative", lambda t, c, tmp: finetune_argv(t, tmp / "out", "--learning-rate", "-1"),
         2, lambda tmp: "--learning-rate"),
    Case("eval-batch-size-zero", lambda t, c, tmp: eval_argv(c, tmp / "out", "--validation-file", str(t["dev"]),
                                                             "--batch-size", "0"), 2, lambda tmp: "--batch-size"),
    Case("bench-passes-four", lambda t, c, tmp: ["bench", "--task", "sst2", "--checkpoint", str(c),
                                                 "--validation-file", str(t["dev"]), "--passes", "4"], 2,
         lambda tmp: "--passes"),
    Case("bench-warmup-passes-negative", lambda t, c, tmp: ["bench", "--task", "sst2", "--checkpoint", str(c),
                                                            "--validation-file", str(t["dev"]), "--warmup-passes",
                                                            "-1"], 2, lambda tmp: "--warmup-passes"),
    Case("reproduce-batch-size-zero", lambda t, c, tmp: ["reproduce", "--batch-size", "0", "--output-dir",
                                                         str(tmp / "out")], 2, lambda tmp: "--batch-size"),
    # custom files that used to give a silent wrong answer or blame the wrong thing (issue 33)
    Case("csv-label-column-twice", lambda t, c, tmp: eval_argv(c, tmp / "out", "--validation-file",
                                                               str(duplicate_label_column(tmp))), 2,
         lambda tmp: f"{tmp / 'twice.csv'} names the column 'label' twice"),
    Case("json-sentence-is-an-object", lambda t, c, tmp: eval_argv(c, tmp / "out", "--validation-file",
                                                                   str(sentence_as_object(tmp))), 2,
         lambda tmp: f"{tmp / 'object.json'} example 2 gives 'sentence' as a JSON object"),
    Case("tsv-quoted-with-tabs", lambda t, c, tmp: replace_flag(train(t, tmp), "--validation-file",
                                                                str(quoted_tsv_with_tabs(tmp))), 2,
         lambda tmp: f"{tmp / 'quoted.tsv'} line 2 has 3 tab-separated fields"),
    # configs and checkpoints
    Case("train-config-wrong-type", lambda t, c, tmp: replace_flag(train(t, tmp), "--model",
                                                                   str(bad_config_model(t, tmp))), 2,
         lambda tmp: "config.json"),
    Case("finetune-config-wrong-type", lambda t, c, tmp: replace_flag(finetune_argv(t, tmp / "out"), "--model",
                                                                      str(bad_config_model(t, tmp))), 2,
         lambda tmp: "config.json"),
    Case("eval-config-wrong-type", lambda t, c, tmp: eval_argv(bad_config_checkpoint(c, tmp), tmp / "out",
                                                               "--validation-file", str(t["dev"])), 2,
         lambda tmp: "config.json"),
    Case("zs-zero-bins", lambda t, c, tmp: eval_argv(zero_bin_checkpoint(c, tmp), tmp / "out", "--validation-file",
                                                     str(t["dev"])), 2, lambda tmp: "zs.pt"),
    Case("zs-is-directory", lambda t, c, tmp: eval_argv(directory_in_place_of("zs.pt")(c, tmp), tmp / "out",
                                                        "--validation-file", str(t["dev"])), 2,
         lambda tmp: "zs.pt"),
    Case("zs-dangling-link", lambda t, c, tmp: eval_argv(dangling_link_in_place_of("zs.pt")(c, tmp), tmp / "out",
                                                         "--validation-file", str(t["dev"])), 2,
         lambda tmp: "zs.pt"),
    Case("l0-module-is-directory", lambda t, c, tmp: eval_argv(directory_in_place_of("l0_module.pt")(c, tmp),
                                                               tmp / "out", "--validation-file", str(t["dev"])), 2,
         lambda tmp: "l0_module.pt"),
    # fuzzed inputs (issue 24): the checkpoint reader
    Case("zs-stride-zero-bomb", lambda t, c, tmp: eval_argv(stride_zero_masks(c, tmp), tmp / "out",
                                                            "--validation-file", str(t["dev"])), 2,
         lambda tmp: "zs.pt"),
    Case("l0-stride-zero-bomb", lambda t, c, tmp: eval_argv(
        gate_file_with(c, tmp, "bomb-l0", token_loga=torch.ones(1).expand(2, 2**33)), tmp / "out",
        "--validation-file", str(t["dev"])), 2, lambda tmp: "l0_module.pt"),
    Case("l0-temperature-10**400", lambda t, c, tmp: eval_argv(gate_file_with(c, tmp, "hot", temperature=10**400),
                                                               tmp / "out", "--validation-file", str(t["dev"])), 2,
         lambda tmp: "temperature"),
    Case("l0-bin-num-nested-50000", lambda t, c, tmp: eval_argv(nested_bin_num(c, tmp), tmp / "out",
                                                                "--validation-file", str(t["dev"])), 2,
         lambda tmp: "bin_num"),
    Case("l0-legacy-tar-fifo", lambda t, c, tmp: eval_argv(fifo_tar_gates(c, tmp), tmp / "out", "--validation-file",
                                                           str(t["dev"])), 2, lambda tmp: "l0_module.pt"),
    Case("eval-config-1e9-layers", lambda t, c, tmp: eval_argv(
        copy_with_config(c, tmp / "deep", num_hidden_layers=10**9), tmp / "out", "--validation-file",
        str(t["dev"])), 2, lambda tmp: "num_hidden_layers"),
    Case("eval-config-hidden-act-evil", lambda t, c, tmp: eval_argv(
        copy_with_config(c, tmp / "evil", hidden_act="evil"), tmp / "out", "--validation-file", str(t["dev"])), 2,
         lambda tmp: "hidden_act"),
    Case("eval-config-huge-intermediate", lambda t, c, tmp: eval_argv(
        copy_with_config(c, tmp / "wide", intermediate_size=10**9), tmp / "out", "--validation-file",
        str(t["dev"])), 2, lambda tmp: "intermediate_size"),
    Case("eval-config-layers-unlike-weights", lambda t, c, tmp: eval_argv(
        copy_with_config(c, tmp / "six", num_hidden_layers=6), tmp / "out", "--validation-file", str(t["dev"])), 2,
         lambda tmp: "num_hidden_layers 6"),
    Case("train-config-1e9-layers", lambda t, c, tmp: replace_flag(train(t, tmp), "--model", str(
        config_model(t, tmp, num_hidden_layers=10**9))), 2, lambda tmp: "num_hidden_layers"),
    Case("train-config-hidden-act-evil", lambda t, c, tmp: replace_flag(train(t, tmp), "--model", str(
        config_model(t, tmp, hidden_act="evil"))), 2, lambda tmp: "hidden_act"),
    Case("train-config-huge-hidden-size", lambda t, c, tmp: replace_flag(train(t, tmp), "--teacher", str(
        config_model(t, tmp, hidden_size=10**9))), 2, lambda tmp: "hidden_size"),
    Case("finetune-config-huge-positions", lambda t, c, tmp: replace_flag(finetune_argv(t, tmp / "out"), "--model", str(
        config_model(t, tmp, max_position_embeddings=10**9))), 2, lambda tmp: "max_position_embeddings"),
    Case("finetune-config-num-labels-1e9", lambda t, c, tmp: replace_flag(finetune_argv(t, tmp / "out"), "--model", str(
        config_model(t, tmp, num_labels=10**9))), 2, lambda tmp: "num_labels"),
    Case("eval-nan-logits", lambda t, c, tmp: eval_argv(nan_weights(c, tmp), tmp / "out", "--validation-file",
                                                        str(t["dev"])), 2, lambda tmp: "not finite"),
    Case("eval-flipped-weight-byte", lambda t, c, tmp: eval_argv(flipped_weights(c, tmp), tmp / "out",
                                                                 "--validation-file", str(t["dev"])), 2,
         lambda tmp: "model.safetensors does not match the sha256"),
    Case("eval-damaged-manifest", lambda t, c, tmp: eval_argv(damaged_manifest(c, tmp), tmp / "out",
                                                              "--validation-file", str(t["dev"])), 2,
         lambda tmp: "manifest.json is damaged"),
    # fuzzed inputs: data files
    Case("json-nested-100000", lambda t, c, tmp: eval_argv(c, tmp / "out", "--validation-file",
                                                           str(nested_json(tmp))), 2, lambda tmp: "nested.json"),
    Case("json-label-5000-digits", lambda t, c, tmp: eval_argv(c, tmp / "out", "--validation-file",
                                                               str(long_label_json(tmp))), 2,
         lambda tmp: "digits.json"),
    Case("csv-label-5000-digits", lambda t, c, tmp: replace_flag(train(t, tmp), "--validation-file",
                                                                 str(long_label_csv(tmp))), 2,
         lambda tmp: "digits.csv line 12 has a label of"),
    # fuzzed inputs: flags
    Case("train-seed-2**64", lambda t, c, tmp: train(t, tmp, "--seed", str(2**64)), 2, lambda tmp: "--seed"),
    Case("finetune-seed-2**64", lambda t, c, tmp: finetune_argv(t, tmp / "out", "--seed", str(2**64)), 2,
         lambda tmp: "--seed"),
    Case("train-bin-num-1e9", lambda t, c, tmp: train(t, tmp, "--bin-num", "1000000000"), 2, lambda tmp: "--bin-num"),
    Case("train-batch-size-1e9", lambda t, c, tmp: train(t, tmp, "--batch-size", "1000000000"), 2,
         lambda tmp: "--batch-size"),
    Case("train-epochs-1e9", lambda t, c, tmp: train(t, tmp)[:-2] + ["--epochs", "1e9"], 2, lambda tmp: "--epochs"),
    Case("train-max-steps-1e12", lambda t, c, tmp: replace_flag(train(t, tmp), "--max-steps", str(10**12)), 2,
         lambda tmp: "--max-steps"),
    Case("train-schedule-over-1e8-steps", lambda t, c, tmp: replace_flag(
        train(t, tmp)[:-2] + ["--epochs", "1000000", "--batch-size", "1"], "--train-file", str(many_examples(tmp))),
         2, lambda tmp: "more than the 1e+08"),
    Case("finetune-epochs-1e9", lambda t, c, tmp: finetune_argv(t, tmp / "out", "--epochs", "1e9"), 2,
         lambda tmp: "--epochs"),
    Case("bench-threads-100000", lambda t, c, tmp: bench_argv(t, c, "--threads", "100000"), 2,
         lambda tmp: "--threads"),
    Case("export-opset-1e9", lambda t, c, tmp: ["export", "--checkpoint", str(c), "--output", str(tmp / "m.onnx"),
                                                "--opset", "1000000000"], 2, lambda tmp: "--opset"),
    # issue 33: tokenizers that fail while encoding
    Case("eval-vocab-empty", lambda t, c, tmp: eval_argv(empty_vocab(c, tmp / "empty-vocab"), tmp / "out",
                                                        "--validation-file", str(t["dev"])), 2,
         lambda tmp: "empty-vocab fails on example 1"),
    Case("finetune-vocab-empty", lambda t, c, tmp: replace_flag(finetune_argv(t, tmp / "out"), "--model", str(
        empty_vocab(t["model"], tmp / "empty-vocab"))), 2, lambda tmp: "empty-vocab fails on example 1"),
    Case("train-vocab-empty", lambda t, c, tmp: replace_flag(train(t, tmp), "--model", str(
        empty_vocab(t["model"], tmp / "empty-vocab"))), 2, lambda tmp: "empty-vocab fails on example 1"),
    Case("finetune-vocab-dangling-link", lambda t, c, tmp: replace_flag(finetune_argv(t, tmp / "out"), "--model", str(
        dangling_vocab(t["model"], tmp / "dangling"))), 2, lambda tmp: "vocab.txt is a link to"),
    Case("eval-tokenizer-regex-retry-limit", lambda t, c, tmp: eval_argv(
        backtracking_tokenizer(c, tmp / "regex"), tmp / "out", "--validation-file",
        str(with_row(t["dev"], tmp / "dev.csv", BACKTRACKING_TEXT))), 2, lambda tmp: "regex fails on example 25"),
    Case("finetune-tokenizer-regex-retry-limit", lambda t, c, tmp: replace_flag(replace_flag(
        finetune_argv(t, tmp / "out"), "--model", str(backtracking_tokenizer(t["model"], tmp / "regex"))),
        "--train-file", str(with_row(t["train"], tmp / "train.csv", BACKTRACKING_TEXT))), 2,
         lambda tmp: "regex fails on example 65 of the training data"),
    Case("train-tokenizer-regex-retry-limit", lambda t, c, tmp: replace_flag(replace_flag(
        train(t, tmp), "--model", str(backtracking_tokenizer(t["model"], tmp / "regex"))),
        "--train-file", str(with_row(t["train"], tmp / "train.csv", BACKTRACKING_TEXT))), 2,
         lambda tmp: "regex fails on example 65 of the training data"),
    Case("eval-tokenizer-without-pad-token", lambda t, c, tmp: eval_argv(without_pad_token(c, tmp), tmp / "out",
                                                                        "--validation-file", str(t["dev"])), 2,
         lambda tmp: "no-pad has no padding token"),
    Case("eval-pairs-max-seq-length-2", lambda t, c, tmp: eval_argv(c, tmp / "out", "--validation-file",
                                                                   str(pairs_csv(tmp)), "--max-seq-length", "2"), 2,
         lambda tmp: "max_seq_length 2"),
    # issue 33: data files over the memory bound, refused before they are read
    Case("finetune-data-over-memory-bound", lambda t, c, tmp: finetune_argv(t, tmp / "out"), 2,
         lambda tmp: "GB bound", patch=env("TOP_DATA_MEMORY_GB", "0.000001")),
    Case("eval-memory-bound-not-a-number", lambda t, c, tmp: eval_argv(c, tmp / "out", "--validation-file",
                                                                      str(t["dev"])), 2,
         lambda tmp: "TOP_DATA_MEMORY_GB", patch=env("TOP_DATA_MEMORY_GB", "lots")),
    # issue 33: results tables
    Case("reproduce-table-nan-tolerance", lambda t, c, tmp: reproduce_argv(
        results_table(tmp, "nan.toml", table_row(score_tolerance="nan")), tmp), 2,
         lambda tmp: "nan.toml: cola.score_tolerance is nan"),
    Case("reproduce-table-inf-tolerance", lambda t, c, tmp: reproduce_argv(
        results_table(tmp, "inf.toml", table_row(flops_tolerance="inf")), tmp), 2,
         lambda tmp: "inf.toml: cola.flops_tolerance is inf"),
    Case("reproduce-table-score-10**400", lambda t, c, tmp: reproduce_argv(
        results_table(tmp, "huge.toml", table_row(score="1" + "0" * 400)), tmp), 2,
         lambda tmp: "huge.toml: cola.score"),
    Case("reproduce-table-binary", lambda t, c, tmp: reproduce_argv(
        results_table(tmp, "binary.toml", bytes(range(256)) * 4), tmp), 2, lambda tmp: "binary.toml"),
    Case("reproduce-table-nested-arrays", lambda t, c, tmp: reproduce_argv(
        results_table(tmp, "deep.toml", "a = " + "[" * 100_000 + "]" * 100_000 + "\n"), tmp), 2,
         lambda tmp: "deep.toml nests"),
    Case("reproduce-table-nested-tables", lambda t, c, tmp: reproduce_argv(
        results_table(tmp, "deep.toml", "a = " + "{b = " * 5000 + "1" + "}" * 5000 + "\n"), tmp), 2,
         lambda tmp: "deep.toml nests"),
    Case("reproduce-table-is-a-directory", lambda t, c, tmp: reproduce_argv(tmp, tmp), 2,
         lambda tmp: f"{tmp} is a directory"),
    # issue 33: the crash tests' hook
    Case("kill-at-count-not-a-number", lambda t, c, tmp: train(t, tmp), 2, lambda tmp: "TOP_TEST_KILL_AT",
         patch=env("TOP_TEST_KILL_AT", "written:last:x")),
    Case("kill-at-unknown-phase", lambda t, c, tmp: train(t, tmp), 2, lambda tmp: "TOP_TEST_KILL_AT",
         patch=env("TOP_TEST_KILL_AT", "sometime")),
    # output paths
    Case("train-output-dir-is-file", lambda t, c, tmp: replace_flag(train(t, tmp), "--output-dir", str(a_file(tmp))),
         2, lambda tmp: "a-file"),
    Case("eval-output-dir-is-file", lambda t, c, tmp: eval_argv(c, a_file(tmp) / "sub", "--validation-file",
                                                                str(t["dev"])), 2, lambda tmp: "a-file"),
    # issue 33: what a run writes into, and grids
    Case("train-output-holds-its-teacher", lambda t, c, tmp: train_reading(
        t, tmp, teacher_in_run(t, tmp) / "best", tmp / "R"), 2,
         lambda tmp: f"--model {tmp / 'R' / 'best'} lies in {tmp / 'R' / 'best'}, which this run writes"),
    Case("train-output-holds-its-teacher-overwrite", lambda t, c, tmp: train_reading(
        t, tmp, teacher_in_run(t, tmp) / "best", tmp / "R", "--overwrite-output-dir"), 2,
         lambda tmp: "choose another --output-dir"),
    Case("train-output-is-the-model", lambda t, c, tmp: train_reading(t, tmp, t["model"], t["model"]), 2,
         lambda tmp: "is --model"),
    Case("finetune-output-inside-the-model", lambda t, c, tmp: replace_flag(
        finetune_argv(t, tmp / "out"), "--output-dir", str(t["model"] / "sub")), 2, lambda tmp: "lies inside --model"),
    Case("train-over-a-finished-run", lambda t, c, tmp: replace_flag(train(t, tmp), "--output-dir", str(
        finished_run(tmp))), 2, lambda tmp: "holds another run's best/ and last/; pass --resume"),
    Case("finetune-over-a-finished-run", lambda t, c, tmp: replace_flag(finetune_argv(t, tmp / "out"), "--output-dir",
                                                                        str(finished_run(tmp))), 2,
         lambda tmp: "holds another run's best/ and last/; pass --overwrite-output-dir"),
    Case("train-planted-best-last-links", lambda t, c, tmp: replace_flag(train(t, tmp), "--output-dir", str(
        planted_links(tmp))), 2, lambda tmp: f"best (a link to {tmp / 'elsewhere'}) and last (a link to"),
    Case("train-resume-planted-last-link", lambda t, c, tmp: replace_flag(train(t, tmp, "--resume"), "--output-dir",
                                                                          str(planted_links(tmp))), 2,
         lambda tmp: f"{tmp / 'planted' / 'last'} holds no saved run"),
    Case("train-resume-and-overwrite", lambda t, c, tmp: train(t, tmp, "--resume", "--overwrite-output-dir"), 2,
         lambda tmp: "--overwrite-output-dir: not allowed with argument --resume"),
    Case("grid-learning-rate-negative", lambda t, c, tmp: grid_argv(t, tmp, "[grid]\nlearning_rate = [-1e-5]\n"), 2,
         lambda tmp: "grid.learning_rate = -1e-05 is refused by `top train` (--learning-rate)"),
    Case("grid-1000x1000-dry-run", lambda t, c, tmp: grid_argv(
        t, tmp, "[grid]\nlearning_rate = [" + ", ".join(f"{i + 1}e-8" for i in range(1000)) + "]\n"
        "rank_loss_alpha = [" + ", ".join(f"{i + 1}e-7" for i in range(1000)) + "]\n", "--dry-run"), 2,
         lambda tmp: "has 1,000,000 points (1000 x 1000), more than the 10,000"),
    Case("grid-rerun-with-another-model", lambda t, c, tmp: grid_of_another_model(t, tmp), 2,
         lambda tmp: f"was trained from --model {tmp / 'other'}, not"),
    Case("reproduce-report-is-a-directory", lambda t, c, tmp: ["reproduce", "--report", str(tmp)], 2,
         lambda tmp: f"--report {tmp} is a directory"),
    # environment failures: exit 1
    Case("eval-disk-full", lambda t, c, tmp: eval_argv(c, tmp / "out", "--validation-file", str(t["dev"])), 1,
         lambda tmp: str(tmp / "out"), patch=disk_full),
    Case("train-disk-full", lambda t, c, tmp: train(t, tmp, "--save-steps", "2"), 1,
         lambda tmp: str(tmp / "out"), patch=checkpoint_disk_full),
    # issue 33: the disk fills while last/ or best/ is written, whichever writer meets it
    Case("train-disk-full-in-safetensors", lambda t, c, tmp: train(t, tmp, "--save-steps", "2"), 1,
         lambda tmp: f"cannot write {tmp / 'out' / 'last'}: No space left", patch=disk_fills_at("last", "safetensors")),
    Case("train-disk-full-in-torch-save", lambda t, c, tmp: train(t, tmp, "--save-steps", "2"), 1,
         lambda tmp: f"cannot write {tmp / 'out' / 'last'}: No space left", patch=disk_fills_at("last", "torch.save")),
    Case("train-disk-full-in-tokenizer-save", lambda t, c, tmp: train(t, tmp, "--save-steps", "2"), 1,
         lambda tmp: f"cannot write {tmp / 'out' / 'last'}: No space left", patch=disk_fills_at("last", "tokenizer")),
    Case("train-disk-full-in-config-save", lambda t, c, tmp: train(t, tmp, "--save-steps", "2"), 1,
         lambda tmp: f"cannot write {tmp / 'out' / 'last'}: No space left", patch=disk_fills_at("last", "config")),
    Case("finetune-disk-full-in-safetensors", lambda t, c, tmp: finetune_argv(t, tmp / "out", "--max-steps", "2"), 1,
         lambda tmp: f"cannot write {tmp / 'out' / 'best'}: No space left", patch=disk_fills_at("best", "safetensors")),
    Case("finetune-disk-full-in-tokenizer-save", lambda t, c, tmp: finetune_argv(t, tmp / "out", "--max-steps", "2"),
         1, lambda tmp: f"cannot write {tmp / 'out' / 'best'}: No space left",
         patch=disk_fills_at("best", "tokenizer")),
]


class Warned(NamedTuple):
    """An input read correctly that still deserves a word: exit 0 and one warning naming it."""

    id: str
    argv: Callable[[Dict[str, Path], Path, Path], List[str]]
    needle: Callable[[Path], str]


WARNED = [
    # GLUE's builder drops rows too short for their columns; so do we, no longer without a word.
    Warned("glue-row-missing-a-column", lambda t, c, tmp: eval_argv(c, tmp / "out", "--task", "sst2", "--data-dir",
                                                                    str(glue_row_missing_a_column(tmp))),
           lambda tmp: f"{tmp / 'glue' / 'SST-2' / 'dev.tsv'}: dropped 1 row(s)"),
]


@pytest.mark.parametrize("case", WARNED, ids=[case.id for case in WARNED])
def test_input_read_with_a_warning_says_so_once(case: Warned, tiny, checkpoint, tmp_path, caplog):
    with caplog.at_level("WARNING"):
        assert cli.main(case.argv(tiny, checkpoint, tmp_path)) == 0
    named = [r.getMessage() for r in caplog.records if case.needle(tmp_path) in r.getMessage()]
    assert len(named) == 1, caplog.text
    assert "line 3" in named[0]


def error_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [line for line in err.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    assert err.strip().splitlines()[-1] == lines[0], err
    return lines[0]


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_is_one_sentence(case: Case, tiny, checkpoint, tmp_path, capsys, monkeypatch):
    argv = case.argv(tiny, checkpoint, tmp_path)
    if case.patch is not None:
        case.patch(monkeypatch)
    status = cli.main(argv)
    line = error_line(capsys.readouterr().err)
    assert status == case.status, line
    assert case.needle(tmp_path) in line, line
    # Nothing half-written: no temporary file or directory left anywhere under tmp_path.
    leftovers = [p for p in tmp_path.rglob("*") if ".tmp" in p.name or p.name.endswith(".old")]
    assert not leftovers, leftovers
    if case.status == 2:  # refused before any result: no report, log or checkpoint in the output directory
        written = [p for p in (tmp_path / "out").rglob("*") if p.is_file()] if (tmp_path / "out").is_dir() else []
        assert not written, written


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes through any permission")
@pytest.mark.parametrize("command", ["train", "eval"])
def test_output_dir_without_write_permission_exits_1(command, tiny, checkpoint, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        if command == "train":
            argv = train(tiny, tmp_path, "--output-dir", str(locked / "out"))
        else:
            argv = eval_argv(checkpoint, locked / "out", "--validation-file", str(tiny["dev"]))
        assert cli.main(argv) == 1
        line = error_line(capsys.readouterr().err)
        assert str(locked) in line and "ermission" in line
    finally:
        locked.chmod(0o755)


# ------------------------------------------------------------------------------------- strict JSON


def test_constant_labels_give_null_pearson_with_a_warning(tmp_path, caplog):
    """Pearson of constant dev labels is undefined: the report says null (strict JSON) and a warning says why."""
    dev = tmp_path / "constant.csv"
    write_custom_csv(dev, n=12, regression=True)
    lines = dev.read_text().splitlines()
    dev.write_text("\n".join([lines[0]] + [line.rsplit(",", 1)[0] + ",2.5" for line in lines[1:]]) + "\n")
    regression = tiny_checkpoint(tmp_path / "regression", num_labels=1)
    with caplog.at_level("WARNING"):
        assert cli.main(eval_argv(regression, tmp_path / "out", "--validation-file", str(dev))) == 0
    text = (tmp_path / "out" / "custom.json").read_text()
    record = json.loads(text, parse_constant=lambda name: pytest.fail(f"bare {name} in the report"))
    assert record["metrics"]["pearson"] is None and record["metrics"]["spearmanr"] is None
    assert any("all 12 labels are equal" in r.getMessage() for r in caplog.records)


def test_reports_refuse_nan():
    from top.storage.io import json_text

    with pytest.raises(ValueError):
        json_text({"score": float("nan")})


def test_download_onto_a_full_disk_is_not_called_a_network_problem(monkeypatch, tmp_path, capsys):
    """A checkpoint download that fills the disk ends in exit 1 naming the path, not 'check the network'."""
    import huggingface_hub

    from top.storage import hub

    def fill_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "blobs" / "weights"))

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fill_disk)
    monkeypatch.setattr(hub, "cached_checkpoint", lambda repo_id: None)
    with pytest.raises(OSError) as raised:
        hub._download_to_cache("senfu/bert-base-uncased-top-pruned-sst2", False, None)
    assert raised.value.errno == errno.ENOSPC
    assert cli.environment_message(raised.value).startswith(f"cannot write {tmp_path / 'blobs' / 'weights'}: ")


# ------------------------------------------------------------------------------------- a damaged log never costs a run


@pytest.fixture(scope="module")
def saved_run(tiny, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("resume") / "out"
    argv = train_argv(tiny, out, "--target-sparsity", "0.3", "--max-steps", "4", "--save-steps", "2",
                      "--logging-steps", "1")
    assert cli.main(argv) in FINISHED
    return out


@pytest.mark.parametrize("bad_line", ['{"step": null}', '{"step": "3"}', '[1, 2, 3]', '{"step": ' + "9" * 5000 + "}",
                                      "[" * 100_000],
                         ids=["step-null", "step-string", "json-list", "step-5000-digits", "nested-100000"])
def test_resume_with_a_damaged_log_line_names_it_and_goes_on(bad_line, tiny, saved_run, tmp_path, caplog):
    out = tmp_path / "out"
    shutil.copytree(str(saved_run), str(out))
    lines = (out / "log.jsonl").read_text().splitlines()
    lines.insert(1, bad_line)
    (out / "log.jsonl").write_text("\n".join(lines) + "\n")
    argv = train_argv(tiny, out, "--target-sparsity", "0.3", "--max-steps", "6", "--save-steps", "2",
                      "--logging-steps", "1", "--resume")
    with caplog.at_level("WARNING"):
        assert cli.main(argv) in FINISHED
    warnings = [r.getMessage() for r in caplog.records if "log.jsonl line 2" in r.getMessage()]
    assert len(warnings) == 1 and "dropped it" in warnings[0] and len(warnings[0]) < 400, warnings
    steps = [json.loads(line).get("step") for line in (out / "log.jsonl").read_text().splitlines()]
    assert bad_line not in (out / "log.jsonl").read_text() and max(steps) == 6


def test_a_tokenizer_that_gives_ids_past_the_embeddings_is_one_sentence(checkpoint, tmp_path, capsys):
    """A damaged vocab.txt (one line too many) gives ids the embeddings do not have: one sentence, not an IndexError."""
    target = copy_checkpoint(checkpoint, tmp_path / "longer-vocab")
    if (target / "tokenizer.json").exists():
        (target / "tokenizer.json").unlink()  # the fast tokenizer is rebuilt from vocab.txt
    words = (target / "vocab.txt").read_text().splitlines()
    (target / "vocab.txt").write_text("\n".join(["[unused0]"] + words) + "\n")
    dev = tmp_path / "dev.csv"
    dev.write_text(f"sentence,label\nthe {words[-1]} film,1\na {words[-1]} plot,0\n")
    assert cli.main(eval_argv(target, tmp_path / "out", "--validation-file", str(dev))) == 2
    line = error_line(capsys.readouterr().err)
    assert "The tokenizer of" in line and "input_ids" in line and "vocabulary of" in line, line
