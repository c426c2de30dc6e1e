"""ToP around a stock Hugging Face BERT/RoBERTa sequence classifier.

The HF model is wrapped, not copied: we call its embeddings, its layers (each one a stock
``BertLayer``/``RobertaLayer``, asked for its attention probabilities) and its head, and run
the layer loop ourselves so a pruning step can sit between two layers.

Modes (one :func:`top.method.pruning.prune_step` serves both, and :mod:`top.method.compact` too):

``train``     sampled gates; dropped tokens are zeroed (``hidden *= keep``), the attention mask
              is left alone, as in the original training.
``faithful``  the paper's evaluation: deterministic gates; dropped tokens get -10000 in the
              attention mask of every later layer, but every position is still computed.

Compact inference (dropped tokens really removed, so time and FLOPs fall) is not a mode of this
forward: it is :func:`top.method.compact.compact_forward` with a :class:`top.method.compact.CompactPlan` built
once per set of gates, and ``mode="compact"`` here says so.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from pathlib import Path
from typing import Any, Callable, Collection, Dict, List, Optional, Sequence, Set

import torch
from torch import nn

from top.errors import UserError, error_detail
from top.method.checkpoint import SAFETENSORS_FILE, WEIGHTS_FILE
from top.method.defaults import ATTENTIONS
from top.method.gates import check_prune_locations, default_prune_locations
from top.method.pruning import prune_step
from top.storage.hub import resolve_model
from top.storage.model_files import read_model_config
from top.storage.safeload import read_state_dict

logger = logging.getLogger(__name__)

MODES = ("train", "faithful")
# The additive mask value of transformers 4.16, which the published numbers were made with.
MASK_VALUE = -10000.0


@dataclasses.dataclass
class ToPOutput:
    logits: torch.Tensor
    # Per layer, ``[B, N-1]``: attention probabilities averaged over heads and query rows,
    # [CLS] column excluded; None for a layer whose probabilities were not materialised.
    importance: List[Optional[torch.Tensor]]
    # Per layer, bool ``[B, N]`` of the tokens attended to at that layer (real tokens only);
    # None for layers before the first prune location.
    keep_masks: List[Optional[torch.Tensor]]
    # ``[B, L]`` tokens that really take part in each layer, [CLS] included, padding excluded.
    kept_lengths: torch.Tensor


class _Family:
    """What differs between BERT and RoBERTa: where the encoder sits and how the head reads it."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.base = getattr(model, model.base_model_prefix)

    def embed(self, input_ids, token_type_ids):
        return self.base.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)

    @property
    def layers(self) -> nn.ModuleList:
        return self.base.encoder.layer

    def head(self, sequence_output: torch.Tensor) -> torch.Tensor:
        if self.model.base_model_prefix == "roberta":
            return self.model.classifier(sequence_output)
        pooled = self.base.pooler(sequence_output)
        return self.model.classifier(self.model.dropout(pooled))


SUPPORTED_MODEL_TYPES = ("bert", "roberta")


