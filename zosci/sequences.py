"""Step sequences mu_1 > mu_2 > ... and level laws p_n for the unbiased estimators.

The level law is the variance-optimal one, p_n = (mu_n - mu_{n+1}) / mu_1
(Ma & Huang, NeurIPS 2025), renormalised over the K levels kept:

* geometric: mu_n = mu c^(n-1)  ->  p_n ∝ c^(n-1)     (N ~ Geom)
* zipf:      mu_n = mu / n      ->  p_n ∝ 1/(n(n+1))  (P(N >= n) = 1/n)

The series is cut where mu_{K+1} < mu * tail (default 1e-4), because
finite differences at smaller steps drown in round-off; what is left is the
bias of a difference with step mu_{K+1}, ten thousand times below the
forward estimator's at step mu.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

from .errors import ConfigError

SEQUENCES = ("geometric", "zipf")


@dataclass(frozen=True)
class StepSequence:
    mu: float
    kind: str = "geometric"
    ratio: float = 0.5
    tail: float = 1e-4

    def __post_init__(self):
        if self.kind not in SEQUENCES:
            raise ConfigError(f"sequence: unknown {self.kind!r}; choose one of {list(SEQUENCES)}")
        if not 0 < self.ratio < 1:
            raise ConfigError(f"ratio: must be in (0, 1), got {self.ratio}")
        if not 0 < self.tail < 1:
            raise ConfigError(f"tail: must be in (0, 1), got {self.tail}")
        if not self.mu > 0:
            raise ConfigError(f"mu: must be positive, got {self.mu}")

    def step(self, n: int) -> float:
        """mu_n, n = 1, 2, ..."""
        return self.mu * (self.ratio ** (n - 1) if self.kind == "geometric" else 1.0 / n)

    @cached_property
    def levels(self) -> int:
        """K: the number of levels n = 1..K, with mu_{K+1} >= mu * tail."""
        k = 1
        while self.step(k + 2) >= self.mu * self.tail:
            k += 1
        return k

    @cached_property
    def _law(self) -> tuple[torch.Tensor, torch.Tensor]:
        k = self.levels
        mus = torch.tensor([self.step(n) for n in range(1, k + 2)], dtype=torch.float64)
        p = (mus[:-1] - mus[1:]) / (mus[0] - mus[-1])
        return p, torch.cumsum(p, 0)

    def probabilities(self) -> torch.Tensor:
        """p_n = (mu_n - mu_{n+1}) / (mu_1 - mu_{K+1}), n = 1..K."""
        return self._law[0].clone()

    def sample(self, generator: torch.Generator) -> tuple[int, float, float]:
        """A level N ~ p, its probability p_N and P(level <= N)."""
        p, cdf = self._law
        u = torch.rand((), generator=generator, dtype=torch.float64) * cdf[-1]
        n = min(int(torch.searchsorted(cdf, u, right=True)), len(p) - 1) + 1  # inverse CDF
        return n, float(p[n - 1]), float(cdf[n - 1])
