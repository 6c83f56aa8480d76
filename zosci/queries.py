"""Draw queries (direction + stencil), evaluate them, combine them.

A query is a direction v and a stencil [(t_j, w_j)]; its directional
derivative estimate is delta = sum_j w_j f(x + t_j v) (f(x) at t = 0, given
once per estimate). This module is the one place where queries are drawn,
counted, failed and resampled, for vectors (estimate_gradient), parameters
perturbed in place (the optimizers) and the rows of a vector-valued black box
(BlackBox); the queries of all estimates of one call go to the evaluator as one
batch.

Failures. A query fails when an evaluation raises QueryError (a solver that did
not converge) or its delta is not finite. ``on_failure="resample"`` replaces it
by a fresh direction (up to ``max_rounds`` rounds, and within the sampler's
capacity: the coordinate sampler replaces a failed coordinate by an unused one
of the same cycle, never by a repeat); ``"drop"`` leaves it out. Either way the
estimate is the mean over the queries kept, so its expectation is
E[v v^T | success] grad f, not grad f: unbiased when failure does not depend on
the direction, biased towards the directions that succeed when it does
(tests/test_estimators.py measures that bias against this formula). Failures
are counted per estimate in Info.
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
        capacity = sampler.capacity(sum(t.numel() for t in self.like))
        # replacements stay within the last cycle of a sampler with finite capacity
        self.limit = capacity if math.isinf(capacity) else math.ceil(count / capacity) * capacity
        self.next_index = 0

    def draw(self) -> Query | None:
        """The next query, or None when the sampler has no distinct one left."""
        k = self.next_index
        if k >= self.limit:
            return None
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


def run_queries(drawers: list[QueryDrawer], evaluate_batch, bases: list, on_failure: str = "resample",
                max_rounds: int = 3) -> list[Info]:
    """Draw each drawer's `count` queries, evaluate all in batches, resample or drop failures.

    evaluate_batch([(estimate index, query, t), ...]) -> list of values or QueryError;
    bases[i] is f(x) of estimate i (None when its estimator never uses it). Returns
    one Info per drawer; evaluations count the perturbed points only.
    """
    if on_failure not in ("resample", "drop"):
        raise ValueError(f"on_failure: {on_failure!r}; choose 'resample' or 'drop'")
    infos = [Info(base=b) for b in bases]
    pending = [[q for q in (d.draw() for _ in range(d.count)) if q is not None] for d in drawers]
    for round_ in range(max_rounds + 1):
        jobs = [(i, q, t) for i, qs in enumerate(pending) for q in qs for t, _ in q.stencil if t != 0.0]
        results = evaluate_batch(jobs)
        values: dict[tuple, dict] = {}
        failed = set()
        for (i, q, t), r in zip(jobs, results):
            infos[i].evaluations += 1
            if isinstance(r, QueryError):
                failed.add((i, q.index))
                log.warning("query %d failed at step %g: %s", q.index, t, r)
            else:
                values.setdefault((i, q.index), {})[t] = r
        retry = [[] for _ in drawers]
        for i, qs in enumerate(pending):
            for q in qs:
                if (i, q.index) not in failed:
                    q.delta = combine(q, values.get((i, q.index), {}), infos[i].base)
                    if not _finite(q.delta):
                        log.warning("query %d gave a non-finite directional derivative", q.index)
                        failed.add((i, q.index))
                if (i, q.index) in failed:
                    infos[i].failed += 1
                    if on_failure == "resample" and round_ < max_rounds:
                        replacement = drawers[i].draw()
                        if replacement is not None:
                            retry[i].append(replacement)
                            infos[i].resampled += 1
                else:
                    infos[i].kept.append(q)
        pending = retry
        if not any(pending):
            break
    for info in infos:
        info.queries = len(info.kept)
        if info.failed:
            log.warning("%d of %d queries failed (%s); the estimate averages the %d kept",
                        info.failed, info.failed + info.queries, on_failure, info.queries)
        if not info.kept:
            raise QueryError(f"all {info.failed} queries failed; reduce mu or check the black box")
    return infos
