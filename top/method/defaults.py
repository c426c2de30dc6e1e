"""The method's named choices and starting values, free of torch so that the settings can offer them.

The modules that implement each choice import its name from here: ``sparsity_control`` (the
controllers), ``modeling`` (the attention kernels) and ``gates`` (the gates' initial logits).
"""

# How the Lagrange multipliers move; the first is the paper's (see top.method.sparsity_control).
CONTROLS = ("paper", "adaptive")
# The attention kernel of the layers whose probabilities nothing reads (see top.method.modeling).
ATTENTIONS = ("sdpa", "eager")
# The original's initial gate logits: every token bin open, every layer gate off.
TOKEN_GATE_INIT = 10.0
LAYER_GATE_INIT = -10.0
# How a pruned checkpoint runs: the paper's masked evaluation, or the pruned tokens removed.
RUN_MODES = ("faithful", "compact")
