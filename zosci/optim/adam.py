"""ZOAdam: Adam on zeroth-order estimates."""
from __future__ import annotations


import torch

from .base import ZOOptimizer


class ZOAdam(ZOOptimizer):
    r"""Adam on g = mean_k delta_k v_k (frame coordinates):

    .. math::
        m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t,\quad
        v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2,\quad
        d_t = \frac{m_t / (1-\beta_1^t)}{\sqrt{v_t / (1-\beta_2^t)} + \epsilon}

    then x <- x - lr d (euclidean) or s <- s exp(-lr d) (orthant).
    """

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, sampler="gaussian",
                 estimator="forward", mu: float = 1e-3, queries: int = 1, sequence: str = "geometric",
                 manifold="euclidean", clip: float | None = None, on_failure: str = "resample",
                 guide_beta: float = 0.9, seed: int = 0):
        if not lr >= 0:
            raise ValueError(f"lr: must be >= 0, got {lr}")
        if not all(0 <= b < 1 for b in betas):
            raise ValueError(f"betas: each must be in [0, 1), got {betas}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, sampler=sampler, estimator=estimator,
                                      mu=mu, queries=queries, sequence=sequence, manifold=manifold, clip=clip,
                                      on_failure=on_failure, guide_beta=guide_beta), seed)

    def _prepare(self, p, group):
        state = self.state[p]
        if not state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(p)
            state["exp_avg_sq"] = torch.zeros_like(p)
        state["step"] += 1

    def _update(self, p, sl, g, group, manifold):
        state = self.state[p]
        beta1, beta2 = group["betas"]
        m, v = state["exp_avg"].view(-1)[sl], state["exp_avg_sq"].view(-1)[sl]
        m.mul_(beta1).add_(g, alpha=1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        c1, c2 = 1 - beta1 ** state["step"], 1 - beta2 ** state["step"]
        d = (m / c1) / ((v / c2).sqrt() + group["eps"])
        manifold.move_(p.view(-1)[sl], d, -group["lr"])
