"""Exactly reversible in-place perturbation of parameters.

``with perturbed(params, direction, t, manifold): loss = closure()`` moves every
tensor to x + t v (or s exp(t v)), then restores it bit for bit, without a copy:
v is regenerated from its seed, the move is undone, and the few entries where
floating-point round-off would not give x back (found while moving) are
written back from a sparse record. "Bit for bit" compares the bits, so a
signed zero (-0.0 vs +0.0) or a NaN payload comes back too. Memory: a few chunk-sized temporaries
(zosci.samplers.CHUNK elements), plus the sparse record.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch

from .manifolds import Euclidean


_BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _differs(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Elementwise: do a and b differ in any bit (unlike !=, which equates -0.0 and +0.0)."""
    bits = _BITS[a.element_size()]
    return a.view(bits) != b.view(bits)


@contextmanager
def perturbed(params, direction, t: float, manifold=Euclidean):
    """Move params (a list of tensors) by t along direction; restore on exit.

    ``manifold`` is one manifold for all tensors or a list, one per tensor.
    Work streams through the direction's chunks (zosci.samplers.CHUNK)."""
    params = list(params)
    manifolds = manifold if isinstance(manifold, (list, tuple)) else [manifold] * len(params)
    moved, fixes = [], []
    try:
        with torch.no_grad():
            for k, p in enumerate(params):
                flat = p.view(-1)
                for sl, v in direction.chunks(k):
                    seg = flat[sl]
                    orig = seg.clone()
                    manifolds[k].move_(seg, v, t)
                    moved.append((k, sl.start))
                    bad = _differs(manifolds[k].unmove(seg, v, t), orig).nonzero().view(-1)
                    if bad.numel():
                        fixes.append((k, bad + sl.start, orig[bad]))
        yield
    finally:
        with torch.no_grad():
            done = set(moved)
            for k in sorted({k for k, _ in moved}):
                flat = params[k].view(-1)
                for sl, v in direction.chunks(k):
                    if (k, sl.start) in done:
                        manifolds[k].unmove_(flat[sl], v, t)
            for k, idx, values in fixes:
                params[k].view(-1)[idx] = values
