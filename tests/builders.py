"""Builders for tests: tiny tokenizers, checkpoints in the published layout, GLUE-layout data.

Everything here is made from scratch in a temporary directory, so no test needs the hub.
"""

from __future__ import annotations

import importlib
import json
import os
import random
import sys
import textwrap
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

WORDS = (
    "the a movie film plot actor was is very not good bad great awful funny boring dull bright "
    "story scene music quite really too slow fast charming clumsy smart silly warm cold"
).split()
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def write_vocab(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "vocab.txt"
    path.write_text("\n".join(SPECIAL + list(WORDS)) + "\n", encoding="utf-8")
    return path


def tiny_tokenizer(directory: Path):
    from transformers import BertTokenizerFast

    vocab = write_vocab(directory)
    return BertTokenizerFast(vocab_file=str(vocab), do_lower_case=True)


def tiny_config(
    num_labels: int = 2,
    layers: int = 4,
    finetuning_task: Optional[str] = None,
    *,
    kind: str = "bert",
    vocab_size: Optional[int] = None,
    dropout: Optional[float] = None,
    max_position_embeddings: int = 300,
):
    """The one tiny BERT (or RoBERTa) shape of the tests: 32 wide, 2 heads, ``layers`` deep.

    ``vocab_size`` defaults to the tiny tokenizer's; ``dropout`` None keeps transformers' 0.1.
    """
    from transformers import BertConfig, RobertaConfig

    fields = dict(
        vocab_size=vocab_size if vocab_size is not None else len(SPECIAL) + len(WORDS),
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=max_position_embeddings,
        num_labels=num_labels,
        finetuning_task=finetuning_task,
    )
    if dropout is not None:
        fields.update(hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    if kind == "roberta":
        return RobertaConfig(pad_token_id=1, **fields)
    assert kind == "bert", kind
    return BertConfig(**fields)


def tiny_roberta_config(num_labels: int = 2, layers: int = 4):
    """The RoBERTa twin of :func:`tiny_config` (padding id 1, positions offset past it)."""
    from transformers import RobertaConfig

    return RobertaConfig(
        vocab_size=len(SPECIAL) + len(WORDS),
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=302,
        pad_token_id=1,
        num_labels=num_labels,
    )


def gate_state(prune_locations: Sequence[int], bin_num: int, keep_bins: int, seed: int = 0) -> dict:
    """Gate logits whose deterministic masks keep the first ``keep_bins`` bins at every location."""
    gen = torch.Generator().manual_seed(seed)
    n = len(prune_locations)
    token_loga = torch.full((n, bin_num), -4.0) + 0.01 * torch.randn(n, bin_num, generator=gen)
    token_loga[:, :keep_bins] = 4.0
    return {
        "token_loga": token_loga,
        "pruner_loga": torch.full((n,), 4.0),
        "lambda_1": torch.tensor(0.5),
        "lambda_2": torch.tensor(-0.25),
        "prune_locations": list(prune_locations),
        "bin_num": bin_num,
        "temperature": 2.0 / 3.0,
        "magical_number": 0.8,
    }


def tiny_checkpoint(
    directory: Path,
    num_labels: int = 2,
    layers: int = 4,
    prune_locations: Optional[Sequence[int]] = None,
    bin_num: int = 10,
    keep_bins: int = 6,
    seed: int = 0,
    finetuning_task: Optional[str] = None,
    pruned: bool = True,
    model_type: str = "bert",
    max_position_embeddings: int = 300,
) -> Path:
    """A random tiny BERT (or RoBERTa) saved in the published layout (config, weights, zs.pt, l0_module.pt,
    tokenizer; the RoBERTa one carries the same word-piece tokenizer, enough for tests)."""
    from transformers import BertForSequenceClassification, RobertaForSequenceClassification

    from top.method.checkpoint import save_checkpoint

    torch.manual_seed(seed)
    if model_type == "roberta":
        config = tiny_roberta_config(num_labels, layers)
        model = RobertaForSequenceClassification(config)
    else:
        config = tiny_config(num_labels, layers, finetuning_task, max_position_embeddings=max_position_embeddings)
        model = BertForSequenceClassification(config)
    tokenizer = tiny_tokenizer(directory.parent / f".{directory.name}-vocab")
    locations = list(prune_locations) if prune_locations is not None else list(range(2, layers))
    gates = gate_state(locations, bin_num, keep_bins, seed) if pruned else None
    return save_checkpoint(
        directory, model_state_dict=model.state_dict(), config=config, gate_state=gates, tokenizer=tokenizer
    )


def tiny_model_dir(
    directory: Path, *, num_labels: int = 2, layers: int = 4, dropout: Optional[float] = None, vocab_extra: int = 0,
    seed: int = 0, max_position_embeddings: int = 300,
) -> Path:
    """A random tiny BERT classifier plus its tokenizer in the plain HF layout every stack reads:
    config.json, a ``torch.save``d state dict as pytorch_model.bin, the tokenizer files."""
    from transformers import BertForSequenceClassification

    torch.manual_seed(seed)
    config = tiny_config(num_labels, layers, dropout=dropout, max_position_embeddings=max_position_embeddings)
    config.vocab_size += vocab_extra
    directory.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(directory))
    torch.save(BertForSequenceClassification(config).state_dict(), str(directory / "pytorch_model.bin"))
    tiny_tokenizer(directory.parent / f".{directory.name}-vocab").save_pretrained(str(directory))
    return directory


def sentences(n: int, seed: int = 0, low: int = 3, high: int = 14) -> List[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high))) for _ in range(n)]


