"""ToP: constraint-aware, ranking-distilled token pruning for BERT/RoBERTa (Li et al., KDD'23).

The Python API (``docs/API.md``)::

    import top
    model = top.ToPForSequenceClassification.from_pretrained("senfu/bert-base-uncased-top-pruned-sst2")
    result = top.train(top.TrainConfig(model="teacher", teacher="teacher", train_file="train.csv",
                                       validation_file="dev.csv", output_dir="pruned", target_sparsity=0.5))

Each job (``train``, ``finetune``, ``evaluate``, ``export``, ``bench``, ``calibrate``, ``reproduce``, ``grid``)
takes one frozen config whose fields are its command's flags, and returns a small result. The
names load on first use, so ``import top`` (and ``top --help``) does not import torch.
"""

import importlib
import warnings
from typing import Any

__version__ = "0.1.0"

# The paper's stack pairs scipy 1.7.3 with numpy 1.24.4 on purpose (docs/DESIGN.md, "The pinned stack");
# scipy's import-time complaint about that pairing is expected noise, not a user problem.
warnings.filterwarnings("ignore", message="A NumPy version >=1.16.5 and <1.23.0", category=UserWarning)

# The public API: name -> the module that defines it.
_API = {
    "ToPForSequenceClassification": "top.method.pretrained",
    "pipeline": "top.method.pretrained",
    "train": "top.training.loop",
    "TrainConfig": "top.training.config",
    "TrainResult": "top.training.loop",
    "finetune": "top.training.finetune",
    "FinetuneConfig": "top.training.config",
    "FinetuneResult": "top.training.finetune",
    "evaluate": "top.evaluation.evaluate",
    "EvalConfig": "top.evaluation.config",
    "EvalResult": "top.evaluation.evaluate",
    "export": "top.deploy.export",
    "ExportConfig": "top.deploy.config",
    "ExportResult": "top.deploy.export",
    "bench": "top.evaluation.bench",
    "BenchConfig": "top.evaluation.config",
    "BenchResult": "top.evaluation.bench",
    "calibrate": "top.evaluation.calibrate",
    "CalibrateConfig": "top.evaluation.config",
    "CalibrateResult": "top.evaluation.calibrate",
    "reproduce": "top.evaluation.reproduce",
    "ReproduceConfig": "top.evaluation.config",
    "grid": "top.training.grid",
    "GridConfig": "top.training.grid",
    "GridResult": "top.training.grid",
    "Progress": "top.training.progress",
    "UserError": "top.errors",
}
__all__ = sorted(_API) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'top' has no attribute {name!r}")
    value = getattr(importlib.import_module(_API[name]), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__():
    return __all__
