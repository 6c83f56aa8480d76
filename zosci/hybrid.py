"""The hybrid chain rule: autograd through everything, ZO through the black box.

d f(g(x))/dx = (df/dg) est(dg/dx). ``BlackBox(fn)`` wraps a black box
y = fn(x) (numpy or torch in and out, any shapes) as a torch op. Its backward
estimates the vector-Jacobian product from directional derivatives:

    J v_k ~ sum_j w_j fn(x + t_j v_k)        (one stencil per query, y = fn(x) reused)
    ybar^T J ~ mean_k (ybar . J v_k) v_k

The pairs (v_k, J v_k) of a forward are kept: any number of upstream
cotangents (several losses, retain_graph, Jacobian rows) contract with them
without a new query. The queries of one backward run as one batch through the
executor. Failed queries (QueryError, e.g. SolverError) are resampled or
dropped with the estimate reweighted (zosci.queries), counted and logged.

DAP's guide: an exponential moving average (``guide_momentum``, default 0.9)
of this op's previous VJP estimates for inputs of the same shape: training
moves x slowly, so the last estimates are the best gradient information at
hand. The first backward, which has none, samples Gaussian directions.
"""
from __future__ import annotations

import numpy as np
import torch

from .estimators import get_estimator
from .gradient import draw_seed
from .parallel import evaluate
from .queries import QueryDrawer, run_queries
from .samplers import get_sampler


def _as_tensor(y, dtype=torch.float64) -> torch.Tensor:
    if isinstance(y, torch.Tensor):
        return y.detach().to(dtype)
    return torch.as_tensor(np.asarray(y), dtype=dtype)


class _Call:
    """fn on a torch point, returned as float64 tensor (picklable for executors)."""

    def __init__(self, fn, numpy_io: bool):
        self.fn, self.numpy_io = fn, numpy_io

    def __call__(self, x: torch.Tensor):
        return _as_tensor(self.fn(x.numpy() if self.numpy_io else x))


class JVPCache:
    """The (v_k, J v_k) pairs of one forward, drawn at the first backward."""

    def __init__(self, box: "BlackBox", x: torch.Tensor, y: torch.Tensor):
        self.box, self.x, self.y = box, x, y
        self.directions = None  # list of tensors shaped like x
        self.jvps = None        # list of tensors shaped like y
        self.info = None

    def compute(self):
        if self.jvps is None:
            self.directions, self.jvps, self.info = self.box._query(self.x, self.y)
        return self

    def vjp(self, cotangent: torch.Tensor) -> torch.Tensor:
        """ybar^T J ~ mean_k (ybar . J v_k) v_k."""
        self.compute()
        ybar = cotangent.detach().to(torch.float64).reshape(-1)
        g = torch.zeros(self.x.shape, dtype=torch.float64)
        for v, jv in zip(self.directions, self.jvps):
            g += float(ybar @ jv.reshape(-1)) * v.double()
        return g / len(self.jvps)


class _BlackBoxFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, box):
        xd = x.detach().cpu()
        y = box._call(xd)
        cache = JVPCache(box, xd, y)
        box.last = cache
        ctx.cache = cache
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx, ybar):
        cache = ctx.cache
        g = cache.vjp(ybar)
        cache.box._remember(g)
        return g.to(ybar.dtype), None


class BlackBox(torch.nn.Module):
    """y = fn(x) as a differentiable op whose backward is a zeroth-order VJP."""

    def __init__(self, fn, sampler="gaussian", estimator="forward", queries: int = 8, mu: float = 1e-3,
                 executor=None, sequence: str = "geometric", on_failure: str = "resample",
                 guide_momentum: float = 0.9, numpy_io: bool | None = None, seed: int | None = None):
        super().__init__()
        if not (isinstance(queries, int) and queries >= 1):
            raise ValueError(f"queries: must be a positive integer, got {queries!r}")
        self.fn = fn
        self.sampler, self.estimator = get_sampler(sampler), get_estimator(estimator, mu=mu, sequence=sequence)
        self.queries, self.executor, self.on_failure = queries, executor, on_failure
        self.guide_momentum = guide_momentum
        self.numpy_io = numpy_io
        self.generator = torch.Generator().manual_seed(0 if seed is None else seed)
        self.guide = None
        self.last: JVPCache | None = None
        self.evaluations = 0  # calls of fn by backward passes, all time
        self.failed = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _BlackBoxFunction.apply(x, self)

    # internals ---------------------------------------------------------------
    def _caller(self):
        return _Call(self.fn, bool(self.numpy_io))

    def _call(self, x: torch.Tensor) -> torch.Tensor:
        if self.numpy_io is None:  # first call: torch in if fn takes it, else numpy
            try:
                y = _Call(self.fn, False)(x.clone())
                self.numpy_io = False
                return y
            except (TypeError, AttributeError):
                self.numpy_io = True
        return self._caller()(x.clone())

    def _query(self, x: torch.Tensor, y: torch.Tensor):
        sampler, guide = self.sampler, None
        if sampler.needs_guide:
            if self.guide is not None and self.guide.shape == x.shape:
                guide = [self.guide.to(x.dtype)]
            else:
                sampler = get_sampler("gaussian")
        drawer = QueryDrawer(sampler, self.estimator, draw_seed(self.generator), [x], guide, self.queries)
        call = self._caller()

        def batch(jobs):
            return evaluate(call, [x + t * q.direction.part(0) for q, t in jobs], self.executor)

        info = run_queries(drawer, batch, lambda: y.double(), self.queries, self.on_failure)
        if self.estimator.uses_base:
            info.evaluations -= 1  # y = fn(x) comes from the forward, not a new call
        self.evaluations += info.evaluations
        self.failed += info.failed
        return [q.direction.part(0) for q in info.kept], [q.delta for q in info.kept], info

    def _remember(self, g: torch.Tensor) -> None:
        if self.guide is None or self.guide.shape != g.shape:
            self.guide = g.clone()
        else:
            self.guide.mul_(self.guide_momentum).add_(g, alpha=1 - self.guide_momentum)
