"""L0 hard-concrete gates for token pruning: one row of rank-bin gates and one layer gate per location.

The distribution, its constants and the inference-time mask follow ToP's ``L0ModuleForMAC``
(itself after Louizos et al. 2018 and Wang et al. 2020), so that published gate logits give the
published masks bit for bit.
"""

import math
from typing import Any, Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from top.errors import UserError

# Stretch limits of the concrete distribution and the clamp on its CDF.
LIMIT_A = -0.1
LIMIT_B = 1.1
EPSILON = 1e-6
# Gate logits stay in [log 1e-2, log 1e2] after every optimiser step.
LOGA_MIN = math.log(1e-2)
LOGA_MAX = math.log(1e2)


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


def deterministic_mask(loga: torch.Tensor, temperature: float, magical_number: float) -> torch.Tensor:
    """The inference-time 0/1 mask of one group of gates (a 1-D row, or a single 0-dim gate).

    The expected number of closed gates, rounded with Python's ``round``, closes the gates with
    the smallest logits; every other gate is open.
    """
    with torch.no_grad():
        size = loga.numel()
        expected_open = torch.sum(1 - cdf_qz(0.0, loga, temperature)).item()
        num_zeros = round(size - expected_open)
        soft_mask = torch.sigmoid(loga / temperature * magical_number)
        if num_zeros > 0:
            if soft_mask.dim() == 0:
                soft_mask = torch.zeros_like(soft_mask)
            else:
                _, indices = torch.topk(soft_mask, k=num_zeros, largest=False)
                soft_mask = soft_mask.clone()
                soft_mask[indices] = 0.0
        return (soft_mask > 0.0).to(loga.dtype)


def _check_locations(prune_locations: Sequence[int]) -> List[int]:
    locations = [int(loc) for loc in prune_locations]
    if not locations:
        raise UserError("prune_locations is empty; give at least one layer index, e.g. 2,3,...,11.")
    if any(loc < 1 for loc in locations) or any(b <= a for a, b in zip(locations, locations[1:])):
        raise UserError(
            f"prune_locations {locations} must be strictly increasing layer indices of at least 1; "
            "fix the list, e.g. 2,3,...,11."
        )
    return locations


class TokenGates(nn.Module):
    """Learned L0 gates: ``token_loga [n_loc, bin_num]`` per rank bin, ``pruner_loga [n_loc]`` per layer.

    ``lambda_1`` and ``lambda_2`` are the Lagrange multipliers of the sparsity constraint; they
    live here (as in the original) but are trained by their own optimiser, by gradient ascent.
    """

    def __init__(
        self,
        prune_locations: Sequence[int],
        bin_num: int,
        temperature: float = 2.0 / 3.0,
        magical_number: float = 0.8,
        token_init: float = 10.0,
        layer_init: float = -10.0,
    ) -> None:
        super().__init__()
        self.prune_locations = _check_locations(prune_locations)
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
        """0/1 float masks for evaluation, each location (and each layer gate) decided on its own."""
        token_z = torch.stack(
            [deterministic_mask(row, self.temperature, self.magical_number) for row in self.token_loga]
        )
        pruner_z = torch.stack(
            [deterministic_mask(gate, self.temperature, self.magical_number) for gate in self.pruner_loga]
        )
        return token_z, pruner_z

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
        """Tensors and plain values only, so the file loads with ``torch.load(weights_only=True)``."""
        return {
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
    def from_state(cls, state: Dict[str, Any]) -> "TokenGates":
        """Rebuild gates from ``state_for_checkpoint()`` (``token_prune_loc`` is read as an alias)."""
        locations = state.get("prune_locations", state.get("token_prune_loc"))
        missing = [k for k in ("token_loga", "pruner_loga") if k not in state]
        if locations is None:
            missing.append("prune_locations")
        if missing:
            raise UserError(
                "The gate state lacks {}; give a dict written by TokenGates.state_for_checkpoint().".format(
                    ", ".join(missing)
                )
            )
        token_loga = torch.as_tensor(state["token_loga"]).float()
        pruner_loga = torch.as_tensor(state["pruner_loga"]).float()
        bin_num = int(state.get("bin_num", token_loga.shape[-1]))
        gates = cls(
            locations,
            bin_num,
            temperature=float(state.get("temperature", 2.0 / 3.0)),
            magical_number=float(state.get("magical_number", 0.8)),
        )
        expected = {"token_loga": tuple(gates.token_loga.shape), "pruner_loga": tuple(gates.pruner_loga.shape)}
        for name, tensor in (("token_loga", token_loga), ("pruner_loga", pruner_loga)):
            if tuple(tensor.shape) != expected[name]:
                raise UserError(
                    f"The gate state's {name} has shape {tuple(tensor.shape)} but prune_locations and "
                    f"bin_num need {expected[name]}; fix the state or its prune_locations/bin_num."
                )
        with torch.no_grad():
            gates.token_loga.copy_(token_loga)
            gates.pruner_loga.copy_(pruner_loga)
            for name in ("lambda_1", "lambda_2"):
                if name in state:
                    getattr(gates, name).copy_(torch.as_tensor(state[name]).float().reshape(()))
        return gates
