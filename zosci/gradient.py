"""estimate_gradient: the zeroth-order gradient of a function of one tensor."""
from __future__ import annotations

import torch

from .errors import ConfigError
from .estimators import get_estimator
from .manifolds import get_manifold
from .parallel import evaluate
from .queries import Info, QueryDrawer, run_queries
from .samplers import get_sampler


class _Point:
    """f at x moved along a query direction (picklable for process pools)."""

    def __init__(self, f):
        self.f = f

    def __call__(self, x):
        return _scalar(self.f(x))


def _scalar(y) -> float:
    if isinstance(y, torch.Tensor):
        if y.numel() != 1:
            raise ValueError(f"f must return a scalar, got a tensor of shape {tuple(y.shape)}")
        return float(y.detach())
    return float(y)


def draw_seed(generator: torch.Generator | None) -> int:
    """A 62-bit seed from the generator (or from torch's global RNG)."""
    return int(torch.randint(0, 2**62, (1,), generator=generator))


def estimate_gradient(f, x: torch.Tensor, sampler="gaussian", estimator="forward", mu: float = 1e-3,
                      queries: int = 16, guide: torch.Tensor | None = None,
                      generator: torch.Generator | None = None, executor=None,
                      sequence: str = "geometric", manifold="euclidean", on_failure: str = "resample",
                      pilot_queries: int = 1, return_info: bool = False):
    """Zeroth-order estimate of grad f(x): g = mean_k delta_k v_k.

    f maps a 1-D float tensor to a scalar; x is 1-D. ``queries`` directions are
    drawn by ``sampler`` and differenced by ``estimator`` with step ``mu``
    (see zosci.samplers and zosci.estimators for the formulas and the
    evaluations each spends). ``generator`` makes the result bit-for-bit
    reproducible; ``executor`` evaluates the queries as one batch.

    DAP without a ``guide`` first spends a pilot: a forward-difference Gaussian
    estimate from ``pilot_queries`` directions (1 + pilot_queries
    evaluations, counted in info.evaluations), used as the guide.

    With ``manifold="orthant"`` (x > 0), directions are taken in the
    orthonormal frame of the metric <u, w>_x = sum u_i w_i / x_i^2 and points
    are Exp_x(t x v) = x exp(t v); the result is the Riemannian gradient
    x^2 * grad f (see zosci.orthant).

    Returns g (shape and dtype of x), or (g, info) with ``return_info=True``;
    info.evaluations counts the calls of f actually made.
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 1 or not x.is_floating_point():
        raise ConfigError("x: must be a 1-D floating-point tensor")
    if not (isinstance(queries, int) and queries >= 1):
        raise ConfigError(f"queries: must be a positive integer, got {queries!r}")
    sampler, estimator = get_sampler(sampler), get_estimator(estimator, mu=mu, sequence=sequence)
    manifold = get_manifold(manifold)
    manifold.check(x)
    x = x.detach()
    spent = 0
    if sampler.needs_guide and guide is None:
        guide, pilot = estimate_gradient(f, x, "gaussian", "forward", mu, pilot_queries, None, generator,
                                         executor, sequence, manifold, on_failure, return_info=True)
        guide = guide if manifold.name == "euclidean" else guide / x  # back to frame coordinates
        spent = pilot.evaluations
    seed = draw_seed(generator)
    drawer = QueryDrawer(sampler, estimator, seed, [x], None if guide is None else [guide.detach()], queries)
    point = _Point(f)

    def batch(jobs):
        return evaluate(point, [manifold.move(x, q.direction.part(0), t) for q, t in jobs], executor)

    info = run_queries(drawer, batch, lambda: _scalar(f(x.clone())), queries, on_failure)
    info.evaluations += spent
    g = torch.zeros_like(x, dtype=torch.float64)
    for q in info.kept:
        g += q.delta * q.direction.part(0).double()
    g = manifold.to_tangent(x, (g / len(info.kept)).to(x.dtype))
    return (g, info) if return_info else g


__all__ = ["estimate_gradient", "Info"]