def write_cola_dev(glue_dir: Path, n: int = 40, seed: int = 0, split: str = "dev") -> Path:
    """CoLA's dev.tsv (or ``split``.tsv): no header; source, label, original label, sentence."""
    rng = random.Random(seed)
    path = glue_dir / "CoLA" / f"{split}.tsv"
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [f"src{i % 3}\t{rng.randint(0, 1)}\t\t{s}" for i, s in enumerate(sentences(n, seed))]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def write_sst2_dev(glue_dir: Path, n: int, seed: int = 1) -> Path:
    """SST-2's dev.tsv: a header, then sentence and label."""
    path = glue_dir / "SST-2" / "dev.tsv"
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = ["sentence\tlabel"] + [f"{s}\t{i % 2}" for i, s in enumerate(sentences(n, seed))]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def write_container_world(root: Path) -> Path:
    """What tests/test_containers.py mounts into the containers, made inside the image itself:
    ``checkpoints/`` with two published-layout checkpoints under their published repo names plus
    a tiny base model for train-cola, and ``glue/`` with CoLA (train and dev) and SST-2 (dev)."""
    checkpoints, glue = root / "checkpoints", root / "glue"
    tiny_checkpoint(checkpoints / "bert-base-uncased-top-pruned-cola", layers=3, keep_bins=5, seed=3)
    tiny_checkpoint(checkpoints / "bert-base-uncased-top-pruned-sst2", layers=3, keep_bins=4, seed=4)
    tiny_model_dir(checkpoints / "tiny-base", layers=3, seed=5)
    write_cola_dev(glue, n=96, seed=6, split="train")
    write_cola_dev(glue, n=23, seed=0)
    write_sst2_dev(glue, n=29)
    return root


