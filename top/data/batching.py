"""Tokenised batches: tokenising examples into a compact set, the model-input keys, the checks of lengths and
ids against the model, a batch padded and cut to its longest member, moving it to a device."""

from __future__ import annotations

import itertools
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from top.data.files import Example
from top.errors import UserError
from top.storage.model_files import max_input_tokens
from top.storage.tokenizer_failures import is_tokenizer_failure, rust_panics_quiet, tokenizer_error_detail

# The tensors a classifier's forward takes, in the one order every caller uses; "labels" is not one.
MODEL_INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids")


def shorten(batch: Dict[str, torch.Tensor], length: Optional[int] = None) -> Dict[str, torch.Tensor]:
    """Cut every sequence tensor to the batch's longest member (or to ``length``), as the original does."""
    if length is None:
        length = int(batch["attention_mask"].sum(dim=1).max().item())
    return {k: (v[:, :length] if v.dim() == 2 and k != "labels" else v) for k, v in batch.items()}


def to_device(batch: Dict[str, torch.Tensor], device: torch.device) -> Dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


def step_batch(encoded: Encoded, local: torch.Tensor, chunk: torch.Tensor, device: torch.device
               ) -> Dict[str, torch.Tensor]:
    """This rank's share of a step, cut to the longest member of the whole global batch.

    Cutting every rank to the same length keeps the attention shapes (and so the token
    importance, whose mean runs over query rows) what a single process would compute.
    """
    encoded = as_encoded_set(encoded)
    return to_device(encoded.rows(local, encoded.longest(chunk)), device)


