"""Benchmark: CFD-GCN test MSE per method (GCN alone, fixed coarse mesh, ZO-adapted mesh per sampler), both splits.

    python -m zosci.bench cfd_gcn [--quick] [--epochs N] [--cache DIR] [--split S] [--methods M,...]

Full: CFD-GCN meshes (coarse solver mesh NACA0012_xcoarse, 353 nodes; target NACA0012_coarse,
1843 nodes), grid 7 aoa x 6 Mach. --quick: gmsh meshes (161 / 355 nodes), grid 3 x 2, 2 epochs.
Prints one table row per (split, method): final test MSE, mean wall seconds per epoch, coarse
solves spent by the ZO backward passes.
"""
from __future__ import annotations

import argparse
import copy
import logging
import time

from ..cfd.gcn_case import SCHEMA, Problem, Trainer

METHODS = [("gcn", None), ("fixed", None), ("zo", "gaussian"), ("zo", "sphere"), ("zo", "dap")]


def config(quick: bool, epochs: int | None, cache: str):
    raw = {"kind": "cfd_gcn", "name": "bench", "seed": 0,
           "data": {"n_aoa": 7, "n_mach": 6, "cache_dir": cache},
           "train": {"epochs": 5, "batch": 4}, "zo": {"queries": 2}}
    if quick:
        raw["mesh"] = {"source": "naca"}
        raw["data"].update(n_aoa=3, n_mach=2, test_fraction=0.34, mach_min=0.7)
        raw["train"]["epochs"] = 2
    if epochs:
        raw["train"]["epochs"] = epochs
    return SCHEMA.validate(raw)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m zosci.bench cfd_gcn", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny gmsh meshes and grid, 2 epochs")
    ap.add_argument("--epochs", type=int, default=None, help="override the number of epochs")
    ap.add_argument("--cache", default="runs/cfd_gcn_cache", help="fine-solution cache folder")
    ap.add_argument("--split", choices=["interpolation", "extrapolation"], default=None, help="one split only")
    names = [m if s is None else f"{m}/{s}" for m, s in METHODS]
    ap.add_argument("--methods", default=",".join(names), help=f"comma-separated subset of {','.join(names)}")
    args = ap.parse_args(argv)
    chosen = args.methods.split(",")
    if not set(chosen) <= set(names):
        ap.error(f"--methods: unknown {sorted(set(chosen) - set(names))}; choose from {','.join(names)}")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    log = logging.getLogger("bench.cfd_gcn")
    cfg = config(args.quick, args.epochs, args.cache)
    t_all = time.perf_counter()
    rows = []
    for split in [args.split] if args.split else ["interpolation", "extrapolation"]:
        c = copy.deepcopy(cfg)
        c["data"]["split"] = split
        prob = Problem(c, log)
        for method, sampler in METHODS:
            if (method if sampler is None else f"{method}/{sampler}") not in chosen:
                continue
            tr = Trainer(prob, c, method, sampler)
            secs = []
            for _ in range(c["train"]["epochs"]):
                t0 = time.perf_counter()
                tr.train_epoch()
                secs.append(time.perf_counter() - t0)
            mse, failed = tr.evaluate(prob.test)
            name = method if sampler is None else f"zo/{sampler}"
            rows.append((split, name, mse, sum(secs) / len(secs), tr.evaluations, tr.displacement(), failed))
            log.info("%s %s: test MSE %.4g, %.2f s/epoch", split, name, mse, rows[-1][3])
    print(f"\nepochs {cfg['train']['epochs']}, coarse {len(prob.coarse.points)} nodes, fine {len(prob.fine.points)} "
          f"nodes, train/test conditions (last split) {len(prob.train)}/{len(prob.test)}")
    print(f"| split | method | test MSE | s/epoch | ZO solves | mean displacement | test solves failed |")
    print("|---|---|---|---|---|---|---|")
    for split, name, mse, sec, ev, disp, failed in rows:
        print(f"| {split} | {name} | {mse:.4g} | {sec:.2f} | {ev} | {disp:.2e} | {failed} |")
    print(f"\ntotal wall time {time.perf_counter() - t_all:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
