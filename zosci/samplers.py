"""Perturbation samplers: random directions v with E[v v^T] = I.

A direction lives over a list of tensors (the parameters it perturbs), so the
same sampler serves a 1-D vector and a whole network. It is generated from an
integer seed and regenerated on demand, never stored (MeZO's seed trick):
only a few scalars per direction (a norm, an inner product) are kept.

=========== ============================================ ==================
name        v                                            E||v||^2, ||v||
=========== ============================================ ==================
gaussian    z ~ N(0, I)                                  d, random
sphere      sqrt(d) z / ||z||  (uniform on the sphere)   d, constant
rademacher  i.i.d. +-1                                   d, constant
coordinate  sqrt(d) e_i, i uniform, without replacement  d, constant
            within one estimate (d queries = full CGE)
dap         s a/||a|| + (I - a a^T/||a||^2) z, s = +-1   d, random
            (sphere while there is no guide a yet)
=========== ============================================ ==================

Sphere and DAP attain the minimum-variance bound (d-1)||grad f||^2 of the
two-point estimator (Ma & Huang, ICLR 2025): sphere because ||v|| is constant,
DAP because grad^T v = +-||grad|| when the guide a is the gradient. With a guide
at angle phi to the gradient, one DAP query has E||delta v - grad||^2 =
((d-1) + 2 sin^2 phi) ||grad||^2 (first order): between sphere (d-1) and
Gaussian (d+1). DAP's guide comes from zosci.guide.

``weighted_sum`` is the one place where an estimate sum_k w_k v_k is formed.
"""
from __future__ import annotations

import math
import sys
from typing import Sequence

import torch

from .errors import ConfigError

_MASK = (1 << 63) - 1


def mix_seed(*parts: int) -> int:
    """Deterministic 63-bit hash of integers (splitmix64 steps)."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h ^ (int(p) & _MASK)) * 0xBF58476D1CE4E5B9 & ((1 << 64) - 1)
        h ^= h >> 31
    return h & _MASK


CHUNK = 1 << 18  # elements per generated chunk: perturbations stream through this much memory


def _chunk_bounds(n: int):
    return [(c, slice(a, min(a + CHUNK, n))) for c, a in enumerate(range(0, n, CHUNK))]


def _normal(seed: int, k: int, c: int, size: int, like: torch.Tensor) -> torch.Tensor:
    g = torch.Generator(device=like.device).manual_seed(mix_seed(seed, k, c))
    return torch.randn(size, generator=g, dtype=like.dtype, device=like.device)


def _dot(a, b) -> float:
    return float(sum(torch.sum(x.double() * y.double()) for x, y in zip(a, b)))


class Direction:
    """One direction v over a list of tensors, regenerated from its seed.

    v is defined chunk by chunk over each tensor's flat view (CHUNK elements,
    each chunk from its own seed), so in-place work can stream through it."""

    def __init__(self, seed: int, like: Sequence[torch.Tensor]):
        self.seed = seed
        self.like = list(like)
        self.dim = sum(t.numel() for t in self.like)

    def chunk(self, k: int, c: int, sl: slice) -> torch.Tensor:
        """v over tensor k, flat elements sl (chunk number c)."""
        raise NotImplementedError

    def bounds(self, k: int) -> list[tuple[int, slice]]:
        """(chunk number, slice) pairs covering tensor k's flat view."""
        return _chunk_bounds(self.like[k].numel())

    def chunks(self, k: int):
        """(slice, v chunk) pairs covering tensor k's flat view."""
        for c, sl in self.bounds(k):
            yield sl, self.chunk(k, c, sl)

    def part(self, k: int) -> torch.Tensor:
        """v restricted to tensor k (a fresh tensor shaped like like[k])."""
        flat = [v for _, v in self.chunks(k)]
        return (torch.cat(flat) if flat else self.like[k].new_zeros(0)).view(self.like[k].shape)

    def tensors(self) -> list[torch.Tensor]:
        return [self.part(k) for k in range(len(self.like))]

    def flat(self) -> torch.Tensor:
        return torch.cat([p.reshape(-1) for p in self.tensors()])

    def _z_dot(self, others=None) -> float:
        """sum z.z (others None) or sum z.others over all chunks of the Gaussian z."""
        total = 0.0
        for k, t in enumerate(self.like):
            for c, sl in _chunk_bounds(t.numel()):
                z = _normal(self.seed, k, c, sl.stop - sl.start, t).double()
                w = z if others is None else others[k].reshape(-1)[sl].double()
                total += float(z @ w)
        return total


