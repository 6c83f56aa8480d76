"""The hybrid chain rule: autograd through everything, ZO through the black box.

d f(g(x))/dx = (df/dg) est(dg/dx). ``BlackBox(fn)`` wraps a black box
y = fn(x) (numpy or torch in and out, any shapes) as a torch op whose backward
estimates the vector-Jacobian product from directional derivatives:

    J v_k ~ delta_k = sum_j w_j fn(x + t_j v_k)    (one stencil per query, fn(x) reused)
    ybar^T J ~ mean_k (ybar . delta_k) v_k

The pairs (v_k, delta_k) of a forward are drawn at its first backward and kept:
any number of upstream cotangents (several losses, retain_graph, Jacobian rows)
contract with them without a new query. The estimate is unbiased up to the
estimator's finite-difference bias (zosci.estimators) and failures (below).

* ``batched=True``: dim 0 of x indexes independent problems and fn takes one
  row. Each row gets its own directions and DAP guide; the queries of all rows
  go to the executor as one batch (the forward's rows too). A row whose forward
  fails raises its QueryError, whose ``rows`` lists every failed row.
* ``jacobian_model``: a control variate. model(x, y), given the point and the
  forward's output y = fn(x) (one row's when batched), returns the linear map
  v -> J_model v: a cheap torch approximation of J. ZO then estimates only
  (J - J_model) v and J_model^T ybar is added exactly (autograd through the
  map):

      ybar^T J ~ ybar^T J_model + mean_k (ybar . (delta_k - J_model v_k)) v_k,

  unbiased for any model, with less variance the closer J_model is to J.
* Extra arguments ``box(x, *args)`` are passed to fn unchanged (row by row when
  batched) and are not differentiated: flow conditions, say.
* DAP's guide is zosci.guide's moving average of each row's earlier VJP
  estimates; ``keys`` name the rows' problems when batches are reshuffled.
* Failed queries (QueryError, e.g. SolverError) are resampled and counted per
  backward (``box.last.failed``); see zosci.queries for what that does to the
  expectation. A failure of the forward itself raises.

The op is sound under autograd's rules: x and fn(x) are copied (in-place changes
of the input or the output cannot reach the estimate), the output and gradient
have the input's device and dtype, and differentiating the gradient again
(create_graph=True, then backward) raises instead of giving a silent zero.
"""
from __future__ import annotations

import numpy as np
import torch

from .errors import QueryError
from .estimators import get_estimator
from .gradient import draw_seed
from .guide import Guide
from .parallel import evaluate
from .queries import QueryDrawer, run_queries
from .samplers import get_sampler, weighted_sum_tensors


def _as_tensor(y, dtype=torch.float64) -> torch.Tensor:
    if isinstance(y, torch.Tensor):
        return y.detach().to("cpu", dtype)
    return torch.as_tensor(np.asarray(y), dtype=dtype)


class _Call:
    """fn(x, *args) on a CPU float64 point, as a float64 tensor (picklable for executors)."""

    def __init__(self, fn, numpy_io: bool):
        self.fn, self.numpy_io = fn, numpy_io

    def __call__(self, job):
        x, args = job
        return _as_tensor(self.fn(x.numpy() if self.numpy_io else x, *args))


class JVPCache:
    """One forward: its rows, outputs, and the (v_k, delta_k) pairs drawn at the first backward."""

    def __init__(self, box: "BlackBox", rows: torch.Tensor, ys: list, args: list, keys: list):
        self.box, self.rows, self.ys, self.args, self.keys = box, rows, ys, args, keys
        self.directions = None  # per row: list of v_k (row-shaped)
        self.residuals = None   # per row: list of delta_k - J_model v_k (output-shaped)
        self.models = None      # per row: v -> J_model v (jacobian_model only)
        self.infos = None       # per row: zosci.queries.Info

    @property
    def evaluations(self) -> int:
        """Calls of fn spent by this forward's backward (0 before it)."""
        return sum(i.evaluations for i in self.infos) if self.infos else 0

    @property
    def failed(self) -> int:
        return sum(i.failed for i in self.infos) if self.infos else 0

    def compute(self):
        if self.infos is None:
            self.box._query(self)
        return self

    def vjp(self, cotangent: torch.Tensor) -> torch.Tensor:
        """ybar^T J (rows stacked when batched), float64 on the CPU."""
        self.compute()
        ybar = cotangent.detach().to("cpu", torch.float64).reshape(len(self.rows), -1)
        out = []
        for b, (row, vs, rs) in enumerate(zip(self.rows, self.directions, self.residuals)):
            weights = [float(ybar[b] @ r.reshape(-1)) / len(rs) for r in rs]
            (g,) = weighted_sum_tensors(vs, weights)
            if self.models is not None:
                g = g + _model_vjp(self.models[b], row, ybar[b])
            out.append(g)
        return torch.stack(out)


