"""Deployment: a pruned model as an ONNX graph that drops the pruned tokens itself, checked before it is written.

The traced forward pass (``graph``), and the export with onnxruntime's fusions, int8 quantization
and the self-check against the compact path (``export``). It imports ``top.method``,
``top.storage`` and ``top.settings``.
"""
