"""ToP: constraint-aware, ranking-distilled token pruning for BERT/RoBERTa.

A reproducibility environment for Li et al., KDD'23: it reads the published
checkpoints, re-evaluates them, re-trains them and runs them with the pruned
tokens physically removed.
"""

import warnings

__version__ = "0.1.0"

# The paper's stack pairs scipy 1.7.3 with numpy 1.24.4 on purpose (README, "The pinned stack");
# scipy's import-time complaint about that pairing is expected noise, not a user problem.
warnings.filterwarnings("ignore", message="A NumPy version >=1.16.5 and <1.23.0", category=UserWarning)
