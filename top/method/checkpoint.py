"""Reading and writing the published ToP checkpoint layout.

A checkpoint directory holds ``config.json``, ``pytorch_model.bin`` (or ``model.safetensors``),
tokenizer files, ``zs.pt`` (the 0/1 masks ``token_z [n_loc, bin_num]`` and ``pruner_z [n_loc]``)
and ``l0_module.pt`` (the gate logits). The authors' ``l0_module.pt`` is a whole pickled
``models.l0_module.L0ModuleForMAC``; every file is read through ``top.storage.safeload``, whose
allow-list maps that class (and the ``transformers`` config inside it) onto inert stand-ins, so
nothing in a file runs. We write the weights as ``model.safetensors`` and ``zs.pt`` and
``l0_module.pt`` as torch files of plain tensors, lists and numbers (the names and formats the
authors' evaluation reads); ``l0_module.pt`` holds the gate-state dict of ``top.method.gates``, as it is.
What the gates mean (their masks, defaults and valid locations) is ``top.method.gates``'s to say.
"""

import json
import math
import os
import re
import stat
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import torch

from top.errors import UserError, brief
from top.method.gates import (
    DEFAULT_MAGICAL_NUMBER,
    DEFAULT_TEMPERATURE,
    GATES_FORMAT,
    check_prune_locations,
    deterministic_masks,
    mask_disagreeing_with,
    read_gate_state,
    trailing_prune_locations,
)
from top.storage.io import atomic_directory
from top.storage.manifest import verify_manifest, write_manifest
from top.storage.safeload import (
    SAFETENSORS_FILE,
    WEIGHTS_FILE,
    PickledGateModule,
    error_detail,
    read_state_dict,
    read_torch_file,
    write_safetensors,
)

CONFIG_FILE = "config.json"
MASKS_FILE = "zs.pt"
GATES_FILE = "l0_module.pt"
# What a bad checkpoint file's error message tells the user to do.
_REFETCH = "download or save the checkpoint again"

_RESERVED_FILES = {CONFIG_FILE, WEIGHTS_FILE, SAFETENSORS_FILE, MASKS_FILE, GATES_FILE}

PathLike = Union[str, Path]


@dataclass
class PrunedCheckpoint:
    """Everything a checkpoint directory holds, on the CPU.

    ``token_z``/``pruner_z`` are None for a dense model (no ``zs.pt`` and no ``l0_module.pt``);
    then ``prune_locations`` is empty and ``bin_num`` is None. ``gate_state`` is the gate-state
    dict of ``top.method.gates.read_gate_state`` (logits, Lagrange multipliers, ``prune_locations``,
    ``bin_num``, ``temperature``, ``magical_number``; ``TokenGates.from_state`` takes it whole),
    or None without ``l0_module.pt``.
    """

    path: Path
    config: Any
    state_dict: Dict[str, torch.Tensor]
    token_z: Optional[torch.Tensor]
    pruner_z: Optional[torch.Tensor]
    prune_locations: List[int]
    bin_num: Optional[int]
    gate_state: Optional[Dict[str, Any]]
    temperature: float
    magical_number: float

    @property
    def is_pruned(self) -> bool:
        return self.token_z is not None


# ----------------------------------------------------------------------------------------------
# Reading


def _load_config(path: Path) -> Any:
    from transformers import AutoConfig

    if not (path / CONFIG_FILE).is_file():
        raise UserError(
            f"{path} has no {CONFIG_FILE}; point to a checkpoint directory that holds the model's config.json."
        )
    check_config_file(path, path / CONFIG_FILE)
    try:
        config = AutoConfig.from_pretrained(str(path))
    except Exception as error:
        raise UserError(
            f"{path / CONFIG_FILE} is not a valid Hugging Face config ({error_detail(error)}); "
            "fix it or download the checkpoint again."
        ) from None
    return check_config(config, path / CONFIG_FILE)


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