def _additive_mask(keep_with_cls: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return ((1.0 - keep_with_cls.to(dtype)) * MASK_VALUE)[:, None, None, :]


def _importance(attention_probs: torch.Tensor) -> torch.Tensor:
    """Mean over heads and over every query row, [CLS] column dropped: ``[B, N-1]``."""
    batch, _, _, n = attention_probs.shape
    return attention_probs.reshape(batch, -1, n).mean(dim=1)[:, 1:]


def _with_cls(keep: torch.Tensor) -> torch.Tensor:
    return torch.cat([keep.new_ones(keep.shape[0], 1), keep], dim=1)


def sdpa_available(model_class=None) -> bool:
    """Whether this torch has the fused kernel and this transformers a BERT/RoBERTa layer that calls it.

    torch 1.12 and transformers 4.16 (the paper's stack) have neither: there every layer is eager.
    """
    import torch.nn.functional as functional

    if not hasattr(functional, "scaled_dot_product_attention"):
        return False
    if model_class is None:
        from transformers import BertForSequenceClassification as model_class
    return bool(getattr(model_class, "_supports_sdpa", False))


def set_attention(config, implementation: str = "eager", model_class=None) -> str:
    """Build ``config``'s layers with ``implementation`` ("sdpa" falls back to "eager" where unavailable).

    Either way a layer asked for its probabilities (``output_attentions=True``) computes them
    eagerly, so ranking is unchanged; an SDPA layer uses the fused kernel only when nothing reads
    them. Returns the implementation in effect.
    """
    if implementation not in ATTENTIONS:
        raise ValueError(f"attention must be one of {ATTENTIONS}, not {implementation!r}")
    if implementation == "sdpa" and not sdpa_available(model_class):
        implementation = "eager"
    if hasattr(config, "_attn_implementation"):
        config._attn_implementation = implementation
    return implementation


class _QuietSdpaFallback(logging.Filter):
    """transformers warns (once) when an SDPA layer is asked for its probabilities; we ask on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "SdpaSelfAttention is used but" not in record.getMessage()


for _name in ("transformers.models.bert.modeling_bert", "transformers.models.roberta.modeling_roberta"):
    logging.getLogger(_name).addFilter(_QuietSdpaFallback())


class ToPClassifier(nn.Module):
    """A HF ``*ForSequenceClassification`` with token pruning between its layers."""

    def __init__(self, hf_model: nn.Module, prune_locations: Optional[Sequence[int]] = None):
        super().__init__()
        model_type = getattr(hf_model.config, "model_type", None)
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(f"ToP supports {', '.join(SUPPORTED_MODEL_TYPES)} models, not {model_type!r}")
        self.hf_model = hf_model
        self._family = _Family(hf_model)
        num_layers = hf_model.config.num_hidden_layers
        if prune_locations is None:
            prune_locations = default_prune_locations(num_layers)
        self.prune_locations = check_prune_locations(
            prune_locations,
            num_layers,
            source="ToPClassifier(prune_locations=...)",
            fix="pick layers of this model in increasing order",
        )

    @property
    def config(self):
        return self.hf_model.config

    @classmethod
    def from_pretrained(cls, name_or_path, prune_locations=None, flag: str = "model",
                        attention: str = "eager", config=None) -> ToPClassifier:
        """A fine-tuned classifier from a directory or hub id, every weight key and shape checked.

        ``config`` is the model's config as :func:`top.storage.model_files.read_model_config` read
        it (read here when not given). The weights are read by ``top.storage.safeload`` (transformers
        never unpickles them); a missing classifier head is an error, never a fresh random one.
        ``attention="sdpa"`` builds the layers with the fused kernel for the layers whose
        probabilities nothing reads (see :func:`set_attention`).
        """
        directory = resolve_model(str(name_or_path), flag)
        if config is None:
            config = read_model_config(directory, f"The config.json of {flag} {name_or_path}")
        config = copy.deepcopy(config)  # set_attention changes it
        state_dict = read_state_dict(directory)
        fix = "give a model fine-tuned for sequence classification (`top finetune`)"
        if getattr(config, "model_type", None) not in SUPPORTED_MODEL_TYPES:
            raise UserError(
                f"{flag} {name_or_path} is a {config.model_type!r} model; give a BERT or RoBERTa classifier."
            )
        # transformers' own from_pretrained, handed the vetted state dict: it builds the model as the
        # original did, so the random stream it leaves behind (and so training) is the original's.
        from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING

        model_class = MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING[type(config)]
        set_attention(config, attention, model_class)
        try:
            hf_model = model_class.from_pretrained(None, config=config, state_dict=state_dict)
        except RuntimeError as error:  # a weight whose shape config.json does not imply
            raise UserError(
                f"The weights in {weights_file(directory)} do not fit its config.json ({error_detail(error)}); {fix}."
            ) from None
        check_state_dict_fits(hf_model.state_dict(), state_dict, weights_file(directory), fix)
        try:
            return cls(hf_model, prune_locations)
        except ValueError as error:
            raise UserError(f"{flag} {name_or_path}: {error}; give a BERT or RoBERTa classifier.") from None

    @classmethod
    def from_config(cls, config, prune_locations=None, attention: str = "eager") -> ToPClassifier:
        from transformers import AutoModelForSequenceClassification
        from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING

        mapping = MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING
        set_attention(config, attention, mapping[type(config)] if type(config) in mapping else None)
        return cls(AutoModelForSequenceClassification.from_config(config), prune_locations)

    @classmethod
    def from_checkpoint(cls, checkpoint) -> ToPClassifier:
        """The model of a ``PrunedCheckpoint`` (``top.method.checkpoint.load_checkpoint``), in eval mode.

        It prunes at the checkpoint's locations (none for a dense checkpoint). Every weight's key
        and shape is checked against config.json: a missing weight, the classifier head included,
        is an error naming the file, never a freshly initialised layer.
        """
        locations = checkpoint.prune_locations if checkpoint.is_pruned else []
        try:
            model = cls.from_config(copy.deepcopy(checkpoint.config), prune_locations=locations)
        except ValueError as exc:
            raise UserError(f"{checkpoint.path}: {exc}; check config.json and zs.pt.") from None
        model.load_checkpoint_weights(checkpoint)
        return model.eval()

    def load_checkpoint_weights(self, checkpoint, fix: str = "use a checkpoint saved for this architecture",
                                against: str = "its config.json") -> None:
        """Copy a ``PrunedCheckpoint``'s weights in, every key and shape checked (see ``load_state_dict_strictly``)."""
        where = weights_file(checkpoint.path)
        load_state_dict_strictly(self.hf_model, checkpoint.state_dict, where, fix=fix, against=against)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: Optional[torch.Tensor] = None,
        token_type_ids: Optional[torch.Tensor] = None,
        *,
        mode: str = "faithful",
        token_z: Optional[torch.Tensor] = None,
        pruner_z: Optional[torch.Tensor] = None,
        probability_layers: Optional[Collection[int]] = None,
        attention_hook: Optional[Callable[[int, torch.Tensor], None]] = None,
    ) -> ToPOutput:
        """Logits, per-layer importance and keep masks (see :class:`ToPOutput`).

        ``probability_layers``: the layers whose attention probabilities are materialised (their
        ``importance`` entries; None elsewhere). None means every layer, the original's forward.
        Pruning reads the layer before each prune location, so those are always added when gates
        are given. Every other layer of a model built with ``attention="sdpa"`` runs the fused kernel.
        ``attention_hook(index, probabilities)`` sees each materialised ``[B, heads, N, N]`` tensor.
        """
        if mode == "compact":
            raise ValueError(
                'mode="compact" is not a mode of this forward; build top.method.compact.CompactPlan.from_gates(...) '
                "once and call top.method.compact.compact_forward(model, plan, ...)"
            )
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        pruning = token_z is not None
        if pruning:
            if pruner_z is None:
                pruner_z = token_z.new_ones(token_z.shape[0])
            if token_z.shape[0] != len(self.prune_locations) or pruner_z.shape[0] != len(self.prune_locations):
                raise ValueError(
                    f"gates cover {token_z.shape[0]} locations but the model prunes at {self.prune_locations}"
                )
        wanted = None
        if probability_layers is not None:
            wanted = set(probability_layers) | (self.ranking_layers() if pruning else set())
        return self._forward_masked(
            input_ids, attention_mask, token_type_ids, mode, token_z, pruner_z, wanted, attention_hook
        )

    def ranking_layers(self) -> Set[int]:
        """The layers whose importance the prune locations rank tokens by (each location's previous layer)."""
        return {location - 1 for location in self.prune_locations}

    def _forward_masked(self, input_ids, attention_mask, token_type_ids, mode, token_z, pruner_z,
                        wanted: Optional[Set[int]], hook) -> ToPOutput:
        family = self._family
        hidden = family.embed(input_ids, token_type_ids)
        dtype = hidden.dtype
        keep = attention_mask[:, 1:].to(dtype)
        extended_mask = _additive_mask(attention_mask, dtype)
        importance: List[Optional[torch.Tensor]] = []
        keep_masks: List[Optional[torch.Tensor]] = []
        kept_lengths = []
        current_mask = None
        for index, layer in enumerate(family.layers):
            if token_z is not None and index in self.prune_locations:
                location = self.prune_locations.index(index)
                keep = prune_step(importance[-1], keep, token_z[location], pruner_z[location])
                if mode == "train":
                    hidden = hidden * _with_cls(keep).unsqueeze(-1)
                else:
                    extended_mask = _additive_mask(_with_cls(keep), dtype)
                current_mask = _with_cls(keep) > 0
            keep_masks.append(current_mask)
            kept_lengths.append((keep > 0).sum(dim=1) + 1)
            materialise = wanted is None or index in wanted
            outputs = layer(hidden, attention_mask=extended_mask, output_attentions=materialise)
            hidden = outputs[0]
            if materialise and hook is not None:
                hook(index, outputs[1])
            importance.append(_importance(outputs[1]) if materialise else None)
        logits = family.head(hidden)
        return ToPOutput(logits, importance, keep_masks, torch.stack(kept_lengths, dim=1))


