"""The runtime: what a job needs of the machine it runs on, the same for evaluating and training.

The device a ``--device`` names, the seeds and deterministic switches (and putting them back for a
caller from Python), and a description of the hardware for every figure's record. It imports
``top.settings`` only.
"""