class GaussianDirection(Direction):
    def chunk(self, k, c, sl):
        return _normal(self.seed, k, c, sl.stop - sl.start, self.like[k])


class SphereDirection(Direction):
    def __init__(self, seed, like):
        super().__init__(seed, like)
        self.scale = math.sqrt(self.dim / self._z_dot())

    def chunk(self, k, c, sl):
        return _normal(self.seed, k, c, sl.stop - sl.start, self.like[k]) * self.scale


_SIGNS = {}  # (dtype, device) -> (256, 8) table: row b holds the 8 bits of byte b as -1 / +1


def _signs(seed: int, k: int, c: int, size: int, like: torch.Tensor) -> torch.Tensor:
    """size i.i.d. +-1: 56 random bits per int64 draw, each byte turned into 8 signs by a table lookup
    (about 5x cheaper than one Gaussian per value)."""
    key = (like.dtype, like.device)
    if key not in _SIGNS:
        bits = (torch.arange(256)[:, None] >> torch.arange(8)) & 1
        _SIGNS[key] = (2 * bits - 1).to(like.dtype).to(like.device)
    g = torch.Generator(device=like.device).manual_seed(mix_seed(seed, k, c))
    words = torch.randint(0, 2**56, (-(-size // 56),), generator=g, dtype=torch.int64, device=like.device)
    octets = words.view(torch.uint8).view(-1, 8)  # the 7 low bytes of each word are random, the top one 0
    octets = (octets[:, :7] if sys.byteorder == "little" else octets[:, 1:]).reshape(-1)
    return torch.nn.functional.embedding(octets.long(), _SIGNS[key]).view(-1)[:size]


class RademacherDirection(Direction):
    def chunk(self, k, c, sl):
        return _signs(self.seed, k, c, sl.stop - sl.start, self.like[k])


class CoordinateDirection(Direction):
    """sqrt(d) e_i for a flat coordinate index i."""

    def __init__(self, seed, like, index: int):
        super().__init__(seed, like)
        self.index = index

    def chunk(self, k, c, sl):
        t = self.like[k]
        v = torch.zeros(sl.stop - sl.start, dtype=t.dtype, device=t.device)
        i = self.index - sum(x.numel() for x in self.like[:k]) - sl.start
        if 0 <= i < v.numel():
            v[i] = math.sqrt(self.dim)
        return v


class DAPDirection(Direction):
    """v = s a/||a|| + z - (a^T z / ||a||^2) a, with s = +-1 and z ~ N(0, I)."""

    def __init__(self, seed, like, guide):
        super().__init__(seed, like)
        self.guide = [a.detach() for a in guide]
        norm2 = _dot(self.guide, self.guide)
        if not norm2 > 0:
            raise ValueError("dap: the guide is zero; pass a nonzero guide or use another sampler")
        g = torch.Generator().manual_seed(mix_seed(seed, -1))
        sign = 1.0 if torch.randint(0, 2, (1,), generator=g).item() else -1.0
        self.coef = sign / math.sqrt(norm2) - self._z_dot(self.guide) / norm2

    def chunk(self, k, c, sl):
        t = self.like[k]
        a = self.guide[k].reshape(-1)[sl].to(t.dtype)
        return _normal(self.seed, k, c, sl.stop - sl.start, t) + self.coef * a


def weighted_sum(directions: Sequence[Direction], weights: Sequence[float], k: int):
    """(slice, sum_j w_j v_j over that slice) pairs covering tensor k, chunk by chunk
    (summed in float32 at least, float64 for float64 tensors)."""
    like = directions[0].like[k]
    dtype = torch.promote_types(like.dtype, torch.float32)
    for pieces in zip(*[d.chunks(k) for d in directions]):
        sl = pieces[0][0]
        total = pieces[0][1].to(dtype).mul(float(weights[0]))  # a new tensor: one pass for one query
        for w, (_, v) in zip(weights[1:], pieces[1:]):
            total.add_(v, alpha=float(w))
        yield sl, total


def weighted_sum_tensors(directions: Sequence[Direction], weights: Sequence[float]) -> list[torch.Tensor]:
    """sum_j w_j v_j as one tensor per tensor of the directions (shaped like them)."""
    out = []
    for k, t in enumerate(directions[0].like):
        flat = [piece for _, piece in weighted_sum(directions, weights, k)]
        out.append((torch.cat(flat) if flat else t.new_zeros(0)).to(t.dtype).view(t.shape))
    return out


class Sampler:
    """Draws the direction of query `index` (of `count`) in one estimate."""

    name = ""
    needs_guide = False

    def capacity(self, dim: int) -> float:
        """How many distinct queries one estimate can draw (failures are replaced up to this)."""
        return math.inf

    def draw(self, seed: int, index: int, count: int, like, guide=None) -> Direction:
        raise NotImplementedError

    def __repr__(self):
        return f"{type(self).__name__}()"


class Gaussian(Sampler):
    name = "gaussian"

    def draw(self, seed, index, count, like, guide=None):
        return GaussianDirection(mix_seed(seed, index), like)


class Sphere(Sampler):
    name = "sphere"

    def draw(self, seed, index, count, like, guide=None):
        return SphereDirection(mix_seed(seed, index), like)


class Rademacher(Sampler):
    name = "rademacher"

    def draw(self, seed, index, count, like, guide=None):
        return RademacherDirection(mix_seed(seed, index), like)


class Coordinate(Sampler):
    """Coordinates drawn without replacement: `count = d` queries give DeepZero's CGE."""

    name = "coordinate"

    def capacity(self, dim):
        return dim if dim <= 1 << 22 else math.inf  # a failed coordinate is replaced within its cycle

    def draw(self, seed, index, count, like, guide=None):
        d = sum(t.numel() for t in like)
        cycle, pos = divmod(index, d)
        g = torch.Generator().manual_seed(mix_seed(seed, cycle, 7))
        if d <= 1 << 22:  # without replacement: a random permutation per cycle of d queries
            i = int(torch.randperm(d, generator=g)[pos])
        else:  # too many coordinates to permute: uniform with replacement (same E[v v^T] = I)
            i = int(torch.randint(d, (1,), generator=torch.Generator().manual_seed(mix_seed(seed, index))))
        return CoordinateDirection(mix_seed(seed, index), like, i)


class DAP(Sampler):
    """Directionally aligned perturbation around the guide a (zosci.guide: the
    best gradient information at hand). Before there is any (guide None or zero),
    it draws sphere directions, which reach the same variance bound."""

    name = "dap"
    needs_guide = True

    def draw(self, seed, index, count, like, guide=None):
        if guide is None or _dot(guide, guide) == 0.0:
            return SphereDirection(mix_seed(seed, index), like)
        return DAPDirection(mix_seed(seed, index), like, guide)


SAMPLERS = {cls.name: cls for cls in (Gaussian, Sphere, Rademacher, Coordinate, DAP)}


def get_sampler(sampler) -> Sampler:
    """A Sampler from its name (or the instance itself)."""
    if isinstance(sampler, Sampler):
        return sampler
    try:
        return SAMPLERS[sampler]()
    except (KeyError, TypeError):
        raise ConfigError(f"sampler: unknown {sampler!r}; choose one of {sorted(SAMPLERS)}") from None
