"""A model directory's ``config.json`` and tokenizer, each read by one vetted reader.

Every ``config.json`` top reads (a checkpoint's, ``--model``'s, ``--teacher``'s) goes through
:func:`read_model_config`, once per model and run: the raw file is checked before transformers
sees it (size, JSON, field types and ceilings, label counts), a config that asks to run code of
its own (``auto_map``) is refused, and transformers is told never to trust remote code, so it
never asks on stdin either. Tokenizers load through :func:`load_tokenizer` under the same rule.
:func:`max_input_tokens` is the one statement of the longest input a model takes.
"""

from __future__ import annotations

import json
import math
import os
import stat
import types
from pathlib import Path
from typing import Any, Union

from top.errors import UserError, brief, error_detail
from top.storage.tokenizer_failures import is_tokenizer_failure, rust_panics_quiet

PathLike = Union[str, "os.PathLike[str]"]
CONFIG_FILE = "config.json"
# The tokenizer files that may name code of their own to run.
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"

# Fields of a BERT/RoBERTa config and the kind of value each must hold.
_CONFIG_COUNTS = (
    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
    "max_position_embeddings",
)
_CONFIG_NUMBERS = ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout", "layer_norm_eps",
                   "initializer_range")
# The published architectures are BERT and RoBERTa, base and large: 12 or 24 layers, 768 or 1024
# wide, 12 or 16 heads, 3072 or 4096 inner, 512 or 514 positions, vocabularies of 30,522 and
# 50,265. A config far outside that is damaged or hostile, and building it would allocate memory
# without bound (1e9 layers), so each field has a ceiling with room to spare (twice BERT-large,
# XLM-R's 250k vocabulary), and the model they describe at most MAX_PARAMETERS weights.
CONFIG_CEILINGS = {
    "num_hidden_layers": 48,
    "hidden_size": 4096,
    "num_attention_heads": 64,
    "intermediate_size": 16384,
    "max_position_embeddings": 8192,
    "vocab_size": 500_000,
    "type_vocab_size": 1024,
}
MAX_PARAMETERS = 2_000_000_000  # 8 GB of float32; BERT-large has 335 million
MAX_LABELS = 10_000
MAX_CONFIG_BYTES = 4 << 20


def _activations() -> Any:
    from transformers.activations import ACT2FN

    return ACT2FN


def check_config(config: Any, source: Any) -> Any:
    """``config`` back if its architecture fields have the right types and lie within the published
    architectures' ranges (``CONFIG_CEILINGS``); else one sentence naming ``source``. ``config`` is a
    transformers config or anything with the same attributes (the raw JSON, before transformers reads it)."""
    for name in _CONFIG_COUNTS:
        value = getattr(config, name, None)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise UserError(f"{source} gives {name} as {brief(value)}, not a positive whole number; fix that field.")
    for name in _CONFIG_NUMBERS:
        value = getattr(config, name, None)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise UserError(f"{source} gives {name} as {brief(value)}, not a number; fix that field.")
    for name, ceiling in CONFIG_CEILINGS.items():
        value = getattr(config, name, None)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= ceiling:
            raise UserError(
                f"{source} gives {name} as {brief(value)}, outside 1..{ceiling} (the published BERT and RoBERTa "
                "models use far less); fix that field or download the model again."
            )
    for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout"):
        value = getattr(config, name, None)
        if value is not None and not 0.0 <= value <= 1.0:
            raise UserError(f"{source} gives {name} as {brief(value)}, not a probability in 0..1; fix that field.")
    spread = getattr(config, "initializer_range", None)
    if spread is not None and not (math.isfinite(spread) and spread >= 0.0):
        raise UserError(
            f"{source} gives initializer_range as {brief(spread)}, not a finite number >= 0; fix that field."
        )
    pad, vocabulary = getattr(config, "pad_token_id", None), getattr(config, "vocab_size", None)
    if pad is not None and (isinstance(pad, bool) or not isinstance(pad, int) or pad < 0 or (
            isinstance(vocabulary, int) and pad >= vocabulary)):
        raise UserError(
            f"{source} gives pad_token_id as {brief(pad)}, not an id of its vocabulary of {brief(vocabulary)}; "
            "fix that field."
        )
    eps = getattr(config, "layer_norm_eps", None)
    if eps is not None and not (math.isfinite(eps) and 0.0 < eps < 1.0):
        raise UserError(f"{source} gives layer_norm_eps as {brief(eps)}, not a small positive number; fix that field.")
    heads, width = getattr(config, "num_attention_heads", None), getattr(config, "hidden_size", None)
    if heads and width and width % heads:
        raise UserError(
            f"{source} gives hidden_size {width}, which {heads} attention heads do not divide; fix those fields."
        )
    act = getattr(config, "hidden_act", None)
    if act is not None and not (isinstance(act, str) and act in _activations()):
        raise UserError(
            f"{source} gives hidden_act as {brief(act)}, which transformers does not know; use one such as \"gelu\"."
        )
    parameters = _parameter_count(config)
    if parameters > MAX_PARAMETERS:
        raise UserError(
            f"{source} describes a model of about {parameters:.2g} weights, more than top builds "
            f"({MAX_PARAMETERS:.0e}); fix its sizes or download the model again."
        )
    return config


