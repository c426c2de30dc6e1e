"""Data: what the examples are. GLUE task facts, reading task files, tokenised batches, the results table.

It imports only ``top.storage`` and ``top.errors``; it knows nothing of the model or the method.
"""
