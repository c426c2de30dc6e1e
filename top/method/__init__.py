"""The method: ToP itself, as functions over tensors and the wrapped Hugging Face classifier.

The pruning step, the gates, FLOPs, the losses, the multipliers' control, the model, compact
inference and the checkpoint layout that holds weights, masks and gates. It imports only
``top.storage`` (to read a model directory) and ``top.errors``.
"""
