"""ZOOptimizer: the torch.optim.Optimizer skeleton shared by ZOSGD and ZOAdam.

``step(closure)``: the closure returns the loss of the current parameters
(no backward). For each query the parameters walk in place through the points
x + t v of its stencil (s exp(t v) on the positive orthant; two-sided: +mu v,
-2 mu v, +mu v as in MeZO), the closure is called at each, and the parameters
are restored bit for bit (zosci.perturb); v is regenerated from a seed, never
stored. The estimate in frame coordinates, g = mean_k delta_k v_k,
is formed chunk by chunk (zosci.samplers.CHUNK elements) and handed to
``_update``, each chunk as soon as the last query's walk has brought it back
to x (that query's v is not drawn again: a two-sided step draws v 3 times);
so the memory is that of inference plus the optimizer's own state (momentum,
Adam moments) plus a few chunks.

Sampler, estimator, mu, queries and sequence are shared by all parameter
groups (one direction spans every parameter); lr, manifold and the method's
hyperparameters may differ per group. DAP's guide is zosci.guide's moving
average of the previous steps' estimates (``guide_beta``), kept only when the
sampler is DAP; the first step, which has none, draws sphere directions.
"""
from __future__ import annotations

from itertools import groupby

import torch
from torch.optim import Optimizer

from ..errors import ConfigError, QueryError
from ..estimators import get_estimator
from ..manifolds import get_manifold
from ..perturb import Walk
from ..queries import QueryDrawer, run_queries
from ..guide import Guide
from ..samplers import get_sampler, weighted_sum

_SHARED = ("sampler", "estimator", "mu", "queries", "sequence", "clip", "on_failure", "guide_beta")


class ZOOptimizer(Optimizer):
    def __init__(self, params, defaults: dict, seed: int = 0):
        defaults = dict(defaults)
        defaults.setdefault("manifold", "euclidean")
        defaults.setdefault("guide_beta", 0.9)
        super().__init__(params, defaults)
        for group in self.param_groups:
            for key in _SHARED:
                if group[key] != defaults[key]:
                    raise ConfigError(f"{key}: is shared by all parameter groups (one direction spans "
                                      f"every parameter); set it once in the optimizer's arguments")
            group["manifold"] = get_manifold(group["manifold"]).name
            for p in group["params"]:
                get_manifold(group["manifold"]).check(p.detach(), "params")
        if not (isinstance(defaults["queries"], int) and defaults["queries"] >= 1):
            raise ConfigError(f"queries: must be a positive integer, got {defaults['queries']!r}")
        if defaults["clip"] is not None and not defaults["clip"] > 0:
            raise ConfigError(f"clip: must be positive or None, got {defaults['clip']!r}")
        self.sampler = get_sampler(defaults["sampler"])
        self.estimator = get_estimator(defaults["estimator"], mu=defaults["mu"], sequence=defaults["sequence"])
        self.generator = torch.Generator().manual_seed(seed)
        self.guide = Guide(defaults["guide_beta"]) if self.sampler.needs_guide else None
        self.last_info = None

    # state -----------------------------------------------------------------
    def state_dict(self):
        state = super().state_dict()
        state["zo_generator"] = self.generator.get_state()
        if self.guide is not None:
            state["zo_guide"] = self.guide.state_dict()
        return state

    def load_state_dict(self, state_dict):
        state_dict = dict(state_dict)
        rng = state_dict.pop("zo_generator", None)
        guide = state_dict.pop("zo_guide", None)
        super().load_state_dict(state_dict)
        if rng is not None:
            self.generator.set_state(rng)
        if guide is not None and self.guide is not None:
            self.guide.load_state_dict(guide)

    # the method ------------------------------------------------------------
    def _prepare(self, p: torch.Tensor, group: dict) -> None:
        """Called once per parameter and step, before its chunks are updated."""

    def _update(self, p: torch.Tensor, sl: slice, g: torch.Tensor, group: dict, manifold) -> None:
        """Update the flat elements sl of p, given the estimate g over them."""
        raise NotImplementedError

    def _params(self):
        return [(p, group, get_manifold(group["manifold"])) for group in self.param_groups
                for p in group["params"]]

    def _guide(self, params):
        return None if self.guide is None else self.guide.value(params)

    @torch.no_grad()
    def step(self, closure):
        """One ZO step; returns f at the current parameters (None if not evaluated).

        The step's update is also kept as ``last_record`` = (seed, [(query index,
        delta), ...]): a few numbers from which ``apply_record`` redoes it exactly."""
        if closure is None:
            raise ConfigError("closure: zeroth-order optimizers need step(closure), "
                              "where closure() returns the loss (no backward)")
        entries = self._params()
        params = [p for p, _, _ in entries]
        manifolds = [m for _, _, m in entries]
        seed = int(torch.randint(0, 2**62, (1,), generator=self.generator))
        drawer = QueryDrawer(self.sampler, self.estimator, seed, params, self._guide(params), self.defaults["queries"])

        last = []  # [(query index, Walk)] of the query evaluated last, left out for the update to bring home

        def evaluate_batch(jobs):
            out = []
            for _, same_query in groupby(jobs, key=lambda job: id(job[1])):  # one walk through its points
                same_query = list(same_query)
                for _, earlier in last:
                    earlier.close()
                query = same_query[0][1]
                last[:] = [(query.index, Walk(params, query.direction, [t for _, _, t in same_query], manifolds))]
                for _ in last[0][1]:
                    try:
                        out.append(float(closure()))
                    except QueryError as err:
                        out.append(err)
            return out

        try:
            base = float(closure()) if self.estimator.uses_base else None
            (info,) = run_queries([drawer], evaluate_batch, [base], self.defaults["on_failure"])
            info.evaluations += self.estimator.uses_base
            clip = self.defaults["clip"]
            if clip is not None:
                for q in info.kept:
                    q.delta = max(-clip, min(clip, q.delta))
            self.last_info = info
            self.last_record = (seed, [(q.index, q.delta) for q in info.kept])
            self._apply(self.last_record, *last)
        finally:
            for _, walk in last:
                walk.close()
        return info.base

    @torch.no_grad()
    def apply_record(self, record) -> None:
        """Apply the update of a step from its record (seed, [(index, delta), ...]).

        Replaying the records of a run on the initial parameters reproduces its
        parameters and optimizer state bit for bit (MeZO's seed checkpoints)."""
        self._apply(record)

    def _apply(self, record, last: tuple[int, Walk] | None = None) -> None:
        """The update with g = mean_k delta_k v_k (the method's _update), chunk by chunk.

        last: (query index, walk) of the step's last query, its walk still out at
        its last point; if that query was kept, its v comes from the walk's
        return leg (one draw of v fewer a step) and every chunk is back at x
        before it is updated."""
        seed, kept = record
        if last is not None and all(index != last[0] for index, _ in kept):
            last[1].close()  # its query failed: home first, the update draws the others
        entries = self._params()
        params = [p for p, _, _ in entries]
        count = self.defaults["queries"]
        directions = [last[1] if last is not None and index == last[0]
                      else self.sampler.draw(seed, index, count, params, self._guide(params)) for index, _ in kept]
        weights = [delta / len(kept) for _, delta in kept]
        if self.guide is not None:
            self.guide.begin(params)
        for k, (p, group, manifold) in enumerate(entries):
            self._prepare(p, group)
            for sl, g in weighted_sum(directions, weights, k):
                if self.guide is not None:
                    self.guide.update_chunk(k, sl, g)
                self._update(p, sl, g, group, manifold)
        if self.guide is not None:
            self.guide.end()
