"""L0 hard-concrete gates for token pruning: one row of rank-bin gates and one layer gate per location.

The distribution, its constants and the inference-time mask follow ToP's ``L0ModuleForMAC``
(itself after Louizos et al. 2018 and Wang et al. 2020), so that published gate logits give the
published masks bit for bit. This module is the one owner of the gate facts: the defaults, what
a valid list of prune locations is, the deterministic masks, and the gate-state dict that
``TokenGates`` produces and consumes and ``top.method.checkpoint`` writes to ``l0_module.pt`` as it is.
"""

import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from top.errors import UserError, brief
from top.method.defaults import LAYER_GATE_INIT, TOKEN_GATE_INIT

# Stretch limits of the concrete distribution and the clamp on its CDF.
LIMIT_A = -0.1
LIMIT_B = 1.1
EPSILON = 1e-6
# Gate logits stay in [log 1e-2, log 1e2] after every optimiser step.
LOGA_MIN = math.log(1e-2)
LOGA_MAX = math.log(1e2)
# The original's defaults: its temperature and the "magical number" of its inference mask (its
# initial logits are in top.method.defaults).
DEFAULT_TEMPERATURE = 2.0 / 3.0
DEFAULT_MAGICAL_NUMBER = 0.8
# The marker of our gate-state dict, the one format of ``state_for_checkpoint`` and ``l0_module.pt``.
GATES_FORMAT = "top-gates-v1"
# Files written before the one format held the locations under the original's attribute name.
_OLD_LOCATIONS_KEY = "token_prune_loc"


def default_prune_locations(num_layers: int) -> List[int]:
    """Layers 2..L-1, as the paper uses for 12-layer BERT (2..11)."""
    return list(range(2, num_layers))


def _whole(value: Any) -> Optional[int]:
    """``value`` as an int if it is a whole number (a Python or 0-dim tensor one), else None."""
    if isinstance(value, (bool, str, bytes)):
        return None
    try:
        number = int(value)
        return number if float(value) == number else None
    except (TypeError, ValueError, OverflowError, RuntimeError):  # RuntimeError: a tensor of several values
        return None


def check_prune_locations(
    locations: Any,
    num_layers: Optional[int] = None,
    n_gates: Optional[int] = None,
    *,
    source: str = "TokenGates(prune_locations=...)",
    fix: str = "fix the list, e.g. 2,3,...,11",
    allow_empty: bool = True,
) -> List[int]:
    """``locations`` as a list of int if they are distinct, increasing layer indices a pruning step can follow.

    Layer 0 has no attention before it to rank tokens by, so indices start at 1 and end at
    ``num_layers - 1`` when the depth is known; with ``n_gates`` there must be one location per
    gate row. Otherwise a ``UserError``: one sentence naming ``source`` and ending with ``fix``.
    """
    values = None
    if not isinstance(locations, (str, bytes, Mapping)):
        try:
            values = [_whole(loc) for loc in locations]
        except TypeError:  # not a sequence at all
            pass
    if values is None or None in values:
        raise UserError(f"Prune locations {brief(locations)} from {source} are not whole layer numbers; {fix}.")
    if not values and not allow_empty:
        raise UserError(f"There are no prune locations in {source}; {fix}.")
    if n_gates is not None and len(values) != n_gates:
        raise UserError(
            f"The {len(values)} prune locations {values} from {source} do not match {n_gates} gate rows; {fix}."
        )
    last = math.inf if num_layers is None else num_layers - 1
    if any(not 1 <= loc <= last for loc in values) or any(b <= a for a, b in zip(values, values[1:])):
        where = "of at least 1" if num_layers is None else f"in 1..{num_layers - 1} of a {num_layers}-layer model"
        raise UserError(f"Prune locations {values} from {source} are not increasing layer indices {where}; {fix}.")
    return values


def cdf_qz(x: float, loga: torch.Tensor, temperature: float) -> torch.Tensor:
    """P(z < x) under the stretched concrete distribution, clamped to [eps, 1 - eps].

    The logit of the stretched point is multiplied by the temperature, as ToP does; the gates
    were trained (and their published logits are read) with exactly this formula.
    """
    xn = (x - LIMIT_A) / (LIMIT_B - LIMIT_A)
    logits = math.log(xn) - math.log(1 - xn)
    return torch.sigmoid(logits * temperature - loga).clamp(min=EPSILON, max=1 - EPSILON)


