"""ZOSGD: stochastic gradient descent on zeroth-order estimates."""
from __future__ import annotations

import torch

from .base import ZOOptimizer


class ZOSGD(ZOOptimizer):
    r"""SGD with momentum on g = mean_k delta_k v_k (frame coordinates).

    .. math::
        b_t = \beta b_{t-1} + g_t, \qquad
        x_{t+1} = x_t - \eta b_t \ \text{(euclidean)}, \qquad
        s_{t+1} = \mathrm{Exp}_{s_t}(-\eta s_t b_t) = s_t e^{-\eta b_t} \ \text{(orthant)}

    With momentum = 0 and queries = 1 this is MeZO's ZO-SGD.
    """

    def __init__(self, params, lr: float = 1e-3, momentum: float = 0.0, sampler="gaussian",
                 estimator="forward", mu: float = 1e-3, queries: int = 1, sequence: str = "geometric",
                 manifold="euclidean", clip: float | None = None, on_failure: str = "resample",
                 guide_beta: float = 0.9, seed: int = 0):
        if not lr >= 0:
            raise ValueError(f"lr: must be >= 0, got {lr}")
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum: must be in [0, 1), got {momentum}")
        super().__init__(params, dict(lr=lr, momentum=momentum, sampler=sampler, estimator=estimator, mu=mu,
                                      queries=queries, sequence=sequence, manifold=manifold, clip=clip,
                                      on_failure=on_failure, guide_beta=guide_beta), seed)

    def _prepare(self, p, group):
        state = self.state[p]
        if group["momentum"] and "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(p)
            state["fresh"] = True

    def _update(self, p, sl, g, group, manifold):
        state = self.state[p]
        if group["momentum"]:
            buf = state["momentum_buffer"].view(-1)[sl]
            if state.get("fresh"):
                buf.copy_(g)
            else:
                buf.mul_(group["momentum"]).add_(g)
            if sl.stop == p.numel():
                state.pop("fresh", None)
            g = buf
        manifold.move_(p.view(-1)[sl], g, -group["lr"])
