"""What ``top export`` takes: one frozen config, every flag declared once; and the export's limits.

Light on purpose (no torch): ``top --help``, ``import top`` and the command line's parser read it.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

from top.settings import values
from top.settings.fields import check_fields, option

# The opsets `top export` writes: from 14 to the newest this torch's exporter knows.
MIN_OPSET = 14
TOLERANCE = 1e-4  # max |logit difference| between onnxruntime and the PyTorch compact path
QUANTIZE = ("int8",)
# An int8 graph cannot hold logits to TOLERANCE; it must give the float compact path's
# prediction on this share of INT8_CHECK_EXAMPLES sample inputs (and on the check batches).
INT8_MIN_AGREEMENT = 0.99
INT8_CHECK_EXAMPLES = 256


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """``top export``: a pruned checkpoint as an ONNX graph that drops the pruned tokens itself."""

    checkpoint: str = option(check=values.name_text, required=True, group="model and data", metavar="DIR_OR_HUB_ID",
                             help="a pruned checkpoint in the published layout: a directory or a Hugging Face id")
    output: str = option(check=values.path_text, required=True, group="output", metavar="FILE",
                         help="where to write the ONNX model, e.g. model.onnx")
    opset: Optional[int] = option(None, check=values.int_at_least(MIN_OPSET), group="output",
                                  default_text="17 (16 on torch 1.12)",
                                  help=f"ONNX opset, from {MIN_OPSET} to the newest this torch exports")
    dense: bool = option(False, switch=True, group="model and data",
                         help="export without pruning and without trimming padding (a baseline)")
    quantize: Optional[str] = option(
        None, choices=QUANTIZE, group="output",
        help="int8: onnxruntime's dynamic quantization of the weights of every matrix product (checked: "
        f"predictions agree with the float compact path on at least {INT8_MIN_AGREEMENT:.0%} of "
        f"{INT8_CHECK_EXAMPLES} sample inputs)",
    )
    no_optimize: bool = option(False, switch=True, group="output",
                               help="skip onnxruntime's transformer optimizer (its fused operators, such as "
                               "SkipLayerNormalization and BiasGelu, run only in onnxruntime)")

    def __post_init__(self):
        check_fields(self)
