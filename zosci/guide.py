"""DAP's guide: the best gradient information at hand, from earlier estimates.

One source for every caller (estimate_gradient, the optimizers, BlackBox): an
exponential moving average of the estimates made so far,

    a_1 = g_1,    a_t = beta a_{t-1} + (1 - beta) g_t,

so the guide costs no evaluation of f. Before the first estimate there is none,
and the DAP sampler draws sphere directions (zosci.samplers). A guide is kept
per tensor list (one per parameter list, or per row of a batched BlackBox) and
updated chunk by chunk where the estimate is never formed whole (optimizers).
"""
from __future__ import annotations

from typing import Sequence

import torch

from .errors import ConfigError


class Guide:
    """a <- beta a + (1 - beta) g over a list of tensors (None until the first update)."""

    def __init__(self, beta: float = 0.9):
        if not 0 <= beta < 1:
            raise ConfigError(f"guide_beta: must be in [0, 1), got {beta!r}")
        self.beta = beta
        self.tensors: list[torch.Tensor] | None = None
        self.updates = 0

    def value(self, like: Sequence[torch.Tensor] | None = None) -> list[torch.Tensor] | None:
        """The guide, or None before the first estimate (or if its shapes differ from like's)."""
        if self.tensors is None:
            return None
        if like is not None and [t.shape for t in like] != [a.shape for a in self.tensors]:
            return None
        return self.tensors

    def begin(self, like: Sequence[torch.Tensor]) -> None:
        """Start an update (allocates the guide at the first estimate)."""
        if self.value(like) is None:
            self.tensors = [torch.zeros_like(t) for t in like]
            self.updates = 0

    def update_chunk(self, k: int, sl: slice, g: torch.Tensor) -> None:
        """Fold the estimate's flat elements sl of tensor k into the guide (after begin)."""
        a = self.tensors[k].view(-1)[sl]
        if self.updates == 0:
            a.copy_(g)
        else:
            a.mul_(self.beta).add_(g.to(a.dtype), alpha=1 - self.beta)

    def end(self) -> None:
        self.updates += 1

    def update(self, estimate: Sequence[torch.Tensor]) -> None:
        """Fold a whole estimate (one tensor per tensor of the guide) into the guide."""
        self.begin(estimate)
        for k, g in enumerate(estimate):
            self.update_chunk(k, slice(0, g.numel()), g.reshape(-1))
        self.end()

    def state_dict(self) -> dict:
        return {"beta": self.beta, "updates": self.updates,
                "tensors": None if self.tensors is None else [a.clone() for a in self.tensors]}

    def load_state_dict(self, state: dict) -> None:
        self.beta, self.updates = state["beta"], state["updates"]
        self.tensors = None if state["tensors"] is None else [a.clone() for a in state["tensors"]]
