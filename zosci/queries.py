"""Draw queries (direction + stencil), evaluate them, combine them.

A query is a direction v and a stencil [(t_j, w_j)]; its directional
derivative estimate is delta = sum_j w_j f(x + t_j v) (f(x) at t = 0, shared).
This module is the one place where queries are drawn, counted, failed and
resampled, for vectors (estimate_gradient), parameters perturbed in place (the
optimizers) and vector-valued black boxes (BlackBox).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import torch

from .errors import QueryError
from .estimators import Estimator, Stencil
from .samplers import Direction, Sampler, mix_seed

log = logging.getLogger("zosci")


@dataclass
class Query:
    index: int
    direction: Direction
    stencil: Stencil
    delta: object = None  # sum_j w_j f(x + t_j v): a float or a tensor


@dataclass
class Info:
    """What one estimate spent: evaluations of f, queries kept, failed, redrawn."""

    evaluations: int = 0
    queries: int = 0
    failed: int = 0
    resampled: int = 0
    base: object = None  # f(x) when it was evaluated
    kept: list = field(default_factory=list)  # the queries that entered the estimate


class QueryDrawer:
    """Deterministic stream of queries for one estimate (seeded)."""

    def __init__(self, sampler: Sampler, estimator: Estimator, seed: int, like, guide=None, count: int = 1):
        self.sampler, self.estimator, self.seed = sampler, estimator, seed
        self.like, self.guide, self.count = list(like), guide, count
        self.next_index = 0

    def draw(self) -> Query:
        k = self.next_index
        self.next_index += 1
        gen = torch.Generator().manual_seed(mix_seed(self.seed, k, 11))
        direction = self.sampler.draw(self.seed, k, self.count, self.like, self.guide)
        return Query(k, direction, self.estimator.stencil(gen))


def _finite(delta) -> bool:
    if isinstance(delta, torch.Tensor):
        return bool(torch.isfinite(delta).all())
    return math.isfinite(delta)


def combine(query: Query, values: dict, base) -> object:
    total = 0.0
    for t, w in query.stencil:
        total = total + w * (base if t == 0.0 else values[t])
    return total


def run_queries(drawer: QueryDrawer, evaluate_batch, evaluate_base, queries: int,
                on_failure: str = "resample", max_rounds: int = 3) -> Info:
    """Draw `queries` queries, evaluate them in batches, resample or drop failures.

    evaluate_batch([(query, t), ...]) -> list of values or QueryError;
    evaluate_base() -> f(x) (a failure there propagates: nothing to estimate from).
    """
    if on_failure not in ("resample", "drop"):
        raise ValueError(f"on_failure: {on_failure!r}; choose 'resample' or 'drop'")
    info = Info()
    pending = [drawer.draw() for _ in range(queries)]
    if drawer.estimator.uses_base:
        info.base = evaluate_base()
        info.evaluations += 1
    for round_ in range(max_rounds + 1):
        jobs = [(q, t) for q in pending for t, _ in q.stencil if t != 0.0]
        results = evaluate_batch(jobs)
        info.evaluations += len(jobs)
        values: dict[int, dict] = {}
        failed = set()
        for (q, t), r in zip(jobs, results):
            if isinstance(r, QueryError):
                failed.add(q.index)
                log.warning("query %d failed at step %g: %s", q.index, t, r)
            else:
                values.setdefault(q.index, {})[t] = r
        for q in pending:
            if q.index not in failed:
                q.delta = combine(q, values.get(q.index, {}), info.base)
                if not _finite(q.delta):
                    log.warning("query %d gave a non-finite directional derivative", q.index)
                    failed.add(q.index)
            if q.index in failed:
                info.failed += 1
            else:
                info.kept.append(q)
        if not failed or on_failure == "drop" or round_ == max_rounds:
            break
        pending = [drawer.draw() for _ in failed]
        info.resampled += len(pending)
    info.queries = len(info.kept)
    if info.failed:
        log.warning("%d of %d queries failed (%s); the estimate averages the %d kept",
                    info.failed, info.failed + info.queries, on_failure, info.queries)
    if not info.kept:
        raise QueryError(f"all {info.failed} queries failed; reduce mu or check the black box")
    return info
