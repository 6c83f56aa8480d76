"""Zeroth-order optimization on the positive orthant s > 0 (quantization scales).

Metric <u, w>_s = sum u_i w_i / s_i^2; exponential map Exp_s(w) = s exp(w / s).
With v in the orthonormal frame (u = s v), f(Exp_s(t u)) = f(s exp(t v)), so
delta ~ grad f^T (s v) and s * mean(delta v) estimates the Riemannian gradient
s^2 grad f. A step Exp_s(-lr g_R) = s exp(-lr g_R / s) never leaves s > 0.
"""
from __future__ import annotations

import torch

from .gradient import estimate_gradient
from .manifolds import PositiveOrthant


def estimate_orthant_gradient(f, s: torch.Tensor, **kwargs):
    """Riemannian gradient estimate of f at s > 0 (same options as estimate_gradient)."""
    return estimate_gradient(f, s, manifold="orthant", **kwargs)


def exp_map(s: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Exp_s(w) = s * exp(w / s): the map the optimizers move by (zosci.manifolds.PositiveOrthant,
    which keeps the result finite and > 0)."""
    return PositiveOrthant.move(s, w / s, 1.0)


def riemannian_step(s: torch.Tensor, grad: torch.Tensor, lr: float) -> torch.Tensor:
    """Exp_s(-lr grad): a gradient step that stays in the orthant."""
    return exp_map(s, -lr * grad)