def stock_model_from_checkpoint(checkpoint) -> nn.Module:
    """The stock HF classifier of a ``PrunedCheckpoint`` (the library's default attention), in eval mode.

    Its weights are checked as :meth:`ToPClassifier.from_checkpoint` checks them.
    """
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_config(copy.deepcopy(checkpoint.config))
    load_state_dict_strictly(model, checkpoint.state_dict, weights_file(checkpoint.path))
    return model.eval()


# Buffers that some transformers versions save and others do not; never learned weights.
_OPTIONAL_BUFFERS = ("position_ids", "token_type_ids")
_KEYS_NAMED = 4


def load_state_dict_strictly(hf_model: nn.Module, state_dict: Dict[str, torch.Tensor], where,
                             fix: str = "use a checkpoint saved for this architecture",
                             against: str = "its config.json") -> None:
    """Load ``state_dict`` into ``hf_model`` only if every key and shape fits; else a UserError naming ``where``.

    Nothing is left at its random initial value: a missing key (a classifier head, say) is an error.
    """
    expected = hf_model.state_dict()
    check_state_dict_fits(expected, state_dict, where, fix, against)
    hf_model.load_state_dict({k: v for k, v in state_dict.items() if k in expected}, strict=False)


def _some(keys: List[str]) -> str:
    more = f" and {len(keys) - _KEYS_NAMED} more" if len(keys) > _KEYS_NAMED else ""
    return ", ".join(keys[:_KEYS_NAMED]) + more


