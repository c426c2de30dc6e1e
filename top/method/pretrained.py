"""``top.ToPForSequenceClassification``: a pruned checkpoint as the Hugging Face model a user expects.

``from_pretrained(path_or_hub_id)`` reads a checkpoint in the published layout (the authors' or one
``top`` wrote) and runs it **compact** by default, the pruned tokens removed; ``mode="faithful"``
runs the paper's masked evaluation instead (the same predictions, every position computed). It is
a ``transformers.PreTrainedModel``: ``.config``, ``.device``, ``.eval()``, ``.to()``, outputs as
``SequenceClassifierOutput``, usable in ``pipeline("text-classification", model=..., tokenizer=...)``,
``save_pretrained`` (the published layout and our manifest) and ``push_to_hub``.

A checkpoint without gates loads as the dense model with a warning; it never runs dense silently.
``transformers.pipeline(model=<a pruned directory>)`` cannot know about the gates and runs the
dense model: give it this model object, or use :func:`pipeline`.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from pathlib import Path
from typing import Any, Dict, Optional

import torch
from transformers import PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

from top.errors import UserError
from top.method.checkpoint import load_checkpoint, save_checkpoint
from top.method.compact import CompactPlan, compact_forward, unsupported_reason
from top.method.defaults import RUN_MODES
from top.method.modeling import ToPClassifier
from top.storage.hub import resolve_checkpoint_path
from top.storage.model_files import load_tokenizer, max_input_tokens

logger = logging.getLogger(__name__)

CLASS_NAME = "ToPForSequenceClassification"


class _QuietPipelineCheck(logging.Filter):
    """transformers' pipelines log an error for a model class outside their list; this one runs in them."""

    def filter(self, record: logging.LogRecord) -> bool:
        return f"The model '{CLASS_NAME}' is not supported" not in record.getMessage()


logging.getLogger("transformers.pipelines.base").addFilter(_QuietPipelineCheck())