def model_inputs(batch: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    return {k: batch[k] for k in MODEL_INPUT_KEYS if k in batch}


def check_max_seq_length(
    max_seq_length: int, config: Any, model: str, flag: Optional[str] = "--max-seq-length"
) -> None:
    """Sequences longer than the model's position table would index past it: bad input.

    ``flag`` names the setting the user can lower; None when the length is fixed (bench's task length).
    """
    limit = max_input_tokens(config)
    if max_seq_length > limit:
        what = f"{flag} {max_seq_length}" if flag else f"The sequence length {max_seq_length}"
        fix = f"give {flag} {limit} or less" if flag else f"use a model with at least {max_seq_length} positions"
        raise UserError(f"{what} is longer than the {limit} positions {model} has; {fix}.")


def check_token_ids(encoded: Encoded, config: Any, tokenizer_source: Any) -> None:
    """A ``UserError`` when the tokenizer gave ids past the model's embeddings (or token types past its table):
    the tokenizer files do not belong to the model, or are damaged (an added special token, say)."""
    encoded = as_encoded_set(encoded)
    limits = (("input_ids", "vocab_size", "a vocabulary"), ("token_type_ids", "type_vocab_size", "token types"))
    for key, field, what in limits:
        size = getattr(config, field, None)
        largest = encoded.max_value(key) if key in encoded.keys else None
        if isinstance(size, int) and largest is not None and largest >= size:
            raise UserError(
                f"The tokenizer of {tokenizer_source} gives {key} up to {largest} but the model has "
                f"{what} of {size}; use the tokenizer files saved with the model (they may be damaged)."
            )


# Examples handed to the tokenizer at once: enough to keep its batch speed, few enough that its
# per-call objects (a Python list per example and field, its own encodings) stay small.
ENCODE_CHUNK = 2048


class EncodedSet:
    """A data set tokenised once and stored compactly; a batch is padded only when it is taken.

    Every example's token ids lie end to end in one int32 array (token types and the attention
    mask in uint8 ones where they fit), ``offsets[i]:offsets[i + 1]`` being example ``i``'s; a
    million short rows take tens of megabytes, where tensors padded to ``max_seq_length`` took
    gigabytes. ``rows`` gives exactly the tensors the padded set held (int64, right-padded with the
    tokenizer's padding values to ``width``), cut to a length.
    """

    def __init__(self, fields: Dict[str, np.ndarray], offsets: np.ndarray, labels: torch.Tensor, width: int,
                 pad_values: Dict[str, int], lengths: np.ndarray):
        self.fields = fields  # key -> flat values, in MODEL_INPUT_KEYS order
        self.offsets = offsets  # int64 [N + 1]
        self.labels = labels
        self.width = int(width)  # the padded length of a row (max_seq_length, or the longest row)
        self.pad_values = pad_values
        self._lengths = lengths  # int64 [N]: each row's attention mask summed (the padded set's mask.sum(dim=1))

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def keys(self) -> Tuple[str, ...]:
        """The model inputs held (a subset of MODEL_INPUT_KEYS, in its order)."""
        return tuple(self.fields)

    @property
    def lengths(self) -> torch.Tensor:
        """Each example's real length (its attention mask's sum), int64."""
        return torch.from_numpy(self._lengths)

    def longest(self, indices: Any) -> int:
        """The real length of the longest of the examples ``indices``."""
        return int(self._lengths[_as_index(indices)].max())

    def max_value(self, key: str) -> Optional[int]:
        """The largest value of ``key`` over the padded set (padding included), None for no values."""
        values = self.fields[key]
        found = [int(values.max())] if values.size else []
        if (np.diff(self.offsets) < self.width).any():
            found.append(self.pad_values[key])
        return max(found) if found else None

    def rows(self, indices: Any, length: Optional[int] = None) -> Dict[str, torch.Tensor]:
        """The examples ``indices`` as the padded set's rows cut to ``length`` (default: ``width``),
        int64 tensors as the tokenizer gives them, and their labels."""
        index = _as_index(indices)
        length = self.width if length is None else int(length)
        starts = self.offsets[index]
        counts = np.minimum(self.offsets[index + 1] - starts, length)
        real = np.arange(length)[None, :] < counts[:, None]
        positions = (starts[:, None] + np.arange(length)[None, :])[real]
        batch = {}
        for key, values in self.fields.items():
            row = np.full((len(index), length), self.pad_values[key], dtype=np.int64)
            row[real] = values[positions]
            batch[key] = torch.from_numpy(row)
        batch["labels"] = self.labels[torch.from_numpy(index)]
        return batch

    def padded(self) -> Dict[str, torch.Tensor]:
        """The whole set as tensors padded to ``width`` (what ``encode`` returns): for small sets."""
        return self.rows(np.arange(len(self)))

    @classmethod
    def from_padded(cls, encoded: Dict[str, torch.Tensor]) -> EncodedSet:
        """The compact form of padded tensors (``encode``'s dict, or one built by hand), giving them back exactly.

        A row's values end after its last attended position when every key's values past it are
        one padding value; otherwise every row is kept whole.
        """
        keys = [k for k in MODEL_INPUT_KEYS if k in encoded]
        dense = {k: encoded[k].cpu().numpy() for k in keys}
        total, width = dense[keys[0]].shape if keys else (len(encoded["labels"]), 0)
        counts = np.full(total, width, dtype=np.int64)
        pad_values = {k: 0 for k in keys}
        if "attention_mask" in dense and total and width:
            attended = dense["attention_mask"] != 0
            ends = np.where(attended.any(axis=1), width - np.argmax(attended[:, ::-1], axis=1), 0)
            past = np.arange(width)[None, :] >= ends[:, None]
            uniform = {k: np.unique(v[past]) for k, v in dense.items()}
            if all(len(values) <= 1 for values in uniform.values()):
                counts = ends.astype(np.int64)
                pad_values = {k: int(values[0]) if len(values) else 0 for k, values in uniform.items()}
        real = np.arange(width)[None, :] < counts[:, None]
        fields = {k: v[real] for k, v in dense.items()}
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        lengths = dense["attention_mask"].sum(axis=1).astype(np.int64) if "attention_mask" in dense else counts
        return cls(fields, offsets, encoded["labels"], width, pad_values, lengths)


Encoded = Union[EncodedSet, Dict[str, torch.Tensor]]


def as_encoded_set(encoded: Encoded) -> EncodedSet:
    return encoded if isinstance(encoded, EncodedSet) else EncodedSet.from_padded(encoded)


def _as_index(indices: Any) -> np.ndarray:
    if isinstance(indices, torch.Tensor):
        indices = indices.cpu().numpy()
    return np.asarray(indices, dtype=np.int64).reshape(-1)


def encode(
    examples: Sequence[Example], tokenizer: Any, max_seq_length: int, padding: str = "max_length",
    what: str = "the data",
) -> Dict[str, torch.Tensor]:
    """Tokenise as HF run_glue does: pairs truncated longest-first to `max_seq_length`.

    padding "max_length" pads every row to `max_seq_length`; "longest" to the longest row.
    Returns tensors input_ids, attention_mask, token_type_ids (when the tokenizer makes
    them) and labels (long for classification, float for regression). For a large set,
    :func:`encode_set` keeps the same in a fraction of the memory.
    """
    return encode_set(examples, tokenizer, max_seq_length, padding, what=what).padded()


def encode_set(
    examples: Sequence[Example], tokenizer: Any, max_seq_length: int, padding: str = "max_length",
    what: str = "the data",
) -> EncodedSet:
    """:func:`encode`'s tensors held compactly (see :class:`EncodedSet`), tokenised a chunk at a time.

    A tokenizer that fails on an example (an empty vocabulary, a pattern that gives up) is a
    ``UserError`` naming the tokenizer's directory and the example of ``what``.
    """
    if padding not in ("max_length", "longest"):
        raise ValueError(f"padding must be 'max_length' or 'longest', not {padding!r}")
    if not examples:
        raise UserError("There are no examples to encode; check that the data file holds rows.")
    pairs = [example.text_b is not None for example in examples]
    if any(pairs) and not all(pairs):
        raise ValueError("examples mix sentence pairs and single sentences")
    source = getattr(tokenizer, "name_or_path", "") or "the model"
    pad_values = _pad_values(tokenizer, source)
    parts: Dict[str, List[np.ndarray]] = {}
    counts, attended = [], []
    for start in range(0, len(examples), ENCODE_CHUNK):
        chunk = examples[start : start + ENCODE_CHUNK]
        encoded = _tokenize(tokenizer, chunk, max_seq_length, source, what, start)
        sizes = np.fromiter((len(ids) for ids in encoded["input_ids"]), dtype=np.int64, count=len(chunk))
        counts.append(sizes)
        if "attention_mask" in encoded:
            attended.append(np.fromiter((sum(mask) for mask in encoded["attention_mask"]), dtype=np.int64,
                                        count=len(chunk)))
        for key in MODEL_INPUT_KEYS:
            if key in encoded:
                flat = np.fromiter(itertools.chain.from_iterable(encoded[key]), dtype=np.int64, count=int(sizes.sum()))
                parts.setdefault(key, []).append(_compact(flat))  # int64 for one chunk only
    lengths = np.concatenate(counts)
    if int(lengths.max()) > max_seq_length:
        row = int(np.argmax(lengths > max_seq_length))
        raise UserError(
            f"The tokenizer of {source} makes example {row + 1} of {what} {int(lengths[row])} tokens long even "
            f"when truncated to max_seq_length {max_seq_length} (its special tokens need more); give a longer "
            "--max-seq-length."
        )
    fields = {key: _compact(np.concatenate(values)) for key, values in parts.items()}
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    width = max_seq_length if padding == "max_length" else int(lengths.max())
    if any(isinstance(example.label, float) for example in examples):
        labels = torch.tensor([float(example.label) for example in examples], dtype=torch.float)
    else:
        labels = torch.tensor([int(example.label) for example in examples], dtype=torch.long)
    pads = {key: pad_values[key] for key in fields}
    return EncodedSet(fields, offsets, labels, width, pads, np.concatenate(attended) if attended else lengths)


def _compact(values: np.ndarray) -> np.ndarray:
    """``values`` in the smallest of uint8 and int32 that holds them (int64 beyond)."""
    low, high = (int(values.min()), int(values.max())) if values.size else (0, 0)
    for dtype in (np.uint8, np.int32):
        info = np.iinfo(dtype)
        if info.min <= low and high <= info.max:
            return values.astype(dtype, copy=False)
    return values


def _pad_values(tokenizer: Any, source: str) -> Dict[str, int]:
    """What padding holds in each model input, as the tokenizer pads (to the right, as the model expects)."""
    pad_id = getattr(tokenizer, "pad_token_id", None)
    if pad_id is None:
        raise UserError(
            f"The tokenizer of {source} has no padding token; use the tokenizer files saved with the model "
            "(special_tokens_map.json or tokenizer_config.json may be damaged)."
        )
    return {"input_ids": int(pad_id), "token_type_ids": int(getattr(tokenizer, "pad_token_type_id", 0) or 0),
            "attention_mask": 0}


def _tokenize(tokenizer: Any, examples: Sequence[Example], max_seq_length: int, source: str, what: str,
              first: int) -> Any:
    """The tokenizer's unpadded output for ``examples`` (numbered from ``first``); its failure is the user's."""
    texts_a = [example.text_a for example in examples]
    texts_b = [example.text_b for example in examples] if examples[0].text_b is not None else None
    try:
        return _call_quietly(tokenizer, texts_a, texts_b, max_seq_length)
    except BaseException as error:  # noqa: BLE001 - a tokenizers panic is a BaseException
        if not is_tokenizer_failure(error):
            raise
        failure = error
    # Which example: the first that fails alone (the chunk may fail only as a whole).
    culprit = 0
    for offset in range(len(examples)):
        pair = (texts_a[offset : offset + 1], texts_b[offset : offset + 1] if texts_b is not None else None)
        try:
            _call_quietly(tokenizer, *pair, max_seq_length)
        except BaseException as error:  # noqa: BLE001
            if not is_tokenizer_failure(error):
                raise
            culprit, failure = offset, error
            break
    detail = tokenizer_error_detail(failure)
    raise UserError(
        f"The tokenizer of {source} fails on example {first + culprit + 1} of {what} ({detail}); "
        "its files (vocab.txt, tokenizer.json) are damaged or do not suit this text: use the tokenizer files saved "
        "with the model, or remove that example."
    ) from None


def _call_quietly(tokenizer: Any, texts_a: List[str], texts_b: Optional[List[str]], max_seq_length: int) -> Any:
    with rust_panics_quiet():
        return tokenizer(texts_a, texts_b, padding=False, truncation=True, max_length=max_seq_length)


def batches(encoded: Encoded, batch_size: int) -> Iterator[Dict[str, torch.Tensor]]:
    """Consecutive batches of `encoded`, in file order, padded to its width; the last may be short."""
    if batch_size < 1:
        raise UserError(f"Batch size {batch_size} must be at least 1; pass a positive --batch-size.")
    encoded = as_encoded_set(encoded)
    for start in range(0, len(encoded), batch_size):
        yield encoded.rows(np.arange(start, min(start + batch_size, len(encoded))))
