"""Exactly reversible in-place perturbation of parameters.

``with perturbed(params, direction, t, manifold): loss = closure()`` moves every
tensor to x + t v (or s exp(t v)), then restores it bit for bit, without a copy:
v is regenerated from its seed, the move is undone, and the few entries where
floating-point round-off would not give x back (found while moving) are
written back from a sparse record. Memory: one tensor-sized temporary at a
time, plus the sparse record.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch

from .manifolds import Euclidean


def _undo(manifold, x: torch.Tensor, v: torch.Tensor, t: float) -> torch.Tensor:
    return manifold.move_(x, v, -t) if manifold is Euclidean else x.div_(torch.exp(v * t))


@contextmanager
def perturbed(params, direction, t: float, manifold=Euclidean):
    """Move params (a list of tensors) by t along direction; restore on exit.

    ``manifold`` is one manifold for all tensors or a list, one per tensor."""
    params = list(params)
    manifolds = manifold if isinstance(manifold, (list, tuple)) else [manifold] * len(params)
    fixes = []
    try:
        with torch.no_grad():
            for k, p in enumerate(params):
                v = direction.part(k)
                moved = manifolds[k].move(p, v, t)
                back = _undo(manifolds[k], moved.clone(), v, t)
                bad = (back != p).view(-1).nonzero().view(-1)
                fixes.append((bad, p.view(-1)[bad].clone()))
                p.copy_(moved)
        yield
    finally:
        with torch.no_grad():
            for k, (bad, values) in enumerate(fixes):
                p = params[k]
                _undo(manifolds[k], p, direction.part(k), t)
                p.view(-1)[bad] = values