def write_custom_csv(path: Path, n: int = 30, seed: int = 0, regression: bool = False) -> Path:
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["sentence,label"]
    for s in sentences(n, seed):
        label = f"{rng.uniform(0, 5):.3f}" if regression else str(rng.randint(0, 1))
        lines.append(f"{s},{label}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


if __name__ == "__main__":
    import sys

    write_container_world(Path(sys.argv[1]))


# ------------------------------------------------------------------- the training commands' world

REPOSITORY = Path(__file__).resolve().parents[1]
# What `top train` exits with when a run finished: 0 with best/ written, 3 without (no evaluation qualified).
FINISHED = (0, 3)


def single_thread():
    """Tiny models run fastest on one thread; two OpenMP threads on a busy 2-core box spin for ages."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def subprocess_env() -> Dict[str, str]:
    path = str(REPOSITORY) + os.pathsep + os.environ.get("PYTHONPATH", "")
    return dict(os.environ, PYTHONPATH=path, OMP_NUM_THREADS="1")


def write_data(path: Path, n: int, seed: int, labels: bool = True) -> Path:
    """Sentences of 8-30 words; the label says whether 'good' or 'great' occurs."""
    rng = random.Random(seed)
    lines = ["sentence,label" if labels else "sentence"]
    for _ in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(8, 30))]
        text = " ".join(words)
        lines.append(f"{text},{int('good' in words or 'great' in words)}" if labels else text)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def build_tiny(tmp_path_factory) -> Dict[str, Path]:
    """Two tiny models (with and without dropout) and a train and a dev csv."""
    root = tmp_path_factory.mktemp("tiny")
    return {
        "model": tiny_model_dir(root / "model"),
        "model_no_dropout": tiny_model_dir(root / "model_no_dropout", dropout=0.0),
        "train": write_data(root / "train.csv", 64, seed=1),
        "dev": write_data(root / "dev.csv", 24, seed=2),
        "root": root,
    }


def train_argv(tiny: Dict[str, Path], out: Path, *extra: str, model_key: str = "model") -> List[str]:
    return [
        "train",
        "--model",
        str(tiny[model_key]),
        "--teacher",
        str(tiny[model_key]),
        "--train-file",
        str(tiny["train"]),
        "--validation-file",
        str(tiny["dev"]),
        "--bin-num",
        "10",
        "--topk",
        "5",
        "--batch-size",
        "8",
        "--device",
        "cpu",
        "--no-progress",
        "--output-dir",
        str(out),
        *extra,
    ]


# The paper's recipe flags (top.training.config.PAPER_RECIPE, which test_train holds these to), which
# a user's own data (every tiny run here) no longer takes by default: for the tests of the paper's
# recipe on own files. Written out, not imported: the behaviour pins load this module under an older top.
PAPER_FLAGS = (
    "--learning-rate", "1e-05", "--reg-learning-rate", "0.02", "--sparsity-control", "paper",
    "--sparsity-epsilon", "0.01", "--best-rule", "score", "--layer-gate-init", "-10.0", "--eval-steps", "100",
)
# A short run of the paper's recipe that prunes, evaluates and saves (it never reaches its target).
SHORT = (
    *PAPER_FLAGS,
    "--target-sparsity",
    "0.3",
    "--max-steps",
    "12",
    "--warmup-epochs",
    "1",
    "--reg-learning-rate",
    "0.1",
    "--eval-steps",
    "4",
    "--save-steps",
    "3",
    "--logging-steps",
    "2",
)


def tensors(directory: Path) -> Dict[str, torch.Tensor]:
    """Every tensor a checkpoint holds: weights, masks, gate logits and lambdas."""
    from top.storage.safeload import read_state_dict, read_torch_file

    found = {}
    found.update({f"w.{k}": v for k, v in read_state_dict(directory).items()})
    found.update({f"z.{k}": v for k, v in read_torch_file(directory / "zs.pt").items()})
    gates = read_torch_file(directory / "l0_module.pt")
    found.update({f"g.{k}": v for k, v in gates.items() if torch.is_tensor(v)})
    return found


def assert_bit_identical(a: Path, b: Path) -> None:
    left, right = tensors(a), tensors(b)
    assert left.keys() == right.keys()
    different = [k for k in left if not torch.equal(left[k], right[k])]
    assert not different, f"differ: {different[:5]}"


def read_log(out: Path) -> List[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


KILLER = r"""
import os, signal, sys, torch
from top import cli
mode, at = sys.argv[1], int(sys.argv[2])
calls = [0]

def kill_on_call():
    calls[0] += 1
    if calls[0] == at:
        os.kill(os.getpid(), signal.SIGKILL)

if mode == "step":
    adamw_step = torch.optim.AdamW.step
    def step(self, *args, **kwargs):
        kill_on_call()
        return adamw_step(self, *args, **kwargs)
    torch.optim.AdamW.step = step
else:
    import safetensors.torch
    def killing(write):
        def save(obj, f, *args, **kwargs):
            if ".last.tmp" in str(f):
                kill_on_call()
            return write(obj, f, *args, **kwargs)
        return save
    torch.save = killing(torch.save)
    safetensors.torch.save_file = killing(safetensors.torch.save_file)
sys.exit(cli.main(sys.argv[3:]))
"""


def finetune_argv(tiny: Dict[str, Path], out: Path, *extra: str) -> List[str]:
    return [
        "finetune",
        "--model",
        str(tiny["model"]),
        "--train-file",
        str(tiny["train"]),
        "--validation-file",
        str(tiny["dev"]),
        "--batch-size",
        "16",
        "--learning-rate",
        "1e-3",
        "--device",
        "cpu",
        "--no-progress",
        "--output-dir",
        str(out),
        *extra,
    ]


# ------------------------------------------------------------------- processes started by a test


def process_tree(pid: int) -> List[int]:
    """``pid`` and every process below it (from /proc), so that what a test started is stopped by pid."""
    children: Dict[int, List[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo.extend(children.get(p, []))
    return found


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and everything below it, the children first (so none is left to reparent)."""
    import signal

    for p in reversed(process_tree(pid)):
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


# The authors' class, reduced to what is pickled: parameters, plain attributes, dicts that alias
# the parameters, a tensor attribute and the transformers config. The test writes it to a temporary
# package ``models`` so that the pickle names ``models.l0_module.L0ModuleForMAC`` like theirs.
ORIGINAL_L0_MODULE = textwrap.dedent(
    """
    import torch
    from torch.nn import Module, Parameter


    class L0Module(Module):
        def __init__(self, config, token_prune_loc, bin_num, token_loga, pruner_loga,
                     lambda_1, lambda_2, temperature=2. / 3., magical_number=0.8):
            super().__init__()
            self.bin_num = bin_num
            self.token_prune_loc = list(token_prune_loc)
            self.temperature = temperature
            self.magical_number = magical_number
            self.droprate_init = 0.5
            self.pruning_type = "token+pruner"
            self.num_hidden_layers = config.num_hidden_layers
            self.types = ["token", "pruner"]
            self.hidden_loga = None
            self.token_loga = Parameter(token_loga.clone())
            self.pruner_loga = Parameter(pruner_loga.clone())
            self.z_logas = {"token": self.token_loga, "pruner": self.pruner_loga}
            self.sizes = {"token": bin_num, "pruner": 1}
            self.shapes = {"token": [len(token_prune_loc), bin_num], "pruner": [len(token_prune_loc)]}
            self.parameters_per_dim = {"token": None, "pruner": None}
            self.lambda_1 = Parameter(torch.tensor(lambda_1))
            self.lambda_2 = Parameter(torch.tensor(lambda_2))
            self.lambda_3 = torch.tensor(0.0)
            self.lagrangian_warmup = 100
            self.target_sparsity = 0.5


    class L0ModuleForMAC(L0Module):
        def __init__(self, config, **kwargs):
            super().__init__(config, **kwargs)
            self.config = config
    """
)


def save_original_gates(tmp_path, config, legacy=False, **gate_kwargs):
    """Pickle the authors' class with torch.save, then make that class unimportable again."""
    source = tmp_path / "original_src"
    (source / "models").mkdir(parents=True)
    (source / "models" / "__init__.py").write_text("")
    (source / "models" / "l0_module.py").write_text(ORIGINAL_L0_MODULE)
    sys.path.insert(0, str(source))
    try:
        module = importlib.import_module("models.l0_module")
        gate_module = module.L0ModuleForMAC(config, **gate_kwargs)
        file = tmp_path / "l0_module.pt"
        torch.save(gate_module, str(file), _use_new_zipfile_serialization=not legacy)
    finally:
        sys.path.remove(str(source))
        for name in ("models.l0_module", "models"):
            sys.modules.pop(name, None)
    return file


def original_checkpoint(directory: Path, locations: Sequence[int] = (2, 3), bin_num: int = 6, keep_bins: int = 4,
                        layers: int = 4, seed: int = 0) -> Path:
    """A tiny pruned BERT in the layout the authors' code wrote: ``config.json``, a ``torch.save``d
    ``pytorch_model.bin``, ``zs.pt``, the pickled ``models.l0_module.L0ModuleForMAC`` as ``l0_module.pt``,
    and the tokenizer files."""
    from transformers import BertForSequenceClassification

    from top.method.gates import deterministic_masks

    torch.manual_seed(seed)
    config = tiny_config(2, layers, finetuning_task="sst2")
    directory.mkdir(parents=True)
    config.save_pretrained(str(directory))
    torch.save(BertForSequenceClassification(config).state_dict(), str(directory / "pytorch_model.bin"))
    tiny_tokenizer(directory.parent / f".{directory.name}-vocab").save_pretrained(str(directory))
    gates = gate_state(locations, bin_num, keep_bins, seed)
    token_z, pruner_z = deterministic_masks(gates["token_loga"], gates["pruner_loga"], gates["temperature"],
                                            gates["magical_number"])
    torch.save({"token_z": token_z, "pruner_z": pruner_z}, str(directory / "zs.pt"))
    file = save_original_gates(directory.parent / f".{directory.name}-gates", config, token_prune_loc=list(locations),
                               bin_num=bin_num, token_loga=gates["token_loga"], pruner_loga=gates["pruner_loga"],
                               lambda_1=0.5, lambda_2=-0.25)
    os.replace(str(file), str(directory / "l0_module.pt"))
    return directory


# ------------------------------------------------------------------- a model whose time is in its tokens


def timed_model_dir(directory: Path, *, layers: int = 4, hidden: int = 128, seed: int = 0) -> Path:
    """A small BERT classifier (``hidden`` wide, 4x inner, 2 heads) in the plain HF layout, with the tiny
    tokenizer: large enough that a forward pass's time grows with its tokens (the tiny model's is all
    overhead), for the tests that run ``top calibrate``."""
    from transformers import BertForSequenceClassification

    torch.manual_seed(seed)
    config = tiny_config(2, layers)
    config.hidden_size, config.intermediate_size = hidden, 4 * hidden
    directory.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(directory))
    torch.save(BertForSequenceClassification(config).state_dict(), str(directory / "pytorch_model.bin"))
    tiny_tokenizer(directory.parent / f".{directory.name}-vocab").save_pretrained(str(directory))
    return directory


def write_long_data(path: Path, n: int, seed: int) -> Path:
    """As :func:`write_data`, with 40-120 words a sentence."""
    rng = random.Random(seed)
    lines = ["sentence,label"]
    for _ in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(40, 120))]
        lines.append(f"{' '.join(words)},{int('good' in words)}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