def quantile_concrete(u: torch.Tensor, loga: torch.Tensor, temperature: float) -> torch.Tensor:
    """Inverse CDF of the stretched concrete distribution at uniform draws ``u``."""
    y = torch.sigmoid((torch.log(u) - torch.log(1 - u) + loga) / temperature)
    return y * (LIMIT_B - LIMIT_A) + LIMIT_A


def _soft_mask(loga: torch.Tensor, temperature: float, magical_number: float) -> torch.Tensor:
    return torch.sigmoid(loga / temperature * magical_number)


def deterministic_mask(loga: torch.Tensor, temperature: float, magical_number: float) -> torch.Tensor:
    """The inference-time 0/1 mask of one group of gates (a 1-D row, or a single 0-dim gate).

    The expected number of closed gates, rounded with Python's ``round``, closes the gates with
    the smallest logits; every other gate is open.
    """
    with torch.no_grad():
        size = loga.numel()
        expected_open = torch.sum(1 - cdf_qz(0.0, loga, temperature)).item()
        num_zeros = round(size - expected_open)
        soft_mask = _soft_mask(loga, temperature, magical_number)
        if num_zeros > 0:
            if soft_mask.dim() == 0:
                soft_mask = torch.zeros_like(soft_mask)
            else:
                _, indices = torch.topk(soft_mask, k=num_zeros, largest=False)
                soft_mask = soft_mask.clone()
                soft_mask[indices] = 0.0
        return (soft_mask > 0.0).to(loga.dtype)