def check_state_dict_fits(expected: Dict[str, torch.Tensor], state_dict: Dict[str, torch.Tensor], where, fix: str,
                          against: str = "its config.json") -> None:
    """A ``UserError`` naming ``where`` unless ``state_dict`` has every key and shape of ``expected``."""
    missing = [k for k in expected if k not in state_dict and not k.endswith(_OPTIONAL_BUFFERS)]
    unexpected = [k for k in state_dict if k not in expected and not k.endswith(_OPTIONAL_BUFFERS)]
    if missing or unexpected:
        detail = ([f"missing {_some(missing)}"] if missing else []) + (
            [f"unexpected {_some(unexpected)}"] if unexpected else []
        )
        raise UserError(f"The weights in {where} do not fit {against} ({'; '.join(detail)}); {fix}.")
    for key, tensor in state_dict.items():
        if key in expected and tuple(expected[key].shape) != tuple(tensor.shape):
            raise UserError(
                f"The weight {key} in {where} has shape {tuple(tensor.shape)} but {against} implies "
                f"{tuple(expected[key].shape)}; {fix}."
            )
        # The index buffers hold what the config implies (0..N-1 positions, type 0); another value is
        # damage, and an index past its table would fail inside the embedding lookup.
        if key.endswith(_OPTIONAL_BUFFERS) and key in expected and not torch.equal(tensor, _index_buffer(key, tensor)):
            raise UserError(
                f"The buffer {key} in {where} does not hold the indices {against} implies (it is damaged); {fix}."
            )


def _index_buffer(key: str, like: torch.Tensor) -> torch.Tensor:
    """What transformers fills a position_ids (0, 1, ..., N-1) or token_type_ids (zeros) buffer with."""
    if key.endswith("position_ids"):
        return torch.arange(like.shape[-1], dtype=like.dtype).expand(like.shape) if like.dim() else like
    return torch.zeros_like(like)


def weights_file(path) -> Path:
    """The weights file of a checkpoint directory, for messages (the directory itself if neither is there)."""
    path = Path(path)
    for name in (SAFETENSORS_FILE, WEIGHTS_FILE):
        if (path / name).is_file():
            return path / name
    return path


def require_finite_logits(logits: torch.Tensor, model: Any) -> None:
    """A ``UserError`` when any logit is NaN or infinite: the weights of ``model`` (a path) are damaged.

    No command reports a result from such a model, so a broken checkpoint never exits with 0.
    """
    bad = ~torch.isfinite(logits)
    if bool(bad.any()):
        rows = int(bad.reshape(logits.shape[0], -1).any(dim=1).sum()) if logits.dim() else 1
        raise UserError(
            f"The model {model} gives logits that are not finite numbers for {rows} of {max(1, len(logits))} "
            "examples, so its weights are damaged; download or save it again."
        )
