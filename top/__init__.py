"""ToP: constraint-aware, ranking-distilled token pruning for BERT/RoBERTa.

A reproducibility environment for Li et al., KDD'23: it reads the published
checkpoints, re-evaluates them, re-trains them and runs them with the pruned
tokens physically removed.
"""

__version__ = "0.1.0"