def check_config_fits_weights(config: Any, state_dict: Mapping[str, torch.Tensor], where: Any) -> None:
    """The weights' own shapes against config.json's sizes, before a model of that config is built."""
    fix = "fix config.json or download the checkpoint again"
    layers = set()
    for key in state_dict:
        match = _LAYER_KEY.search(key)
        if match:
            layers.add(int(match.group(1)))
    if layers and layers != set(range(config.num_hidden_layers)):
        raise UserError(
            f"config.json of {where.parent} gives num_hidden_layers {config.num_hidden_layers} but {where} holds "
            f"layers {brief(sorted(layers))}; {fix}."
        )
    shapes = {
        "embeddings.word_embeddings.weight": (config.vocab_size, config.hidden_size),
        "embeddings.position_embeddings.weight": (config.max_position_embeddings, config.hidden_size),
        "encoder.layer.0.intermediate.dense.weight": (config.intermediate_size, config.hidden_size),
    }
    for key, tensor in state_dict.items():
        for suffix, shape in shapes.items():
            if key.endswith(suffix) and tuple(tensor.shape) != shape:
                raise UserError(
                    f"The weight {key} in {where} has shape {tuple(tensor.shape)} but config.json implies {shape}; "
                    f"{fix}."
                )


_LAYER_KEY = re.compile(r"encoder\.layer\.([0-9]{1,6})\.")


def _load_state_dict(path: Path) -> Dict[str, torch.Tensor]:
    if not (path / SAFETENSORS_FILE).is_file() and not (path / WEIGHTS_FILE).is_file():
        raise UserError(
            f"{path} has neither {WEIGHTS_FILE} nor {SAFETENSORS_FILE}; point to a checkpoint directory "
            "that holds the model weights."
        )
    return read_state_dict(path, check_manifest=False)  # load_checkpoint has checked the whole manifest


def weights_file_of(path: Path) -> Path:
    """The weights file that ``read_state_dict`` reads from ``path``."""
    return path / SAFETENSORS_FILE if (path / SAFETENSORS_FILE).is_file() else path / WEIGHTS_FILE


def _as_mask(value: Any, file: Path, key: str, ndim: int) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or value.dim() != ndim:
        raise UserError(
            f"{file} has no {ndim}-dimensional tensor under '{key}'; download or save the checkpoint again."
        )
    mask = value.detach().to(torch.float32)
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise UserError(f"{file} '{key}' holds values other than 0 and 1; download or save the checkpoint again.")
    return mask


def _load_masks(file: Path) -> Tuple[torch.Tensor, torch.Tensor]:
    zs = read_torch_file(file, what="mask file")
    if not isinstance(zs, Mapping) or "token_z" not in zs or "pruner_z" not in zs:
        raise UserError(
            f"{file} does not hold the keys 'token_z' and 'pruner_z'; download or save the checkpoint again."
        )
    token_z = _as_mask(zs["token_z"], file, "token_z", 2)
    pruner_z = _as_mask(zs["pruner_z"], file, "pruner_z", 1)
    if token_z.shape[0] > 0 and token_z.shape[1] == 0:
        raise UserError(f"{file} has token_z with 0 rank bins; download or save the checkpoint again.")
    if pruner_z.shape[0] != token_z.shape[0]:
        raise UserError(
            f"{file} has {token_z.shape[0]} rows of token_z but {pruner_z.shape[0]} pruner_z gates; "
            "download or save the checkpoint again."
        )
    return token_z, pruner_z


def _gate_state(obj: Any, file: Path, num_layers: int) -> Optional[Dict[str, Any]]:
    """The gate state held by ``l0_module.pt``: our gate-state dict, or the original's pickled module."""
    if obj is None:  # the original saves ``self.l0_module`` even when it is None
        return None
    if isinstance(obj, PickledGateModule):
        attributes = getattr(obj, "pickled_state", {})
        parameters = attributes.get("_parameters")
        fields = dict(parameters) if isinstance(parameters, Mapping) else {}
        for key in ("token_prune_loc", "bin_num", "temperature", "magical_number"):
            if key in attributes:
                fields[key] = attributes[key]
    elif isinstance(obj, Mapping) and obj.get("format") == GATES_FORMAT:
        fields = dict(obj)
    else:
        raise UserError(
            f"{file} holds neither ToP's L0ModuleForMAC nor a '{GATES_FORMAT}' gate dict; save the checkpoint "
            "again with `top`."
        )
    return read_gate_state(fields, source=str(file), fix=_REFETCH, num_layers=num_layers)


