"""Hybrid ZO through a CFD solver: VJP audit and mesh adaptation at equal solver-call budgets.

    python -m zosci.bench hybrid [--quick] [--budget N] [--modes K] [--floor-budget N] [--section PATH] [--batched]

Meshes: the CFD-GCN NACA0012 xcoarse (coarse, moved) and fine (target) meshes,
potential flow at the subsonic conditions (aoa 2, M 0.3) and (aoa -4, M 0.2),
fields u, v, Cp, theta = 2 x 16 Laplacian-mode amplitudes (zosci.adapt.MeshModes, boundary "slide":
airfoil nodes slide along a spline through the original airfoil nodes, trailing edge fixed, far-field
nodes along the circle). Feasible meshes: every cell keeps >= MIN_AREA of its initial area and an
angle >= MIN_ANGLE degrees (backtracking for Adam methods, penalty for CMA-ES/Powell). Every method
uses the same theta space, feasibility test and solver-call budget.
1. Audit: cosine(ZO estimate, central-difference reference) of the solver VJP
   ybar^T d fields / d theta, ybar = dL/dfields at theta = 0, per sampler and queries.
2. Adaptation: the total loss reached with the same number of solver calls by
   Adam + ZO (forward estimator, 8 queries, lr LR) per sampler, Adam + central-difference
   gradients (same lr), CMA-ES (cma, sigma0 0.1 and 0.3) and Powell (scipy); infeasible points (a cell below
   min_area_ratio of its area) get a penalty without a solve. Reported loss: at
   the returned theta (ZO/central: last iterate; CMA-ES/Powell: best evaluated).
3. Floor (--floor-budget N): ZO gaussian and CMA-ES (its better sigma0 in 2.) again with N solver calls, so that
   the target can be read against the lowest loss any run found (if that is above half of
   CMA-ES's loss at the budget, no method tried reaches the target).
4. Batched (--batched, alone): the batched BlackBox against one box per row and one unbatched box
   over the whole batch, at equal solver calls, and its backward's wall time on 1 and 2 workers
   (zosci.bench.batched).
--modes K sets the theta space (2K entries; up to the number of movable nodes - 1, which is the
full node space).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from ..cfd.adapt import AdaptationLoss, MeshModes, adam_step, backtrack, feasible, fine_targets
from ..audit import audit, reference_vjp

MESHES = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "meshes"
CONDITIONS = [(2.0, 0.3), (-4.0, 0.2)]
COLUMNS = [0, 1, 2]
MIN_AREA = 0.05      # backtracking floor on area / initial area ...
MIN_ANGLE = 5.0      # ... plus a minimum cell angle (degrees)
MODES = 16
BOUNDARY = "slide"   # airfoil nodes slide along the airfoil spline (TE fixed), far-field nodes along the circle
LR = 0.1             # Adam lr for ZO and central differences
SIGMAS = (0.1, 0.3)  # CMA-ES sigma0 values tried


class _Budget(Exception):
    pass


def setup(modes_k=None, boundary=None):
    from ..solvers import Mesh, PotentialFlow

    coarse = Mesh.read(MESHES / "NACA0012_xcoarse.su2")
    fine = Mesh.read(MESHES / "NACA0012_fine.su2")
    targets = fine_targets(PotentialFlow(fine), CONDITIONS, COLUMNS)
    return coarse, fine, targets, MeshModes(coarse, modes_k or MODES, boundary or BOUNDARY), PotentialFlow(coarse)


def make_loss(ctx, **kw):
    coarse, fine, targets, modes, solver = ctx
    return AdaptationLoss(solver, modes, fine.points, targets, CONDITIONS, COLUMNS, **kw)


def audit_table(ctx, queries, trials):
    loss = make_loss(ctx)
    modes = ctx[3]
    fn = loss.fns[0]
    theta = torch.zeros(modes.dim, dtype=torch.float64)
    y = torch.as_tensor(fn(theta.numpy())).requires_grad_(True)
    nodes, lam = loss.interp.weights(modes.coords(theta))
    l = ((((y[nodes] * lam[..., None]).sum(1) - loss.targets[0]) ** 2) / loss.scale).mean()
    (ybar,) = torch.autograd.grad(l, y)
    ref = reference_vjp(fn, theta, ybar, "central", h=1e-4)
    rows = []
    for sampler, estimator in [("gaussian", "forward"), ("sphere", "forward"), ("rademacher", "forward"),
                               ("coordinate", "forward"), ("dap", "forward"), ("gaussian", "p3")]:
        res = audit(fn, theta, ybar, reference=ref, queries=queries, trials=trials, sampler=sampler,
                    estimator=estimator, mu=1e-4, numpy_io=True)
        rows.append((f"{sampler}/{estimator}", res))
    return rows


def run_zo(ctx, budget, sampler, queries=8, lr=LR, seed=0):
    loss = make_loss(ctx, sampler=sampler, queries=queries, seed=seed)
    theta = torch.zeros(ctx[3].dim, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([theta], lr=lr)
    per_step = len(CONDITIONS) * (queries + 1)
    while loss.solver_calls + per_step <= budget:
        adam_step(loss, theta, opt, MIN_AREA, MIN_ANGLE)
    return theta.detach(), loss.solver_calls


def run_central(ctx, budget, lr=LR, h=1e-3):
    loss = make_loss(ctx)
    modes = ctx[3]
    theta = torch.zeros(modes.dim, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([theta], lr=lr)
    per_step = 2 * modes.dim * len(CONDITIONS)
    while loss.solver_calls + per_step <= budget:
        x = theta.detach().numpy()
        g = np.zeros(modes.dim)
        for i in range(modes.dim):
            e = np.zeros(modes.dim)
            e[i] = h
            g[i] = (loss.value(x + e).sum() - loss.value(x - e).sum()) / (2 * h)
        theta.grad = torch.as_tensor(g)
        old = theta.detach().clone()
        opt.step()
        with torch.no_grad():
            theta.copy_(backtrack(modes, old, theta.detach() - old, MIN_AREA, min_angle=MIN_ANGLE)[0])
    return theta.detach(), loss.solver_calls


class _Objective:
    """Scalar total loss for derivative-free optimizers; penalty (no solve) on infeasible meshes."""

    def __init__(self, ctx, budget):
        self.loss, self.modes, self.budget = make_loss(ctx), ctx[3], budget
        self.best, self.best_x, self.base = np.inf, None, None

    def __call__(self, x):
        x = np.asarray(x, dtype=np.float64)
        if not feasible(self.modes, x, MIN_AREA, MIN_ANGLE):
            return 10.0 * (1 + max(0.0, MIN_AREA - self.modes.area_ratio(x)))
        if self.loss.solver_calls + len(CONDITIONS) > self.budget:
            raise _Budget
        v = float(self.loss.value(x).sum())
        if v < self.best:
            self.best, self.best_x = v, x.copy()
        return v


def run_cma(ctx, budget, sigma=0.1, seed=0):
    import cma

    obj = _Objective(ctx, budget)
    es = cma.CMAEvolutionStrategy(np.zeros(ctx[3].dim), sigma, {"seed": seed + 1, "verbose": -9})
    try:
        while not es.stop():
            xs = es.ask()
            es.tell(xs, [obj(x) for x in xs])
    except _Budget:
        pass
    return torch.as_tensor(obj.best_x), obj.loss.solver_calls


def run_powell(ctx, budget):
    from scipy.optimize import minimize

    obj = _Objective(ctx, budget)
    try:
        minimize(obj, np.zeros(ctx[3].dim), method="Powell", options={"maxfev": 10 * budget, "xtol": 1e-4})
    except _Budget:
        pass
    return torch.as_tensor(obj.best_x), obj.loss.solver_calls


def measure(ctx, name, fn):
    """Run one method fn() -> (theta, calls); (loss at theta, calls, seconds, min area ratio, min angle)."""
    t = time.time()
    theta, calls = fn()
    final = float(make_loss(ctx).value(theta).sum())
    sec = time.time() - t
    print(f"  {name}: loss {final:.5g} ({calls} calls, {sec:.0f} s)", flush=True)
    return final, calls, sec, ctx[3].area_ratio(theta), ctx[3].min_angle(theta)


def batched_section(args):
    from . import batched

    ctx = setup(args.modes)
    queries, trials = ((8,), 2) if args.quick else ((8, 32), 4)
    t0 = time.time()
    accuracy, timing = batched.run(ctx[4], ctx[3], queries=queries, trials=trials)
    text = (f"### 4. Batched BlackBox ({len(batched.CONDITIONS)} conditions {batched.CONDITIONS}, theta dim "
            f"{ctx[3].dim}, reference: central differences, {trials} trials)\n\n{accuracy}\n\n{timing}\n\n"
            f"({time.time() - t0:.0f} s)\n")
    print(text, flush=True)
    if args.section:
        Path(args.section).write_text(text)
    return 0


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m zosci.bench hybrid", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small budget and fewer audit trials (~2 min)")
    p.add_argument("--budget", type=int, default=None, help="solver calls per adaptation method (default 400; quick 120)")
    p.add_argument("--modes", type=int, default=MODES, help=f"Laplacian modes K, theta has 2K entries (default {MODES})")
    p.add_argument("--floor-budget", type=int, default=0,
                   help="also run ZO gaussian and CMA-ES with this many solver calls (section 3; 0: skip)")
    p.add_argument("--section", default=None, help="also write the results as a markdown section to this file")
    p.add_argument("--batched", action="store_true",
                   help="run only section 4: the batched BlackBox against one box per row (zosci.bench.batched)")
    args = p.parse_args(argv)
    if args.batched:
        return batched_section(args)
    budget = args.budget or (120 if args.quick else 400)
    queries, trials = ((4, 16), 3) if args.quick else ((4, 16, 32), 6)
    t0 = time.time()
    ctx = setup(args.modes)
    modes = ctx[3]
    out = [f"coarse {ctx[0]}, fine {ctx[1]}, conditions (aoa, M) {CONDITIONS}, fields u, v, Cp, "
           f"theta dim {modes.dim} ({modes.K} Laplacian modes, boundary nodes {BOUNDARY}), feasibility: "
           f"area ratio >= {MIN_AREA}, min angle >= {MIN_ANGLE} deg, Adam lr {LR}"]

    audits = audit_table(ctx, queries, trials)
    lines = ["| sampler/estimator | " + " | ".join(f"q={q}" for q in queries) + " |",
             "|---|" + "---|" * len(queries)]
    for name, rows in audits:
        lines.append(f"| {name} | " + " | ".join(f"{r.cosine:.3f} ± {r.cosine_std:.3f}" for r in rows) + " |")
    audit_md = "\n".join(lines)
    print("\n1. cosine(ZO VJP, central-difference reference), w.r.t. theta, xcoarse mesh, "
          f"{trials} trials\n{audit_md}", flush=True)

    base = float(make_loss(ctx).value(np.zeros(modes.dim)).sum())
    methods = {f"ZO {s} (Adam, q=8)": (lambda s=s: run_zo(ctx, budget, s))
               for s in ("gaussian", "sphere", "rademacher", "coordinate", "dap")}
    methods["central-difference GD (Adam)"] = lambda: run_central(ctx, budget)
    for sig in SIGMAS:
        methods[f"CMA-ES (sigma0 {sig})"] = lambda sig=sig: run_cma(ctx, budget, sigma=sig)
    methods["Powell (scipy)"] = lambda: run_powell(ctx, budget)
    results = {name: measure(ctx, name, fn) for name, fn in methods.items()}
    lines = [f"| method | loss (initial {base:.5g}) | reduction | solver calls | min area ratio | min angle (deg) | time (s) |",
             "|---|---|---|---|---|---|---|"]
    for name, (final, calls, sec, ratio, angle) in results.items():
        lines.append(f"| {name} | {final:.5g} | {100 * (1 - final / base):.1f}% | {calls} | {ratio:.2f} | {angle:.1f} "
                     f"| {sec:.0f} |")
    adapt_md = "\n".join(lines)
    zo_best = min((v[0], k) for k, v in results.items() if k.startswith("ZO"))
    cma = min(v[0] for k, v in results.items() if k.startswith("CMA-ES"))
    verdict = (f"Target (best ZO loss <= CMA-ES loss / 2): {'met' if zo_best[0] <= cma / 2 else 'NOT met'}; "
               f"best ZO ({zo_best[1]}) {zo_best[0]:.5g} vs best CMA-ES {cma:.5g}, ratio {zo_best[0] / cma:.3f}. "
               f"Methods whose step costs more than the budget (central differences: {2 * modes.dim * len(CONDITIONS)} "
               f"calls per step) show 0 calls.")
    print(f"\n2. mesh adaptation, budget {budget} solver calls per method\n{adapt_md}\n{verdict}", flush=True)
    floor_md = ""
    if args.floor_budget:
        sig = min(SIGMAS, key=lambda s: results[f"CMA-ES (sigma0 {s})"][0])  # CMA-ES's better sigma0 at the budget
        floor = {f"ZO gaussian (Adam, q=8), {args.floor_budget} calls": lambda: run_zo(ctx, args.floor_budget, "gaussian"),
                 f"CMA-ES (sigma0 {sig}), {args.floor_budget} calls": lambda: run_cma(ctx, args.floor_budget, sigma=sig)}
        lines = ["| method | loss | solver calls | time (s) |", "|---|---|---|---|"]
        for name, fn in floor.items():
            results[name] = final, calls, sec, _, _ = measure(ctx, name, fn)
            lines.append(f"| {name} | {final:.5g} | {calls} | {sec:.0f} |")
        lowest = min((v[0], k) for k, v in results.items())
        reach = "below" if lowest[0] <= cma / 2 else "above"
        floor_md = (f"### 3. Floor: {args.floor_budget} solver calls\n\n" + "\n".join(lines) +
                    f"\n\nLowest loss found by any run: {lowest[0]:.5g} ({lowest[1]}), {reach} the target "
                    f"{cma / 2:.5g} (half of CMA-ES's loss at {budget} calls).\n\n")
        print(f"\n3. floor\n{floor_md}", flush=True)

    cmd = "python -m zosci.bench hybrid" + (" --quick" if args.quick else "") + \
          (f" --budget {args.budget}" if args.budget else "") + (f" --modes {args.modes}" if args.modes != MODES else "") + \
          (f" --floor-budget {args.floor_budget}" if args.floor_budget else "")
    section = (f"## Hybrid ZO through a CFD solver (mesh adaptation)\n\nCommand: `{cmd}` "
               f"({time.time() - t0:.0f} s on this machine, serial solves).\n\n{out[0]}.\n\n"
               f"### 1. VJP audit: cosine(estimate, central-difference reference), {trials} trials\n\n{audit_md}\n\n"
               f"### 2. Mesh adaptation at {budget} solver calls per method\n\n{adapt_md}\n\n{verdict}\n\n{floor_md}")
    if args.section:
        Path(args.section).write_text(section)
        print(f"\nwrote {args.section}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