def _parameter_count(config: Any) -> int:
    """About how many weights a BERT/RoBERTa classifier of ``config`` holds (fields absent count as base's)."""
    def field(name: str, default: int) -> int:
        value = getattr(config, name, None)
        return value if isinstance(value, int) and not isinstance(value, bool) else default

    width, inner = field("hidden_size", 768), field("intermediate_size", 3072)
    rows = field("vocab_size", 30522) + field("max_position_embeddings", 512) + field("type_vocab_size", 2)
    layer = 4 * width * width + 2 * width * inner + 9 * width + inner
    return rows * width + field("num_hidden_layers", 12) * layer + width * width


def check_config_file(directory: PathLike, source: Any) -> None:
    """Check a model directory's raw ``config.json`` before transformers reads it (``check_config`` on its
    fields, and the label count, which transformers expands into a dict of that many names), and that the
    directory holds nothing but regular files and folders (a FIFO among the tokenizer files would block)."""
    directory = Path(directory)
    check_plain_entries(directory)
    file = directory / CONFIG_FILE
    if not file.is_file():
        return  # the caller says what is missing
    if file.stat().st_size > MAX_CONFIG_BYTES:
        raise UserError(f"{source} is larger than {MAX_CONFIG_BYTES >> 20} MiB, not a model config; fix it.")
    try:
        fields = json.loads(file.read_text(encoding="utf-8"))
    except (ValueError, RecursionError, UnicodeDecodeError) as error:
        raise UserError(
            f"{source} is not valid JSON ({error_detail(error)}); fix it or download the model again."
        ) from None
    if not isinstance(fields, dict):
        raise UserError(f"{source} does not hold a JSON object; fix it or download the model again.")
    labels = fields.get("num_labels")
    if labels is not None and (
        isinstance(labels, bool) or not isinstance(labels, int) or not 1 <= labels <= MAX_LABELS
    ):
        raise UserError(f"{source} gives num_labels as {brief(labels)}, outside 1..{MAX_LABELS}; fix that field.")
    for key in ("id2label", "label2id"):
        if isinstance(fields.get(key), (dict, list)) and len(fields[key]) > MAX_LABELS:
            raise UserError(f"{source} names more than {MAX_LABELS} labels in {key}; fix that field.")
    # Absent means transformers' default; null means no value at all, which only classifier_dropout may have.
    required = _CONFIG_COUNTS + tuple(CONFIG_CEILINGS) + ("hidden_act",) + _CONFIG_NUMBERS
    for name in required:
        if name in fields and fields[name] is None and name != "classifier_dropout":
            raise UserError(f"{source} gives {name} as null; give it a value or drop the field.")
    refuse_own_code(fields, source)
    check_config(types.SimpleNamespace(**{k: v for k, v in fields.items() if isinstance(k, str)}), source)


def check_plain_entries(directory: Path) -> None:
    """A ``UserError`` when ``directory`` holds a FIFO, socket or device (or a link to one)."""
    if not directory.is_dir():
        return
    for entry in directory.iterdir():
        try:
            mode = entry.stat().st_mode
        except OSError:
            continue  # a dangling link: the reader of that file says so, if it is one we read
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            raise UserError(
                f"{entry} is not a regular file (a FIFO, socket or device); remove it from {directory}."
            )