def deterministic_masks(
    token_loga: torch.Tensor,
    pruner_loga: torch.Tensor,
    temperature: float = DEFAULT_TEMPERATURE,
    magical_number: float = DEFAULT_MAGICAL_NUMBER,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """0/1 masks ``token_z [n_loc, bin_num]``, ``pruner_z [n_loc]`` of the gate logits, for evaluation.

    Each location's row of bin gates, and each layer gate, is decided on its own.
    """
    if token_loga.shape[0] == 0:  # no location: nothing to stack
        return token_loga.detach().new_zeros(token_loga.shape), pruner_loga.detach().new_zeros(pruner_loga.shape)
    token_z = torch.stack([deterministic_mask(row, temperature, magical_number) for row in token_loga])
    pruner_z = torch.stack([deterministic_mask(gate, temperature, magical_number) for gate in pruner_loga])
    return token_z, pruner_z


def _is_deterministic_mask(
    mask: torch.Tensor, expected: torch.Tensor, loga: torch.Tensor, temperature: float, magical_number: float
) -> bool:
    """True when ``mask`` is ``expected`` up to how ties among equal logits were broken.

    The original closes the k smallest soft gates with ``torch.topk``; logits clamped to the same
    bound tie, and CUDA and CPU may pick different members of a tie. Any mask with the same k
    closed gates, none of them larger than an open one, is one the original could have produced.
    """
    if torch.equal(mask, expected):
        return True
    if int((mask == 0).sum()) != int((expected == 0).sum()):
        return False
    soft = _soft_mask(loga, temperature, magical_number)
    closed, open_ = soft[mask == 0], soft[mask == 1]
    return closed.numel() == 0 or open_.numel() == 0 or bool(closed.max() <= open_.min())


def mask_disagreeing_with(token_z: torch.Tensor, pruner_z: torch.Tensor, state: Mapping[str, Any]) -> Optional[str]:
    """``"token_z"`` or ``"pruner_z"``, whichever is not the deterministic mask of the gate ``state``; else None.

    A mask of another shape disagrees; ties among equal logits may be broken either way.
    """
    temperature, magical_number = state["temperature"], state["magical_number"]
    expected = deterministic_masks(state["token_loga"], state["pruner_loga"], temperature, magical_number)
    for name, mask, want, loga in zip(
        ("token_z", "pruner_z"), (token_z, pruner_z), expected, (state["token_loga"], state["pruner_loga"])
    ):
        mask = mask.detach().to("cpu", want.dtype)
        if mask.shape != want.shape or not all(
            _is_deterministic_mask(m, e, lg, temperature, magical_number) for m, e, lg in zip(mask, want, loga)
        ):
            return name
    return None


def trailing_prune_locations(n_locations: int, num_layers: int) -> List[int]:
    """The last ``n_locations`` layers: what ToP's PRUNE_LOCATION settings (2..11, 3..11) are.

    A gate state or mask file that does not say where its rows sit is read this way.
    """
    return list(range(num_layers - n_locations, num_layers))


def _tensor(fields: Mapping[str, Any], key: str, source: str, fix: str) -> torch.Tensor:
    value = fields.get(key)
    if not isinstance(value, torch.Tensor) or value.is_complex() or value.dtype == torch.bool:
        raise UserError(f"{source} has no tensor of gate logits under '{key}'; {fix}.")
    value = value.detach().to("cpu", torch.float32).clone()
    if not bool(torch.isfinite(value).all()):
        raise UserError(f"{source} has '{key}' values that are not finite numbers; {fix}.")
    return value


def _scalar(fields: Mapping[str, Any], key: str, source: str, fix: str) -> torch.Tensor:
    """A Lagrange multiplier: a one-element tensor or a number, 0 when absent."""
    value = fields.get(key)
    if value is None:
        return torch.tensor(0.0)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = torch.tensor(float(value))
    if not isinstance(value, torch.Tensor) or value.numel() != 1 or value.is_complex():
        raise UserError(f"{source} has no single number under '{key}'; {fix}.")
    value = value.detach().to("cpu", torch.float32).reshape(()).clone()
    if not bool(torch.isfinite(value)):
        raise UserError(f"{source} has a '{key}' that is not a finite number; {fix}.")
    return value


def _positive(fields: Mapping[str, Any], key: str, default: float, source: str, fix: str) -> float:
    value = fields.get(key)
    if value is None:
        value = default
    try:
        number = float(value)
    except (TypeError, ValueError, RuntimeError, OverflowError):  # OverflowError: an int like 10**400
        number = math.nan
    if isinstance(value, bool) or not (math.isfinite(number) and number > 0):
        raise UserError(f"{source} gives {key} as {brief(value)}, not a positive number; {fix}.")
    return number


def read_gate_state(
    fields: Mapping[str, Any], *, source: str, fix: str, num_layers: Optional[int] = None
) -> Dict[str, Any]:
    """The one gate-state dict, checked, from ``fields`` (that dict, or one with the old keys).

    The dict is ``{"format": GATES_FORMAT, "token_loga": [n_loc, bin_num], "pruner_loga": [n_loc],
    "lambda_1": (), "lambda_2": (), "prune_locations": [int], "bin_num": int, "temperature": float,
    "magical_number": float}``, its tensors float32 copies on the CPU: what
    ``TokenGates.state_for_checkpoint()`` gives, ``TokenGates.from_state`` takes and
    ``l0_module.pt`` holds. Absent lambdas are 0, absent temperature and magical number the
    defaults; the locations may come under the original's name ``token_prune_loc``, and absent,
    with ``num_layers`` known, are the last layers. A bad value is a ``UserError`` naming ``source``
    and ending with ``fix``.
    """
    if not isinstance(fields, Mapping):
        raise UserError(f"{source} is not a dict of gate logits; {fix}.")
    token_loga = _tensor(fields, "token_loga", source, fix)
    pruner_loga = _tensor(fields, "pruner_loga", source, fix)
    if token_loga.dim() != 2 or pruner_loga.shape != token_loga.shape[:1]:
        raise UserError(
            f"{source} has token_loga of shape {tuple(token_loga.shape)} and pruner_loga of shape "
            f"{tuple(pruner_loga.shape)}, which do not fit one gate row per prune location; {fix}."
        )
    n_rows, bins = token_loga.shape
    if n_rows > 0 and bins == 0:
        raise UserError(f"{source} has gates with 0 rank bins; {fix}.")
    bin_num = fields.get("bin_num")
    if bin_num is not None and _whole(bin_num) != bins:
        raise UserError(f"{source} gives bin_num {brief(bin_num)} but its token_loga has {bins} bins; {fix}.")
    locations = fields.get("prune_locations", fields.get(_OLD_LOCATIONS_KEY))
    if locations is None:
        if num_layers is None:
            raise UserError(f"{source} does not say its prune_locations; {fix}.")
        locations = trailing_prune_locations(n_rows, num_layers)
    return {
        "format": GATES_FORMAT,
        "token_loga": token_loga,
        "pruner_loga": pruner_loga,
        "lambda_1": _scalar(fields, "lambda_1", source, fix),
        "lambda_2": _scalar(fields, "lambda_2", source, fix),
        "prune_locations": check_prune_locations(locations, num_layers, n_rows, source=source, fix=fix),
        "bin_num": bins,
        "temperature": _positive(fields, "temperature", DEFAULT_TEMPERATURE, source, fix),
        "magical_number": _positive(fields, "magical_number", DEFAULT_MAGICAL_NUMBER, source, fix),
    }


class TokenGates(nn.Module):
    """Learned L0 gates: ``token_loga [n_loc, bin_num]`` per rank bin, ``pruner_loga [n_loc]`` per layer.

    ``lambda_1`` and ``lambda_2`` are the Lagrange multipliers of the sparsity constraint; they
    live here (as in the original) but are trained by their own optimiser, by gradient ascent.
    """

    def __init__(
        self,
        prune_locations: Sequence[int],
        bin_num: int,
        temperature: float = DEFAULT_TEMPERATURE,
        magical_number: float = DEFAULT_MAGICAL_NUMBER,
        token_init: float = TOKEN_GATE_INIT,
        layer_init: float = LAYER_GATE_INIT,
    ) -> None:
        super().__init__()
        self.prune_locations = check_prune_locations(prune_locations, allow_empty=False)
        if int(bin_num) < 1:
            raise UserError(f"bin_num is {bin_num}; give a positive number of rank bins, e.g. 50.")
        self.bin_num = int(bin_num)
        self.temperature = float(temperature)
        self.magical_number = float(magical_number)
        n_loc = len(self.prune_locations)
        self.token_loga = nn.Parameter(torch.empty(n_loc, self.bin_num).normal_(token_init, 1e-2))
        self.pruner_loga = nn.Parameter(torch.empty(n_loc).normal_(layer_init, 1e-2))
        self.lambda_1 = nn.Parameter(torch.tensor(0.0))
        self.lambda_2 = nn.Parameter(torch.tensor(0.0))

    def _sample_one(self, loga: torch.Tensor) -> torch.Tensor:
        u = torch.empty_like(loga).uniform_(EPSILON, 1 - EPSILON)
        return F.hardtanh(quantile_concrete(u, loga, self.temperature), min_val=0.0, max_val=1.0)

    def sample(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """Hard-concrete samples in [0, 1]: ``token_z [n_loc, bin_num]``, ``pruner_z [n_loc]``."""
        return self._sample_one(self.token_loga), self._sample_one(self.pruner_loga)

    def deterministic(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """0/1 float masks for evaluation: :func:`deterministic_masks` of these gates."""
        return deterministic_masks(self.token_loga, self.pruner_loga, self.temperature, self.magical_number)

    def keep_probabilities(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """P(z > 0) of every gate, differentiable: ``token_score``, ``pruner_score``."""
        token_score = 1 - cdf_qz(0.0, self.token_loga, self.temperature)
        pruner_score = 1 - cdf_qz(0.0, self.pruner_loga, self.temperature)
        return token_score, pruner_score

    def expected_l0(self) -> torch.Tensor:
        """Expected number of open gates, token bins and layer gates together."""
        token_score, pruner_score = self.keep_probabilities()
        return token_score.sum() + pruner_score.sum()

    def constrain_(self) -> None:
        """Clamp the gate logits in place, as after every optimiser step of the original."""
        with torch.no_grad():
            self.token_loga.clamp_(min=LOGA_MIN, max=LOGA_MAX)
            self.pruner_loga.clamp_(min=LOGA_MIN, max=LOGA_MAX)

    def gate_parameters(self) -> List[nn.Parameter]:
        return [self.token_loga, self.pruner_loga]

    def lambda_parameters(self) -> List[nn.Parameter]:
        return [self.lambda_1, self.lambda_2]

    def state_for_checkpoint(self) -> Dict[str, Any]:
        """The gate-state dict of :func:`read_gate_state`: tensors and plain values only, so the
        file it is written to loads with ``torch.load(weights_only=True)``."""
        return {
            "format": GATES_FORMAT,
            "token_loga": self.token_loga.detach().cpu().clone(),
            "pruner_loga": self.pruner_loga.detach().cpu().clone(),
            "lambda_1": self.lambda_1.detach().cpu().clone(),
            "lambda_2": self.lambda_2.detach().cpu().clone(),
            "prune_locations": list(self.prune_locations),
            "bin_num": self.bin_num,
            "temperature": self.temperature,
            "magical_number": self.magical_number,
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> "TokenGates":
        """Rebuild gates from a gate-state dict (``state_for_checkpoint()``, ``PrunedCheckpoint.gate_state``)."""
        state = read_gate_state(
            state, source="The gate state", fix="give a dict written by TokenGates.state_for_checkpoint()"
        )
        gates = cls(
            state["prune_locations"],
            state["bin_num"],
            temperature=state["temperature"],
            magical_number=state["magical_number"],
        )
        with torch.no_grad():
            for name in ("token_loga", "pruner_loga", "lambda_1", "lambda_2"):
                getattr(gates, name).copy_(state[name])
        return gates
