"""The batched BlackBox through a CFD solver (section 4 of ``python -m zosci.bench hybrid``).

B flow conditions share one mesh-mode vector theta (2K entries, zosci.cfd.adapt.MeshModes on the
xcoarse NACA0012 mesh); row b of the op is theta -> fields (u, v, Cp) at condition b. Per row, a
fixed random cotangent ybar_b; the reference VJP is the core's central-difference estimator
(step 1e-4 per coordinate). At equal solver calls (q per row and backward), three ways to get the
B VJPs:

* batched: ``BlackBox(fn, batched=True)``, each row its own q directions;
* one box per row: B ``BlackBox``es, q directions each (what the CFD-GCN case did before);
* one unbatched box over the (B, 2K) input: the old behaviour for a batch, q directions of
  dimension B * 2K (each query solves every row, so q queries cost B q solves).

Reported per row: relative error ||g - ref|| / ||ref|| and cosine, mean over trials. Then the
wall time of one batched backward (B q solves) serially, and through a process pool of 1 and 2
workers (after a warm-up backward, so each worker has built its solver and JIT-compiled forms).
"""
from __future__ import annotations

import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch

from ..audit import reference_vjp
from ..hybrid import BlackBox

CONDITIONS = [(2.0, 0.3), (-4.0, 0.2), (0.0, 0.4), (4.0, 0.25)]


class ConditionFields:
    """(theta (2K,), condition (aoa, mach)) -> fields (n * 3,): one row's black box (picklable;
    workers build the solver once per token)."""

    def __init__(self, solver, modes):
        from ..solvers.pool import solver_token

        self.solver, self.modes, self.token = solver, modes, solver_token(solver)

    def __call__(self, theta, condition):
        from ..solvers.pool import _solve_with

        aoa, mach = (float(c) for c in condition)
        coords = self.modes.coords_np(np.asarray(theta, dtype=np.float64))
        return _solve_with(self.token, self.solver, {"aoa": aoa, "mach": mach, "coords": coords}).fields[:, :3].ravel()


class _Stacked:
    """The whole (B, 2K) input as one unbatched black box: rows' fields stacked."""

    def __init__(self, fn, conditions):
        self.fn, self.conditions = fn, conditions

    def __call__(self, thetas):
        return np.stack([self.fn(t, c) for t, c in zip(np.asarray(thetas), self.conditions)])


def _errors(g, ref):
    rel = ((g - ref).norm(dim=1) / ref.norm(dim=1)).numpy()
    cos = torch.nn.functional.cosine_similarity(g, ref, dim=1).numpy()
    return rel, cos


def _grad(box, x, ybar, *args):
    """ybar^T J through box at x (ybar reshaped like the output)."""
    xr = x.clone().requires_grad_(True)
    y = box(xr, *args)
    (g,) = torch.autograd.grad(y, xr, ybar.reshape(y.shape))
    return g


def run(solver, modes, queries=(8, 32), trials=4, sampler="sphere", mu=1e-4, seed=0, workers=(1, 2)):
    """Markdown tables of the comparison and the timings."""
    fn = ConditionFields(solver, modes)
    cond = torch.tensor(CONDITIONS, dtype=torch.float64)
    B, d = len(CONDITIONS), modes.dim
    theta = torch.zeros(d, dtype=torch.float64)
    X = theta.expand(B, d).clone()
    n_out = len(fn(theta.numpy(), CONDITIONS[0]))
    ybar = torch.randn(B, n_out, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    ref = torch.stack([reference_vjp(lambda t, c=c: fn(t, c), theta, ybar[b], "central", h=1e-4)
                       for b, c in enumerate(CONDITIONS)])

    lines = [f"| way (sampler {sampler}, forward, mu {mu}) | q per row | solver calls per backward | "
             "rel. error per row (mean) | cosine per row (mean) |", "|---|---|---|---|---|"]
    for q in queries:
        ways = {
            "batched BlackBox": lambda t: _grad(BlackBox(fn, batched=True, sampler=sampler, queries=q, mu=mu,
                                                         numpy_io=True, seed=seed + t), X, ybar, cond),
            "one box per row": lambda t: torch.stack([
                _grad(BlackBox(lambda x, c=c: fn(x, c), sampler=sampler, queries=q, mu=mu, numpy_io=True,
                               seed=seed + 1000 * b + t), theta, ybar[b]) for b, c in enumerate(CONDITIONS)]),
            "one unbatched box over (B, 2K) (old)": lambda t: _grad(
                BlackBox(_Stacked(fn, CONDITIONS), sampler=sampler, queries=q, mu=mu, numpy_io=True,
                         seed=seed + t), X, ybar),
        }
        for name, way in ways.items():
            rel, cos = zip(*[_errors(way(t), ref) for t in range(trials)])
            rel, cos = np.mean(rel, axis=0), np.mean(cos, axis=0)
            lines.append(f"| {name} | {q} | {B * q} | " + ", ".join(f"{r:.3f}" for r in rel) + " | "
                         + ", ".join(f"{c:.3f}" for c in cos) + " |")
    accuracy = "\n".join(lines)

    q = queries[0]
    lines = [f"| executor | batched backward, {B} rows x q={q} = {B * q} solves: wall time (s), median of 3 | "
             "speedup over serial |", "|---|---|---|"]
    times = {}
    for name, make in [("serial (in process)", lambda: None)] + [
            (f"process pool, {w} worker{'s' * (w > 1)}", lambda w=w: ProcessPoolExecutor(w)) for w in workers]:
        pool = make()
        try:
            box = BlackBox(fn, batched=True, sampler=sampler, queries=q, mu=mu, numpy_io=True, executor=pool,
                           seed=seed)
            _grad(box, X, ybar, cond)  # warm-up: workers start, build the solver, compile the forms
            runs = []
            for _ in range(3):
                t0 = time.perf_counter()
                _grad(box, X, ybar, cond)
                runs.append(time.perf_counter() - t0)
            times[name] = float(np.median(runs))
        finally:
            if pool is not None:
                pool.shutdown()
    serial = times["serial (in process)"]
    for name, t in times.items():
        lines.append(f"| {name} | {t:.2f} | {serial / t:.2f}x |")
    return accuracy, "\n".join(lines)