def refuse_own_code(fields: Any, source: Any) -> None:
    """A ``UserError`` when a config's raw fields name code of the model's own to run (``auto_map``)."""
    if isinstance(fields, dict) and "auto_map" in fields:
        fix = ("remove the auto_map entry (its model_type alone says what to build)" if fields.get("model_type")
               else "remove the auto_map entry, or use a BERT or RoBERTa model whose config.json names its model_type")
        raise UserError(
            f"{source} has an auto_map, which asks to run Python code shipped with the model, and top never runs "
            f"code from a model folder; {fix}."
        )


def read_model_config(directory: PathLike, source: Any, **overrides: Any) -> Any:
    """The transformers config of the model in ``directory``, vetted (see the module docstring).

    ``source`` names the config in messages (``The config.json of --model M``); ``overrides``
    (``num_labels=...``) are passed to ``AutoConfig.from_pretrained``.
    """
    from transformers import AutoConfig

    directory = Path(directory)
    if not (directory / CONFIG_FILE).is_file():
        raise UserError(f"{directory} has no {CONFIG_FILE}; give a model directory that holds the model's config.json.")
    check_config_file(directory, source)
    try:
        config = AutoConfig.from_pretrained(str(directory), trust_remote_code=False, **overrides)
    except Exception as error:  # noqa: BLE001 - transformers raises many kinds for a bad config
        raise UserError(
            f"{source} is not a valid Hugging Face config ({error_detail(error)}); fix it or download the model again."
        ) from None
    return check_config(config, source)


def load_tokenizer(source: PathLike, flag: str = "", fix: str = "") -> Any:
    """The tokenizer in directory ``source`` (or of hub id ``source``), never running code of its own.

    ``flag`` prefixes ``source`` in the message (``--model``); ``fix`` is what the user should do.
    """
    from transformers import AutoTokenizer

    directory = Path(source)
    named = f"{flag} {source}".strip()
    # transformers reads both, and asks on stdin whether to run the code a config.json without a
    # model_type names (its tokenizer loader reads config.json without trust_remote_code=False).
    for config_file in (directory / TOKENIZER_CONFIG_FILE, directory / CONFIG_FILE):
        if not config_file.is_file() or config_file.stat().st_size > MAX_CONFIG_BYTES:
            continue  # none, or too large to be one: the readers that follow say what is wrong
        try:
            fields = json.loads(config_file.read_text(encoding="utf-8"))
        except (ValueError, RecursionError, UnicodeDecodeError, OSError):
            fields = None  # the tokenizer's own reader says what is wrong with it
        refuse_own_code(fields, config_file)
    for member in _dangling_links(directory):  # transformers would report a stat() of None
        raise UserError(
            f"No tokenizer could be loaded from {named}: {member.name} is a link to {os.readlink(member)}, "
            f"which does not exist; {fix or 'put the tokenizer files next to the weights'}."
        )
    try:
        with rust_panics_quiet():
            return AutoTokenizer.from_pretrained(str(source), trust_remote_code=False)
    except BaseException as error:  # noqa: BLE001 - HF raises many kinds; a tokenizers panic is a BaseException
        if not is_tokenizer_failure(error):
            raise
        raise UserError(
            f"No tokenizer could be loaded from {named} ({error_detail(error)}); "
            f"{fix or 'put the tokenizer files next to the weights'}."
        ) from None


def _dangling_links(directory: Path) -> list:
    """The links in ``directory`` whose targets do not exist (none where it cannot be listed)."""
    try:
        return [member for member in sorted(directory.iterdir()) if member.is_symlink() and not member.exists()]
    except OSError:
        return []  # not a readable directory (a hub id, say): the loader says what is wrong


def max_input_tokens(config: Any) -> int:
    """The longest input, in tokens, that the model's position embeddings allow."""
    limit = int(config.max_position_embeddings)
    if getattr(config, "model_type", None) in ("roberta", "xlm-roberta", "camembert"):
        limit -= int(getattr(config, "pad_token_id", 0) or 0) + 1  # their positions start after the padding index
    return limit