def _check_masks_match(
    token_z: torch.Tensor, pruner_z: torch.Tensor, gates: Dict[str, Any], masks_file: Path, gates_file: Path
) -> None:
    if token_z.shape != gates["token_loga"].shape or pruner_z.shape != gates["pruner_loga"].shape:
        raise UserError(
            "{} has masks of shape {} and {} but {} has gates of shape {} and {}; use the two files "
            "from the same checkpoint.".format(
                masks_file,
                tuple(token_z.shape),
                tuple(pruner_z.shape),
                gates_file,
                tuple(gates["token_loga"].shape),
                tuple(gates["pruner_loga"].shape),
            )
        )
    if mask_disagreeing_with(token_z, pruner_z, gates) is not None:
        raise UserError(
            f"{masks_file} does not hold the masks that the gate logits in {gates_file} give; "
            "use the two files from the same checkpoint."
        )


def _present(file: Path) -> bool:
    """Whether an optional file of the layout is there; one that is there but unreadable is refused."""
    if file.is_file():
        return True
    if file.is_symlink() and not file.exists():
        raise UserError(f"{file} is a link to {os.readlink(str(file))}, which does not exist; fix or remove the link.")
    if file.exists():
        raise UserError(f"{file} is not a file; remove it or replace it with the checkpoint's {file.name}.")
    return False


def load_checkpoint(path: PathLike) -> PrunedCheckpoint:
    """Read a checkpoint directory (published by the authors or written by ``save_checkpoint``).

    A directory with ``manifest.json`` (what ``save_checkpoint`` writes) has every file it lists
    checked against its sha256 first; the config's sizes are checked against the published
    architectures' ranges before transformers reads it, and against the weights' own shapes.

    With both ``zs.pt`` and ``l0_module.pt`` the masks are recomputed from the gate logits and
    must agree with ``zs.pt``; the returned masks are those of ``zs.pt`` when it exists.
    """
    path = Path(path)
    if not path.is_dir():
        raise UserError(
            f"Checkpoint directory {path} does not exist; give a directory with config.json and the "
            "model weights (e.g. a clone of senfu/bert-base-uncased-top-pruned-sst2)."
        )
    verify_manifest(path)
    config = _load_config(path)
    state_dict = _load_state_dict(path)
    check_config_fits_weights(config, state_dict, weights_file_of(path))
    num_layers = int(config.num_hidden_layers)

    masks_file, gates_file = path / MASKS_FILE, path / GATES_FILE
    masks = _load_masks(masks_file) if _present(masks_file) else None
    gates = None
    if _present(gates_file):
        raw = read_torch_file(gates_file, allow_gate_module=True, what="gate file")
        gates = _gate_state(raw, gates_file, num_layers)

    temperature, magical_number = DEFAULT_TEMPERATURE, DEFAULT_MAGICAL_NUMBER
    if gates is not None:
        temperature, magical_number = gates["temperature"], gates["magical_number"]
        if masks is None:
            masks = deterministic_masks(gates["token_loga"], gates["pruner_loga"], temperature, magical_number)
        else:
            _check_masks_match(masks[0], masks[1], gates, masks_file, gates_file)
    if masks is None:
        return PrunedCheckpoint(path, config, state_dict, None, None, [], None, None, temperature, magical_number)

    token_z, pruner_z = masks
    if token_z.shape[1] > config.max_position_embeddings:
        source = gates_file if gates is not None else masks_file
        raise UserError(
            f"{source} has {token_z.shape[1]} rank bins, more than the {config.max_position_embeddings} positions "
            f"of the model; {_REFETCH}."
        )
    if gates is not None:
        locations = list(gates["prune_locations"])
    else:  # zs.pt alone does not say where its rows sit
        n_rows = token_z.shape[0]
        locations = check_prune_locations(
            trailing_prune_locations(n_rows, num_layers), num_layers, n_rows, source=str(masks_file), fix=_REFETCH
        )
    return PrunedCheckpoint(
        path=path,
        config=config,
        state_dict=state_dict,
        token_z=token_z,
        pruner_z=pruner_z,
        prune_locations=locations,
        bin_num=int(token_z.shape[1]),
        gate_state=gates,
        temperature=temperature,
        magical_number=magical_number,
    )


