"""ZOOptimizer: the torch.optim.Optimizer skeleton shared by ZOSGD and ZOAdam.

``step(closure)``: the closure returns the loss of the current parameters
(no backward). For each query the parameters are moved in place to
x + t v (or s exp(t v) on the positive orthant), the closure is called, and the
parameters are restored bit for bit (zosci.perturb); v is regenerated from a
seed, never stored. The estimate in frame coordinates, g = mean_k delta_k v_k,
is formed chunk by chunk (zosci.samplers.CHUNK elements) and handed to
``_update``; so the memory is that of inference plus the optimizer's own state
(momentum, Adam moments) plus a few chunks.

Sampler, estimator, mu, queries and sequence are shared by all parameter
groups (one direction spans every parameter); lr, manifold and the method's
hyperparameters may differ per group. DAP's guide is the optimizer's best
gradient information: the momentum (ZOSGD with momentum), Adam's first moment,
or the previous step's estimate; the first step, which has none, samples
Gaussian directions.
"""
from __future__ import annotations

import torch
from torch.optim import Optimizer

from ..errors import ConfigError, QueryError
from ..estimators import get_estimator
from ..manifolds import get_manifold
from ..perturb import perturbed
from ..queries import QueryDrawer, run_queries
from ..samplers import _dot, get_sampler

_SHARED = ("sampler", "estimator", "mu", "queries", "sequence", "clip", "on_failure")


class ZOOptimizer(Optimizer):
    def __init__(self, params, defaults: dict, seed: int = 0):
        defaults = dict(defaults)
        defaults.setdefault("manifold", "euclidean")
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
        self.last_info = None

    # state -----------------------------------------------------------------
    def state_dict(self):
        state = super().state_dict()
        state["zo_generator"] = self.generator.get_state()
        return state

    def load_state_dict(self, state_dict):
        state_dict = dict(state_dict)
        rng = state_dict.pop("zo_generator", None)
        super().load_state_dict(state_dict)
        if rng is not None:
            self.generator.set_state(rng)

    # the method ------------------------------------------------------------
    def _guide(self, p: torch.Tensor):
        """The gradient information DAP aligns with, or None."""
        return None

    def _prepare(self, p: torch.Tensor, group: dict) -> None:
        """Called once per parameter and step, before its chunks are updated."""

    def _update(self, p: torch.Tensor, sl: slice, g: torch.Tensor, group: dict, manifold) -> None:
        """Update the flat elements sl of p, given the estimate g over them."""
        raise NotImplementedError

    def _params(self):
        return [(p, group, get_manifold(group["manifold"])) for group in self.param_groups
                for p in group["params"]]

    def _sampler_and_guide(self, params):
        guide = [self._guide(p) for p in params]
        if not self.sampler.needs_guide:
            return self.sampler, None
        if any(a is None for a in guide) or _dot(guide, guide) == 0.0:
            return get_sampler("gaussian"), None  # no gradient information yet
        return self.sampler, guide

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
        sampler, guide = self._sampler_and_guide(params)
        seed = int(torch.randint(0, 2**62, (1,), generator=self.generator))
        queries = self.defaults["queries"]
        drawer = QueryDrawer(sampler, self.estimator, seed, params, guide, queries)

        def evaluate_batch(jobs):
            out = []
            for q, t in jobs:
                with perturbed(params, q.direction, t, manifolds):
                    try:
                        out.append(float(closure()))
                    except QueryError as err:
                        out.append(err)
            return out

        info = run_queries(drawer, evaluate_batch, lambda: float(closure()), queries,
                           self.defaults["on_failure"])
        clip = self.defaults["clip"]
        if clip is not None:
            for q in info.kept:
                q.delta = max(-clip, min(clip, q.delta))
        self.last_info = info
        self.last_record = (seed, [(q.index, q.delta) for q in info.kept])
        self.apply_record(self.last_record)
        return info.base

    @torch.no_grad()
    def apply_record(self, record) -> None:
        """Apply the update of a step from its record (seed, [(index, delta), ...]).

        Replaying the records of a run on the initial parameters reproduces its
        parameters and optimizer state bit for bit (MeZO's seed checkpoints)."""
        seed, kept = record
        entries = self._params()
        params = [p for p, _, _ in entries]
        sampler, guide = self._sampler_and_guide(params)
        count = self.defaults["queries"]
        directions = [sampler.draw(seed, index, count, params, guide) for index, _ in kept]
        for k, (p, group, manifold) in enumerate(entries):
            self._prepare(p, group)
            for pieces in zip(*[d.chunks(k) for d in directions]):
                sl = pieces[0][0]
                g = torch.zeros(sl.stop - sl.start, dtype=p.dtype, device=p.device)
                for (_, delta), (_, v) in zip(kept, pieces):
                    g.add_(v, alpha=delta / len(kept))
                self._update(p, sl, g, group, manifold)
