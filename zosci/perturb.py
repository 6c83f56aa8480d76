"""Exactly reversible in-place perturbation of parameters.

``with Walk(params, direction, [t1, t2], manifold) as stops: for t in stops: f = closure()``
moves every tensor in place to x + t1 v, then to x + t2 v, ..., then back to x
(on the positive orthant s exp(t v)), without a copy: MeZO's +mu v, -2 mu v,
+mu v for the two-sided estimator. v is regenerated from its seed, chunk by
chunk, once per leg: a walk through n points draws v n + 1 times, and an
update that takes v from the return leg (``Walk.chunks``) draws nothing
more. Each leg returns to x bit for bit before it moves on: moving to a
point also computes, out of place, where moving back would land, and the few
entries where floating-point round-off would miss x are written back from a
sparse record.
(Walking straight from x + t1 v to x + t2 v would miss about half of them.)
"Bit for bit" compares the bits, so a signed zero (-0.0 vs +0.0) or a NaN
payload comes back too. Memory: a few chunk-sized temporaries
(zosci.samplers.CHUNK elements), plus the sparse record.
``perturbed(params, direction, t)`` is the walk through one point.
"""
from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch

from .manifolds import Euclidean


_BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _words(t: torch.Tensor) -> torch.Tensor:
    """The bits of a flat contiguous tensor as integers: 8-byte words where the
    layout allows (half the comparisons for float32), else one per element."""
    size = t.element_size()
    if (t.numel() * size) % 8 == 0 and (t.storage_offset() * size) % 8 == 0:
        return t.detach().view(torch.int64)
    return t.detach().view(_BITS[size])


def _differing_words(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Indices of the words (``_words``) where a and b differ in any bit (unlike
    !=, which equates -0.0 and +0.0)."""
    wa, wb = _words(a), _words(b)
    if wa.device.type == "cpu":  # numpy finds a few % of indices about 2x faster than torch 2.13 on CPU
        return torch.from_numpy(np.flatnonzero(wa.numpy() != wb.numpy()))
    return (wa != wb).nonzero().view(-1)


class Walk:
    """Move params (a list of tensors) in place to x + t v for each t of ts in turn, then back to x.

    ``with Walk(params, direction, ts, manifold) as stops: for t in stops: ...``:
    iterating moves the params to each point before giving its t; leaving the
    block (or ``close()``) brings them back to x. ``manifold`` is one manifold
    for all tensors or a list, one per tensor. Each leg draws each chunk of v
    once: back to x exactly, then out to the next point.

    ``chunks(k)`` is the return leg of tensor k as (slice, v chunk) pairs, each
    chunk back at x when it is given: an update that needs v right after the
    walk (x - lr delta v) takes v from there instead of drawing it again.
    With ``like``, a Walk stands in for its direction in
    zosci.samplers.weighted_sum."""

    def __init__(self, params, direction, ts, manifold=Euclidean):
        self.params = list(params)
        self.direction = direction
        self.like = direction.like
        self.manifolds = manifold if isinstance(manifold, (list, tuple)) else [manifold] * len(self.params)
        self.points = [float(t) for t in ts]
        self._at: dict[tuple, tuple] = {}  # (tensor, chunk) -> (point index, slice); absent = at x
        self._fixes: dict[tuple, tuple] = {}  # (tensor, chunk) -> (indices, values) that going back misses

    def _go(self, k: int, c: int, sl: slice, n: int | None) -> torch.Tensor | None:
        """Move chunk c of tensor k to point n (None: x); returns the v it drew, None if already there."""
        m = self._at.get((k, c), (None,))[0]
        if m == n:
            return None
        seg, v, manifold = self.params[k].view(-1)[sl], self.direction.chunk(k, c, sl), self.manifolds[k]
        if m is not None:  # back to x, bit for bit
            manifold.move_(seg, v, -self.points[m])
            if (k, c) in self._fixes:
                idx, values = self._fixes.pop((k, c))
                _words(seg)[idx] = values
            del self._at[(k, c)]
        if n is not None:
            orig = seg.clone()
            manifold.move_(seg, v, self.points[n])
            self._at[(k, c)] = (n, sl)
            bad = _differing_words(manifold.move(seg, v, -self.points[n]), orig)
            if bad.numel():
                self._fixes[(k, c)] = (bad, _words(orig)[bad])
        return v

    def __iter__(self):
        for n, t in enumerate(self.points):
            with torch.no_grad():
                for k in range(len(self.params)):
                    for c, sl in self.direction.bounds(k):
                        self._go(k, c, sl, n)
            yield t

    def chunks(self, k: int):
        """(slice, v chunk) pairs covering tensor k, each chunk moved back to x first."""
        with torch.no_grad():
            for c, sl in self.direction.bounds(k):
                v = self._go(k, c, sl, None)
                yield sl, (self.direction.chunk(k, c, sl) if v is None else v)

    def close(self) -> None:
        """Back to x (what is not there yet)."""
        with torch.no_grad():
            for (k, c), (_, sl) in list(self._at.items()):
                self._go(k, c, sl, None)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@contextmanager
def perturbed(params, direction, t: float, manifold=Euclidean):
    """Within the block, params are at x + t v (s exp(t v)); restored bit for bit on exit."""
    with Walk(params, direction, [t], manifold) as stops:
        for _ in stops:
            yield
