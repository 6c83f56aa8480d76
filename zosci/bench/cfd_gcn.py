"""Benchmark: CFD-GCN as the paper ran it, test MSE per method on both splits, several seeds.

    python -m zosci.bench cfd_gcn [--quick] [--epochs N] [--seeds S] [--split S] [--methods M,...]
                                  [--workers W] [--cache DIR] [--out DIR]

Meshes: the CFD-GCN benchmark's NACA0012 xcoarse (353 nodes, the solver's) and fine (6684 nodes,
the targets'); targets from zosci's potential solver on the fine mesh (cached). Grid and splits of
Belbute-Peres et al. (ICML 2020): aoa -10..10 by 1 degree; interpolation trains at Mach 0.2, 0.3,
0.35, 0.4, 0.5, 0.55, 0.6, 0.7 and tests at 0.25, 0.45, 0.65; generalization trains at 0.2-0.5 and
tests at 0.55-0.8. Conditions whose fine or coarse solve fails are listed and left out for every
method. Rows, each over --seeds seeds (mean +- std of the final test MSE):

* upsampled: the coarse solution on the fixed coarse mesh, upsampled (no learning);
* gcn: the GCN alone; fixed: CFD-GCN on the fixed coarse mesh;
* zo/SAMPLER[+model]: CFD-GCN whose coarse node positions are learned through the solver by the
  batched BlackBox (gaussian or dap directions; +model: with the node-carried Jacobian model as a
  control variate), queries on --workers processes.

Plus s/epoch, total time and ZO solves per epoch, and test-MSE curves per split (PNG in --out).
--audit N: ZO against a reference as far as 2 cores allow (the paper used SU2's adjoint): along a
zo/gaussian training run, at N points one epoch apart, the cosine between each sampler's hybrid
VJP of the coarse node positions for one train condition and the central-difference reference
(2 x 706 coarse solves per point), mean +- std over 4 estimates.
The full run (the paper's 21 aoa x 11 or 13 Mach per split, 3 seeds, 16 epochs) takes about 90 minutes
on 2 cores with the two splits run at once (--split interpolation / generalization in two processes);
--quick uses gmsh meshes, 3 aoa x 3 Mach per split, 2 epochs, 2 seeds (a smoke run of a minute or two).
Per-seed curves and the test conditions a zo row loses (coarse solve failed on its adapted mesh) go to
--out/results.json.
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from pathlib import Path

import numpy as np

from ..cfd.gcn_case import SCHEMA, Problem, Trainer
from ..plots import line_plot

METHODS = ["upsampled", "gcn", "fixed", "zo/gaussian", "zo/dap", "zo/gaussian+model", "zo/dap+model"]


QUICK_MACHS = {"interpolation": ([0.2, 0.3], [0.25]), "generalization": ([0.2, 0.25], [0.3])}


def config(quick: bool, epochs: int | None, cache: str, workers: int, split: str):
    raw = {"kind": "cfd_gcn", "name": "bench", "seed": 0, "data": {"cache_dir": cache, "split": split},
           "train": {"epochs": 16, "batch": 4}, "zo": {"queries": 2, "workers": workers}}
    if quick:
        raw["mesh"] = {"source": "naca"}
        train, test = QUICK_MACHS[split]
        raw["data"].update(aoa_step=10.0, train_mach=train, test_mach=test)
        raw["train"]["epochs"] = 2
    if epochs:
        raw["train"]["epochs"] = epochs
    return SCHEMA.validate(raw)


def left_out(failed) -> str:
    """'M 0.4: aoa -10 -9 9 10; M 0.45: ...' from [(aoa, mach, why), ...]."""
    by_mach: dict = {}
    for a, m, _ in failed:
        by_mach.setdefault(float(m), []).append(f"{a:g}")
    return "; ".join(f"M {m:g}: aoa {' '.join(a)}" for m, a in sorted(by_mach.items())) or "none"


def train_one(prob, cfg, name, seed, pool):
    """(test MSE per epoch, seconds per epoch, ZO solves, test conditions left out per epoch) of one method
    and seed. A zo row's test condition is left out of its MSE when the coarse solve on the adapted mesh
    fails there (counted, so that rows are compared on the same conditions or the difference is seen)."""
    if name == "upsampled":
        return [prob.upsampled_mse(prob.test)], [0.0], 0, [0]
    c = copy.deepcopy(cfg)
    c["seed"] = seed
    method, _, sampler = name.partition("/")
    sampler, _, model = sampler.partition("+")
    if model:
        c["zo"]["jacobian_model"] = "node_carried"
    tr = Trainer(prob, c, method, sampler or None, executor=pool)
    curve, secs, lost = [], [], []
    for _ in range(c["train"]["epochs"]):
        t0 = time.perf_counter()
        tr.train_epoch()
        secs.append(time.perf_counter() - t0)
        mse, failed = tr.evaluate(prob.test)
        curve.append(mse)
        lost.append(failed)
    return curve, secs, tr.evaluations, lost


def audit_rows(prob, cfg, points: int, trials: int = 4):
    """Markdown rows: cosine(hybrid VJP, central reference) per sampler at `points` training points."""
    import torch

    from ..audit import audit, reference_vjp
    from ..cfd.gcn_case import CoarseSolve

    tr = Trainer(prob, cfg, "zo", "gaussian")
    i = int(prob.train[0])
    solve = CoarseSolve(prob.solver, prob.coarse.points, prob.h)
    fn = lambda theta: solve(theta, prob.conditions[i]).ravel()  # noqa: E731
    samplers = ["gaussian", "sphere", "dap"]
    lines = [f"| epoch | " + " | ".join(samplers) + " |", "|---|" + "---|" * len(samplers)]
    for point in range(points):
        theta = tr.theta.detach().clone()
        y = torch.as_tensor(fn(theta.numpy())).requires_grad_(True)
        pred = tr.predict(i, y.reshape(-1, 3), tr.coords().detach())
        (ybar,) = torch.autograd.grad(torch.mean((pred - prob.targets[i]) ** 2), y)
        ref = reference_vjp(fn, theta, ybar, "central", h=1e-3)
        cells = []
        for sampler in samplers:
            (row,) = audit(fn, theta, ybar, reference=ref, queries=(cfg["zo"]["queries"],), trials=trials,
                           sampler=sampler, mu=cfg["zo"]["mu"], numpy_io=True)
            cells.append(f"{row.cosine:.3f} +- {row.cosine_std:.3f}")
        lines.append(f"| {tr.epoch} | " + " | ".join(cells) + " |")
        if point + 1 < points:
            tr.train_epoch()
    return lines


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m zosci.bench cfd_gcn", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="gmsh meshes, 3 x 3 conditions, 2 epochs, 2 seeds")
    ap.add_argument("--epochs", type=int, default=None, help="epochs per run (default 16; quick 2)")
    ap.add_argument("--seeds", type=int, default=None, help="seeds per method (default 3; quick 2)")
    ap.add_argument("--split", choices=["interpolation", "generalization"], default=None, help="one split only")
    ap.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {','.join(METHODS)}")
    ap.add_argument("--workers", type=int, default=2, help="processes for the ZO queries (default 2)")
    ap.add_argument("--cache", default="runs/cfd_gcn_cache", help="fine-solution cache folder")
    ap.add_argument("--out", default="runs/bench-cfd-gcn", help="folder for the curves (PNG)")
    ap.add_argument("--audit", type=int, default=0, help="audit points one epoch apart (0: none)")
    args = ap.parse_args(argv)
    chosen = args.methods.split(",")
    if not set(chosen) <= set(METHODS):
        ap.error(f"--methods: unknown {sorted(set(chosen) - set(METHODS))}; choose from {','.join(METHODS)}")
    seeds = args.seeds or (2 if args.quick else 3)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    log = logging.getLogger("bench.cfd_gcn")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    rows, notes, audit_md, results = [], [], [], {}
    with ProcessPoolExecutor(args.workers) if args.workers > 1 else nullcontext() as pool:
        for split in [args.split] if args.split else ["interpolation", "generalization"]:
            c = cfg = config(args.quick, args.epochs, args.cache, args.workers, split)
            prob = Problem(c, log)
            notes.append(f"{split}: {len(prob.train)} train / {len(prob.test)} test conditions; left out "
                         f"({len(prob.failed)}, reasons in the log above): " + left_out(prob.failed))
            curves = {}
            for name in chosen:
                runs = [train_one(prob, c, name, seed, pool) for seed in range(seeds)]
                final = np.array([r[0][-1] for r in runs])
                secs = np.mean([np.mean(r[1]) for r in runs])
                solves = np.mean([r[2] for r in runs]) / c["train"]["epochs"]
                lost = max(r[3][-1] for r in runs)
                rows.append((split, name, final.mean(), final.std(), secs, secs * c["train"]["epochs"], solves, lost))
                results.setdefault(split, {})[name] = [{"seed": seed, "test_mse": r[0], "seconds": r[1],
                                                        "solves": r[2], "test_left_out": r[3]}
                                                       for seed, r in enumerate(runs)]
                (out / "results.json").write_text(json.dumps(results))
                if name != "upsampled":
                    curves[name] = (list(range(1, c["train"]["epochs"] + 1)), list(np.mean([r[0] for r in runs], 0)))
                log.info("%s %s: test MSE %.4g +- %.2g over %d seeds (per seed %s; test conditions left out %s)",
                         split, name, final.mean(), final.std(), seeds, " ".join(f"{f:.6g}" for f in final),
                         " ".join(str(r[3][-1]) for r in runs))
            if args.audit and split == "interpolation":
                audit_md = audit_rows(prob, c, args.audit)
            if curves:
                line_plot(out / f"test_mse_{split}.png", curves, xlabel="epoch", ylabel="test MSE (u, v, Cp)",
                          title=f"CFD-GCN, {split} split (mean of {seeds} seeds)", logy=True)
    print(f"\nepochs {cfg['train']['epochs']}, seeds {seeds}, coarse {len(prob.coarse.points)} nodes, fine "
          f"{len(prob.fine.points)} nodes, ZO queries per condition {cfg['zo']['queries']} on {args.workers} workers")
    for n in notes:
        print(n)
    print("| split | method | test MSE (mean +- std) | s/epoch | total s per run | ZO solves per epoch | "
          "test conditions left out (coarse solve failed on the adapted mesh; max over seeds) |")
    print("|---|---|---|---|---|---|---|")
    for split, name, mean, std, sec, total, solves, lost in rows:
        print(f"| {split} | {name} | {mean:.4g} +- {std:.2g} | {sec:.2f} | {total:.0f} | {solves:.0f} | {lost} |")
    if audit_md:
        print(f"\ncosine(hybrid VJP of the coarse node positions, central differences), q = {cfg['zo']['queries']}, "
              f"one train condition of the interpolation split")
        print("\n".join(audit_md))
    print(f"\nper seed: {out}/results.json; curves: {out}/test_mse_*.png; total wall time {time.perf_counter() - t_all:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