# ----------------------------------------------------------------------------------------------
# Writing


def _plain_tensor(value: Any) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        value = torch.as_tensor(value)
    return value.detach().to("cpu", torch.float32).clone()


def _check_extra_name(name: str) -> None:
    if (
        not isinstance(name, str)
        or not name
        or Path(name).name != name
        or name in _RESERVED_FILES
        or name.startswith(".")
    ):
        raise ValueError(f"extra file name {name!r} must be a plain file name that is not part of the layout")


def save_checkpoint(
    path: PathLike,
    *,
    model_state_dict: Mapping[str, torch.Tensor],
    config: Any,
    token_z: Optional[torch.Tensor] = None,
    pruner_z: Optional[torch.Tensor] = None,
    gate_state: Optional[Mapping[str, Any]] = None,
    tokenizer: Any = None,
    extra: Optional[Mapping[str, Any]] = None,
) -> Path:
    """Write the published layout to ``path`` atomically (a reader sees the old or the new whole).

    ``gate_state`` is a gate-state dict (``TokenGates.state_for_checkpoint()``; see
    ``top.method.gates.read_gate_state`` for what may be left out); ``l0_module.pt`` holds it as that reads
    it. Without masks they are computed from it; given masks must agree with it. ``extra`` maps file
    names to JSON-able objects written alongside.
    """
    if (token_z is None) != (pruner_z is None):
        raise ValueError("give both token_z and pruner_z, or neither")
    num_layers = int(config.num_hidden_layers)
    gates = None
    if gate_state is not None:
        fix = "give the dict of TokenGates.state_for_checkpoint()"
        gates = read_gate_state(gate_state, source="gate_state", fix=fix, num_layers=num_layers)
        if token_z is None:
            token_z, pruner_z = deterministic_masks(
                gates["token_loga"], gates["pruner_loga"], gates["temperature"], gates["magical_number"]
            )
    masks = None
    if token_z is not None:
        masks = {"token_z": _plain_tensor(token_z), "pruner_z": _plain_tensor(pruner_z)}
        if gates is not None:
            name = mask_disagreeing_with(masks["token_z"], masks["pruner_z"], gates)
            if name is not None:
                raise ValueError(f"{name} does not equal the deterministic masks of gate_state")
        elif masks["token_z"].shape[0] > num_layers - 1:
            raise ValueError("{} mask rows do not fit a {}-layer model".format(masks["token_z"].shape[0], num_layers))
    extra = dict(extra or {})
    for name in extra:
        _check_extra_name(name)
    # Encode before anything is written, so an object that is not JSON-able fails early.
    encoded_extra = {name: json.dumps(obj, indent=2, allow_nan=False) + "\n" for name, obj in extra.items()}

    path = Path(path)
    with atomic_directory(path) as tmp:
        if hasattr(config, "save_pretrained"):
            config.save_pretrained(str(tmp))
        else:
            config.to_json_file(str(tmp / CONFIG_FILE))
        write_safetensors(tmp / SAFETENSORS_FILE, model_state_dict)
        if masks is not None:
            torch.save(masks, str(tmp / MASKS_FILE))
        if gates is not None:
            torch.save(gates, str(tmp / GATES_FILE))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        for name, text in encoded_extra.items():
            (tmp / name).write_text(text, encoding="utf-8")
        write_manifest(tmp)  # last: it vouches for every file above
    return path


__all__ = [
    "PrunedCheckpoint",
    "load_checkpoint",
    "save_checkpoint",
    "GATES_FORMAT",
]
