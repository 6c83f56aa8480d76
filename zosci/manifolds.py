"""Where perturbations and updates move the parameters.

A manifold maps a direction v (in an orthonormal frame of the tangent space)
and a step t to a new point, in place (move_) or into a new tensor (move); a
move by -t goes back up to round-off (zosci.perturb writes back the rest):

* Euclidean:        x <- x + t v
* PositiveOrthant:  s <- Exp_s(t s v) = s * exp(t v)   under the metric
  <u, w>_s = sum u_i w_i / s_i^2, whose orthonormal frame is e_i s_i and whose
  exponential map is Exp_s(w) = s * exp(w / s). Directional derivatives along
  u = s v are then grad f^T u, the Riemannian gradient is s^2 * grad f, and
  every perturbation and update keeps s > 0. (In floating point: the exponent
  of one move is clamped to a quarter of the dtype's log-range and the result
  to its positive normal range, so even absurd steps leave s finite and > 0.)
"""
from __future__ import annotations

import math

import torch

from .errors import ConfigError


class Euclidean:
    name = "euclidean"

    @staticmethod
    def move_(x: torch.Tensor, v: torch.Tensor, t: float) -> torch.Tensor:
        return x.add_(v, alpha=t)

    @staticmethod
    def move(x: torch.Tensor, v: torch.Tensor, t: float) -> torch.Tensor:
        """move_ into a new tensor (the same arithmetic, so the same bits)."""
        return torch.add(x, v, alpha=t)

    @staticmethod
    def to_tangent(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """The tangent vector whose frame coordinates are v."""
        return v

    @staticmethod
    def check(x: torch.Tensor, name: str = "x") -> None:
        pass


class PositiveOrthant:
    name = "orthant"

    @staticmethod
    def factor(s: torch.Tensor, v: torch.Tensor, t: float) -> torch.Tensor:
        """exp(t v), its exponent clamped so s * exp(t v) stays finite and > 0 in s's dtype."""
        limit = 0.25 * math.log(torch.finfo(s.dtype).max)
        return torch.exp((v * t).clamp_(-limit, limit))

    @staticmethod
    def move_(s: torch.Tensor, v: torch.Tensor, t: float) -> torch.Tensor:
        info = torch.finfo(s.dtype)
        return s.mul_(PositiveOrthant.factor(s, v, t)).clamp_(info.tiny, info.max)

    @staticmethod
    def move(s: torch.Tensor, v: torch.Tensor, t: float) -> torch.Tensor:
        """move_ into a new tensor (the same arithmetic, so the same bits)."""
        info = torch.finfo(s.dtype)
        return torch.mul(s, PositiveOrthant.factor(s, v, t)).clamp_(info.tiny, info.max)

    @staticmethod
    def to_tangent(s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return s * v

    @staticmethod
    def check(s: torch.Tensor, name: str = "s") -> None:
        if not bool((s > 0).all()):
            raise ConfigError(f"{name}: the positive orthant needs every entry > 0 "
                              f"(min is {float(s.min()):g}); use the euclidean manifold for signed values")


MANIFOLDS = {m.name: m for m in (Euclidean, PositiveOrthant)}


def get_manifold(name):
    if name in MANIFOLDS.values():
        return name
    try:
        return MANIFOLDS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"manifold: unknown {name!r}; choose one of {sorted(MANIFOLDS)}") from None
