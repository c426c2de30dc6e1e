"""Tokenised batches: tokenising examples, the model-input keys, the checks of lengths and ids against
the model, cutting a batch to its longest member, moving it to a device."""

from __future__ import annotations

from typing import Any, Dict, Iterator, Optional, Sequence

import torch

from top.data.files import Example
from top.errors import UserError
from top.storage.model_files import max_input_tokens

# The tensors a classifier's forward takes, in the one order every caller uses; "labels" is not one.
MODEL_INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids")

def shorten(batch: Dict[str, torch.Tensor], length: Optional[int] = None) -> Dict[str, torch.Tensor]:
    """Cut every sequence tensor to the batch's longest member (or to ``length``), as the original does."""
    if length is None:
        length = int(batch["attention_mask"].sum(dim=1).max().item())
    return {k: (v[:, :length] if v.dim() == 2 and k != "labels" else v) for k, v in batch.items()}


def to_device(batch: Dict[str, torch.Tensor], device: torch.device) -> Dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


def select(encoded: Dict[str, torch.Tensor], indices: torch.Tensor) -> Dict[str, torch.Tensor]:
    return {k: v[indices] for k, v in encoded.items()}


def step_batch(
    encoded: Dict[str, torch.Tensor], local: torch.Tensor, chunk: torch.Tensor, device: torch.device
) -> Dict[str, torch.Tensor]:
    """This rank's share of a step, cut to the longest member of the whole global batch.

    Cutting every rank to the same length keeps the attention shapes (and so the token
    importance, whose mean runs over query rows) what a single process would compute.
    """
    length = int(encoded["attention_mask"][chunk].sum(dim=1).max().item())
    return to_device(shorten(select(encoded, local), length), device)


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


def check_token_ids(encoded: Dict[str, Any], config: Any, tokenizer_source: Any) -> None:
    """A ``UserError`` when the tokenizer gave ids past the model's embeddings (or token types past its table):
    the tokenizer files do not belong to the model, or are damaged (an added special token, say)."""
    limits = (("input_ids", "vocab_size", "a vocabulary"), ("token_type_ids", "type_vocab_size", "token types"))
    for key, field, what in limits:
        size = getattr(config, field, None)
        if key in encoded and isinstance(size, int) and encoded[key].numel() and int(encoded[key].max()) >= size:
            raise UserError(
                f"The tokenizer of {tokenizer_source} gives {key} up to {int(encoded[key].max())} but the model has "
                f"{what} of {size}; use the tokenizer files saved with the model (they may be damaged)."
            )


def encode(
    examples: Sequence[Example], tokenizer: Any, max_seq_length: int, padding: str = "max_length"
) -> Dict[str, Any]:
    """Tokenise as HF run_glue does: pairs truncated longest-first to `max_seq_length`.

    padding "max_length" pads every row to `max_seq_length`; "longest" to the longest row.
    Returns tensors input_ids, attention_mask, token_type_ids (when the tokenizer makes
    them) and labels (long for classification, float for regression).
    """
    if padding not in ("max_length", "longest"):
        raise ValueError(f"padding must be 'max_length' or 'longest', not {padding!r}")
    if not examples:
        raise UserError("There are no examples to encode; check that the data file holds rows.")
    pairs = [example.text_b is not None for example in examples]
    if any(pairs) and not all(pairs):
        raise ValueError("examples mix sentence pairs and single sentences")
    texts_a = [example.text_a for example in examples]
    texts_b = [example.text_b for example in examples] if pairs[0] else None
    encoded = tokenizer(
        texts_a, texts_b, padding=padding, truncation=True, max_length=max_seq_length, return_tensors="pt"
    )
    result = {key: encoded[key] for key in MODEL_INPUT_KEYS if key in encoded}
    if any(isinstance(example.label, float) for example in examples):
        result["labels"] = torch.tensor([float(example.label) for example in examples], dtype=torch.float)
    else:
        result["labels"] = torch.tensor([int(example.label) for example in examples], dtype=torch.long)
    return result


def batches(encoded: Dict[str, Any], batch_size: int) -> Iterator[Dict[str, Any]]:
    """Consecutive slices of every tensor in `encoded`, in file order; the last may be short."""
    if batch_size < 1:
        raise UserError(f"Batch size {batch_size} must be at least 1; pass a positive --batch-size.")
    total = len(encoded["input_ids"])
    for start in range(0, total, batch_size):
        yield {key: value[start : start + batch_size] for key, value in encoded.items()}
