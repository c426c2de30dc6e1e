"""Evaluation: measuring a model. Scoring a dev set, the GLUE metrics, and the machine a figure was measured on.

It imports ``top.method``, ``top.data``, ``top.storage`` and ``top.errors``, never training or a command.
"""
