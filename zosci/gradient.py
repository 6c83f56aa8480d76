"""estimate_gradient: the zeroth-order gradient of a function of one tensor."""
from __future__ import annotations

import torch

from .errors import ConfigError
from .estimators import get_estimator
from .guide import Guide
from .manifolds import get_manifold
from .parallel import evaluate
from .queries import Info, QueryDrawer, run_queries
from .samplers import get_sampler, weighted_sum_tensors


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
                      queries: int = 16, guide: torch.Tensor | Guide | None = None,
                      generator: torch.Generator | None = None, executor=None,
                      sequence: str = "geometric", manifold="euclidean", on_failure: str = "resample",
                      return_info: bool = False):
    """Zeroth-order estimate of grad f(x): g = mean_k delta_k v_k.

    f maps a 1-D float tensor to a scalar; x is 1-D. ``queries`` directions are
    drawn by ``sampler`` and differenced by ``estimator`` with step ``mu``
    (see zosci.samplers and zosci.estimators for the formulas and the
    evaluations each spends); f(x) is evaluated once, when the estimator uses
    it. ``generator`` makes the result bit-for-bit reproducible; ``executor``
    evaluates the queries as one batch.

    DAP's guide: a tensor (fixed), or a zosci.guide.Guide carried across calls
    (the moving average of earlier estimates; this estimate is folded into it).
    Without one, DAP draws sphere directions (zosci.samplers).

    With ``manifold="orthant"`` (x > 0), directions are taken in the
    orthonormal frame of the metric <u, w>_x = sum u_i w_i / x_i^2 and points
    are Exp_x(t x v) = x exp(t v); the result is the Riemannian gradient
    x^2 * grad f (see zosci.orthant). A guide is then in frame coordinates
    (grad f scaled by x), which is what a Guide holds.

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
    source = guide if isinstance(guide, Guide) else None
    a = source.value([x]) if source is not None else (None if guide is None else [guide.detach()])
    drawer = QueryDrawer(sampler, estimator, draw_seed(generator), [x], a, queries)
    point = _Point(f)

    def batch(jobs):
        return evaluate(point, [manifold.move(x, q.direction.part(0), t) for _, q, t in jobs], executor)

    base = _scalar(f(x.clone())) if estimator.uses_base else None
    (info,) = run_queries([drawer], batch, [base], on_failure)
    info.evaluations += estimator.uses_base
    (frame,) = weighted_sum_tensors([q.direction for q in info.kept], [q.delta / len(info.kept) for q in info.kept])
    if source is not None:
        source.update([frame])
    g = manifold.to_tangent(x, frame)
    return (g, info) if return_info else g


__all__ = ["estimate_gradient", "Info"]