def _model_vjp(jv, row: torch.Tensor, ybar: torch.Tensor) -> torch.Tensor:
    """J_model^T ybar by autograd through the linear map v -> J_model v."""
    with torch.enable_grad():
        v = torch.zeros_like(row, requires_grad=True)
        out = jv(v)
        (g,) = torch.autograd.grad(out, v, ybar.reshape(out.shape).to(out.dtype), allow_unused=True)
    return torch.zeros_like(row) if g is None else g.to(row.dtype)


def _residual(jv, q) -> torch.Tensor:
    """delta - J_model v: what ZO must estimate."""
    with torch.no_grad():
        model_jv = jv(q.direction.part(0))
    return q.delta - _as_tensor(model_jv).reshape(q.delta.shape)


class _NoSecondOrder(torch.autograd.Function):
    """Identity on a VJP estimate whose own backward raises: create_graph=True through a
    black box gives a gradient that errors when differentiated, never a silent zero."""

    @staticmethod
    def forward(ctx, g, anchor):
        return g.clone()

    @staticmethod
    def backward(ctx, _):
        raise RuntimeError("BlackBox: second derivatives through a black box are not estimated; "
                           "the gradient of its VJP (create_graph=True, then backward) does not exist here. "
                           "Differentiate the black box once, or estimate its Hessian-vector products yourself")


class _BlackBoxFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, box, keys, *args):
        rows = x.detach().to("cpu", torch.float64, copy=True)  # our own copy of the point
        if not box.batched:
            rows, args = rows[None], [args]
        else:
            args = [tuple(a[b] for a in args) for b in range(len(rows))]
        ys = box._evaluate([(row, a) for row, a in zip(rows, args)])
        cache = JVPCache(box, rows, ys, args, keys)
        box.last = ctx.cache = cache
        y = torch.stack(ys) if box.batched else ys[0]
        return y.to(device=x.device, dtype=x.dtype, copy=True)  # never the cached base

    @staticmethod
    def backward(ctx, ybar):
        cache = ctx.cache
        with torch.no_grad():
            g = cache.vjp(ybar)
        cache.box._remember(cache, g)
        g = (g if cache.box.batched else g[0]).to(device=ybar.device, dtype=ybar.dtype)
        if torch.is_grad_enabled():  # create_graph=True
            g = _NoSecondOrder.apply(g, torch.ones((), requires_grad=True))
        return (g, None, None) + (None,) * len(cache.args[0])