class ToPForSequenceClassification(PreTrainedModel):
    """A BERT/RoBERTa sequence classifier with ToP's token pruning, compact by default (see the module)."""

    base_model_prefix = "top"
    main_input_name = "input_ids"

    def __init__(self, config, classifier: Optional[ToPClassifier] = None, token_z: Optional[torch.Tensor] = None,
                 pruner_z: Optional[torch.Tensor] = None, mode: str = "compact", tokenizer_source=None,
                 gate_state: Optional[Dict[str, Any]] = None):
        super().__init__(config)
        if mode not in RUN_MODES:
            raise ValueError(f"mode must be one of {RUN_MODES}, not {mode!r}")
        self.classifier = classifier if classifier is not None else ToPClassifier.from_config(config, [])
        self.config = self.classifier.config
        self.mode = mode
        self.register_buffer("token_z", None if token_z is None else token_z.detach().float().clone())
        self.register_buffer("pruner_z", None if pruner_z is None else pruner_z.detach().float().clone())
        self._plans: Dict[Any, CompactPlan] = {}
        self._tokenizer_source = tokenizer_source
        self._gate_state = gate_state  # the gate logits behind the masks, written back as l0_module.pt
        self.eval()

    @property
    def is_pruned(self) -> bool:
        return self.token_z is not None

    @property
    def prune_locations(self):
        return self.classifier.prune_locations

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args: Any, mode: str = "compact",
                        **kwargs: Any) -> ToPForSequenceClassification:
        """A checkpoint in the published layout, from a directory or a Hugging Face id, in eval mode.

        Every file is read through top's vetted readers (nothing in a file runs); every weight's key
        and shape is checked. ``mode``: "compact" (the default) or "faithful".
        """
        if args or kwargs:
            unknown = ", ".join([repr(a) for a in args] + sorted(kwargs))
            raise TypeError(f"{CLASS_NAME}.from_pretrained takes a path or hub id and mode=, not {unknown}")
        if mode not in RUN_MODES:
            raise UserError(f"mode={mode!r} is not a mode of {CLASS_NAME}; use one of {', '.join(RUN_MODES)}.")
        path = resolve_checkpoint_path(str(pretrained_model_name_or_path), flag="from_pretrained")
        checkpoint = load_checkpoint(path)
        if not checkpoint.is_pruned:
            warnings.warn(
                f"{path} has no token gates (zs.pt or l0_module.pt), so {CLASS_NAME} runs it as the dense model; "
                "give a pruned checkpoint to prune tokens.", UserWarning, stacklevel=2,
            )
        classifier = ToPClassifier.from_checkpoint(checkpoint)
        return cls(classifier.config, classifier, checkpoint.token_z, checkpoint.pruner_z, mode, path,
                   checkpoint.gate_state)

    def plan(self) -> CompactPlan:
        """The compact plan of these gates on the model's device, built once per device."""
        device = self.device
        if device not in self._plans:
            self._plans[device] = CompactPlan.from_gates(self.token_z, self.pruner_z, self.prune_locations,
                                                         max_input_tokens(self.config))
        return self._plans[device]

    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                token_type_ids: Optional[torch.Tensor] = None, labels: Optional[torch.Tensor] = None,
                return_dict: Optional[bool] = None, **unused: Any):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if self.mode == "compact":
            reason = unsupported_reason(self.classifier)
            if reason is not None:
                raise UserError(f"{CLASS_NAME} cannot run compact: {reason}; or set model.mode = 'faithful'.")
            logits = compact_forward(self.classifier, self.plan(), input_ids, attention_mask, token_type_ids).logits
        else:
            logits = self.classifier(input_ids, attention_mask, token_type_ids, mode="faithful",
                                     token_z=self.token_z, pruner_z=self.pruner_z, probability_layers=()).logits
        loss = None if labels is None else self._loss(logits, labels)
        if return_dict is False:
            return (logits,) if loss is None else (loss, logits)
        return SequenceClassifierOutput(loss=loss, logits=logits)

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.config.num_labels == 1:
            return torch.nn.functional.mse_loss(logits.squeeze(-1), labels.float())
        return torch.nn.functional.cross_entropy(logits, labels.long())

    def save_pretrained(self, save_directory, tokenizer=None, **unused: Any) -> None:
        """The published layout (config, weights, ``zs.pt``, ``l0_module.pt`` when gates are known, the
        tokenizer it was loaded with or ``tokenizer``) and top's manifest, written atomically."""
        if tokenizer is None and self._tokenizer_source is not None:
            try:
                tokenizer = load_tokenizer(self._tokenizer_source)
            except UserError:
                tokenizer = None  # a checkpoint without tokenizer files saves without them
        save_checkpoint(
            Path(save_directory), model_state_dict=self.classifier.hf_model.state_dict(), config=self.config,
            token_z=None if self.token_z is None else self.token_z.cpu(),
            pruner_z=None if self.pruner_z is None else self.pruner_z.cpu(),
            gate_state=self._gate_state, tokenizer=tokenizer,
        )

    def push_to_hub(self, repo_id: str, *, private: Optional[bool] = None, token: Optional[str] = None,
                    commit_message: str = "Upload a ToP-pruned model", tokenizer=None, **unused: Any) -> str:
        """``save_pretrained`` into a temporary folder, then upload it to ``repo_id`` (created when missing)."""
        from huggingface_hub import HfApi

        api = HfApi(token=token)
        with tempfile.TemporaryDirectory(prefix="top-push-") as tmp:
            folder = Path(tmp) / "model"
            self.save_pretrained(folder, tokenizer=tokenizer)
            api.create_repo(repo_id, private=private, exist_ok=True)
            info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=commit_message)
        return str(getattr(info, "commit_url", info))

    def _init_weights(self, module) -> None:  # the weights always come from a checkpoint
        pass


def pipeline(checkpoint, mode: str = "compact", device: Optional[Any] = None, **kwargs: Any):
    """``transformers.pipeline("text-classification")`` over a pruned checkpoint and its own tokenizer."""
    from transformers import pipeline as hf_pipeline

    model = ToPForSequenceClassification.from_pretrained(checkpoint, mode=mode)
    tokenizer = load_tokenizer(model._tokenizer_source)
    if device is not None:
        kwargs["device"] = device
    return hf_pipeline("text-classification", model=model, tokenizer=tokenizer, **kwargs)
