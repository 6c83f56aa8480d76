"""Finite-difference estimators of the directional derivative f'(x; v).

An estimator turns one direction v into a *stencil*: steps t_j and weights w_j
with  delta = sum_j w_j f(x + t_j v)  ~  grad f(x)^T v. The gradient estimate is
then g = mean_k delta_k v_k. The stencil is linear in the values of f, so the
same stencil estimates a Jacobian-vector product J v when f is vector valued.
Step t = 0 is f(x) itself, evaluated once per estimate and shared by all queries.

With D_n = (f(x + mu_n v) - f(x)) / mu_n, Delta_n = D_{n+1} - D_n, N ~ p_n and
F(N) = P(level <= N) (sequences.py):

======== ============================================== ===========================
name     delta                                          evaluations of f
======== ============================================== ===========================
forward  D(mu)                                          1 per query + f(x) once
central  (f(x + mu v) - f(x - mu v)) / (2 mu)           2 per query
p4       D_1 + Delta_N / p_N                            3 per query + f(x) once
                                                        (2 when N = 1)
p3       fair coin: 2 D_1, or 2 Delta_N / p_N           1 or 2 per query + f(x)
p2       D_N + F(N) Delta_N / p_N                       2 per query + f(x) once
                                                        (1 when N = 1)
p1       fair coin: 2 D_N, or 2 F(N) Delta_N / p_N      1 or 2 per query + f(x)
======== ============================================== ===========================

All four telescope the series D_1 + sum_n Delta_n = lim D_n = grad^T v and keep
one random term. The series is cut after K levels (zosci.sequences: mu_{K+1} is
about 1e-4 mu), so exactly E[delta | v] = D_{K+1}, the forward difference at
step mu_{K+1}: the bias is that of a forward difference at 1e-4 mu, whatever mu
(O(mu_{K+1}) against forward's O(mu) and central's O(mu^2)); it vanishes only
as the cut goes to zero, where round-off takes over. p4/p3 start the series at the largest step
(grad^T v = D_1 + sum_n Delta_n); p2/p1 start it at the sampled level,
grad^T v = E[D_N] + sum_n F(n) Delta_n (summation by parts), which saves the
point at mu_1. The coin halves the points per query at the price of variance.
A single point per query cannot be unbiased for every smooth f (a measure on
(0, mu] with the moments of a derivative at 0 does not exist), so two points
sometimes are the floor. Reported counts are the evaluations actually spent.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import torch

from .errors import ConfigError
from .sequences import StepSequence

Stencil = list[tuple[float, float]]  # (step t, weight w)


def _merge(pairs) -> Stencil:
    acc = defaultdict(float)
    for t, w in pairs:
        acc[t] += w
    return [(t, w) for t, w in acc.items() if w != 0.0]


@dataclass
class Estimator:
    """Base: draws a stencil for one query."""

    mu: float = 1e-3

    name = ""
    uses_base = True  # whether some stencil may contain t = 0

    def __post_init__(self):
        if not (isinstance(self.mu, (int, float)) and self.mu > 0):
            raise ConfigError(f"mu: must be a positive number, got {self.mu!r}")

    def stencil(self, generator: torch.Generator) -> Stencil:
        raise NotImplementedError


@dataclass
class Forward(Estimator):
    name = "forward"

    def stencil(self, generator):
        return [(self.mu, 1 / self.mu), (0.0, -1 / self.mu)]


@dataclass
class Central(Estimator):
    name = "central"
    uses_base = False

    def stencil(self, generator):
        return [(self.mu, 0.5 / self.mu), (-self.mu, -0.5 / self.mu)]


@dataclass
class Telescoping(Estimator):
    """Shared machinery of the unbiased family."""

    sequence: str = "geometric"
    ratio: float = 0.5
    tail: float = 1e-4

    coupled = False  # head D_N and tail weight F(N)/p_N, instead of head D_1 and 1/p_N
    coin = False     # keep head or tail with probability 1/2, doubled

    def __post_init__(self):
        super().__post_init__()
        self.steps = StepSequence(self.mu, self.sequence, self.ratio, self.tail)

    def _term(self, n: int, weight: float) -> Stencil:
        """weight * D_n."""
        mu = self.steps.step(n)
        return [(mu, weight / mu), (0.0, -weight / mu)]

    def stencil(self, generator):
        n, p, cdf = self.steps.sample(generator)
        head_level, head, tail = (n, 1.0, cdf / p) if self.coupled else (1, 1.0, 1.0 / p)
        if self.coin:
            u = float(torch.rand((), generator=generator, dtype=torch.float64))
            head, tail = (2.0 * head, 0.0) if u < 0.5 else (0.0, 2.0 * tail)
        pairs = self._term(head_level, head) if head else []
        if tail:
            pairs += self._term(n + 1, tail) + self._term(n, -tail)
        return _merge(pairs)


@dataclass
class P4(Telescoping):
    name = "p4"


@dataclass
class P3(Telescoping):
    name = "p3"
    coin = True


@dataclass
class P2(Telescoping):
    name = "p2"
    coupled = True


@dataclass
class P1(Telescoping):
    name = "p1"
    coupled = True
    coin = True


ESTIMATORS = {cls.name: cls for cls in (Forward, Central, P1, P2, P3, P4)}


def get_estimator(estimator, mu: float = 1e-3, sequence: str = "geometric", **options) -> Estimator:
    """An Estimator from its name (or the instance itself)."""
    if isinstance(estimator, Estimator):
        return estimator
    cls = ESTIMATORS.get(estimator) if isinstance(estimator, str) else None
    if cls is None:
        raise ConfigError(f"estimator: unknown {estimator!r}; choose one of {sorted(ESTIMATORS)}")
    if issubclass(cls, Telescoping):
        return cls(mu=mu, sequence=sequence, **options)
    return cls(mu=mu)