class BlackBox(torch.nn.Module):
    """y = fn(x) as a differentiable op whose backward is a zeroth-order VJP (module docstring)."""

    def __init__(self, fn, sampler="gaussian", estimator="forward", queries: int = 8, mu: float = 1e-3,
                 executor=None, sequence: str = "geometric", on_failure: str = "resample", batched: bool = False,
                 jacobian_model=None, guide_beta: float = 0.9, numpy_io: bool | None = None,
                 seed: int | None = None):
        super().__init__()
        if not (isinstance(queries, int) and queries >= 1):
            raise ValueError(f"queries: must be a positive integer, got {queries!r}")
        if jacobian_model is not None and not callable(jacobian_model):
            raise ValueError("jacobian_model: must be a callable model(x, y) -> (v -> J_model v), or None")
        self.fn = fn
        self.sampler, self.estimator = get_sampler(sampler), get_estimator(estimator, mu=mu, sequence=sequence)
        self.queries, self.executor, self.on_failure = queries, executor, on_failure
        self.batched, self.jacobian_model = batched, jacobian_model
        self.guide_beta = guide_beta
        Guide(guide_beta)  # validates guide_beta
        self.guides: dict = {}  # row key -> Guide (DAP only)
        self.numpy_io = numpy_io
        self.generator = torch.Generator().manual_seed(0 if seed is None else seed)
        self.last: JVPCache | None = None
        self.evaluations = 0  # calls of fn by backward passes, all time
        self.failed = 0

    def forward(self, x: torch.Tensor, *args, keys=None) -> torch.Tensor:
        """fn(x, *args); batched: fn(x[b], *(a[b] for a in args)) stacked. keys: one per row."""
        if not x.is_floating_point():
            raise TypeError(f"x: BlackBox needs a floating-point input, got {x.dtype}")
        if any(isinstance(a, torch.Tensor) and a.requires_grad for a in args):
            raise ValueError("args: BlackBox does not differentiate its extra arguments; pass them detached "
                             "(or make them part of x)")
        n = len(x) if self.batched else 1
        if self.batched and (x.dim() < 1 or any(len(a) != n for a in args)):
            raise ValueError(f"x: batched=True needs dim 0 of x and of every extra argument to index the rows "
                             f"(x has shape {tuple(x.shape)})")
        keys = list(range(n)) if keys is None else list(keys)
        if len(keys) != n:
            raise ValueError(f"keys: need one per row ({n}), got {len(keys)}")
        return _BlackBoxFunction.apply(x, self, keys, *args)

    # checkpoints: nn.Module's extra state ----------------------------------
    def get_extra_state(self):
        return {"generator": self.generator.get_state(), "evaluations": self.evaluations, "failed": self.failed,
                "guides": {k: g.state_dict() for k, g in self.guides.items()}}

    def set_extra_state(self, state):
        self.generator.set_state(state["generator"])
        self.evaluations, self.failed = state["evaluations"], state["failed"]
        self.guides = {}
        for k, s in state["guides"].items():
            self.guides[k] = Guide(self.guide_beta)
            self.guides[k].load_state_dict(s)

    # internals -------------------------------------------------------------
    def _evaluate(self, jobs) -> list[torch.Tensor]:
        """fn at each (point, args), through the executor. A failure of the forward raises its
        QueryError, with ``rows`` = the indices of every row that failed."""
        first = []
        if self.numpy_io is None:  # first call: torch in if fn takes it, else numpy
            try:
                first = [_Call(self.fn, False)(jobs[0])]
                self.numpy_io = False
            except (TypeError, AttributeError):
                self.numpy_io = True
        out = first + evaluate(_Call(self.fn, self.numpy_io), jobs[len(first):], self.executor)
        failed = [b for b, y in enumerate(out) if isinstance(y, QueryError)]
        if failed:
            err = out[failed[0]]
            err.rows = failed
            raise err
        return out

    def _query(self, cache: JVPCache) -> None:
        drawers = []
        for row, key in zip(cache.rows, cache.keys):
            guide = self.guides.get(key) if self.sampler.needs_guide else None
            drawers.append(QueryDrawer(self.sampler, self.estimator, draw_seed(self.generator), [row],
                                       None if guide is None else guide.value([row]), self.queries))
        call = _Call(self.fn, self.numpy_io)

        def batch(jobs):
            points = [(cache.rows[i] + t * q.direction.part(0), cache.args[i]) for i, q, t in jobs]
            return evaluate(call, points, self.executor)

        bases = [y if self.estimator.uses_base else None for y in cache.ys]
        infos = run_queries(drawers, batch, bases, self.on_failure)
        if self.jacobian_model is not None:
            cache.models = [self.jacobian_model(row, y) for row, y in zip(cache.rows, cache.ys)]
        cache.directions = [[q.direction for q in info.kept] for info in infos]
        cache.residuals = [[q.delta if cache.models is None else _residual(cache.models[b], q) for q in info.kept]
                           for b, info in enumerate(infos)]
        cache.infos = infos
        self.evaluations += cache.evaluations
        self.failed += cache.failed

    def _remember(self, cache: JVPCache, g: torch.Tensor) -> None:
        if self.sampler.needs_guide:
            for key, gb in zip(cache.keys, g):
                self.guides.setdefault(key, Guide(self.guide_beta)).update([gb])
