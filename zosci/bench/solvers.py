"""Benchmark of the CFD black boxes: `python -m zosci.bench solvers [--quick] [--md FILE]`.

Measures (1) seconds per solve on the CFD-GCN xcoarse/coarse/fine meshes (generated
NACA0012 meshes if the data folder is missing) for both solvers, cold (construct +
build + first solve, JIT cache warm) and warm (later solves, new aoa); (2) the wrapper's
overhead against bare dolfinx calls on the same compiled problem; (3) the speedup of a
batch of 16 perturbed solves on 2 SolverPool workers against 1.
"""
import argparse
import os
import platform
import time

import numpy as np

MESH_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data", "meshes")


def _meshes():
    from zosci.solvers import Mesh, naca_mesh

    names = ("xcoarse", "coarse", "fine")
    if os.path.isdir(MESH_DIR):
        return {n: Mesh.read(os.path.join(MESH_DIR, f"NACA0012_{n}.su2")) for n in names}
    return {n: naca_mesh("0012", n_airfoil=k) for n, k in zip(names, (20, 40, 100))}


def _perturbed(mesh, n, seed=0, amp=2e-3):
    """n smooth random displacements of the interior nodes near the airfoil."""
    rng = np.random.default_rng(seed)
    x = mesh.points
    w = np.exp(-np.sum((x - [0.5, 0.0]) ** 2, axis=1) / 0.1) * (mesh.node_type() == 0)
    return [x + amp * rng.standard_normal(2) * w[:, None] for _ in range(n)]


def time_solves(meshes, n_warm):
    from zosci.solvers import NavierStokes, PotentialFlow

    rows = []
    cases = [("potential", PotentialFlow, dict(aoa=2.0, mach=0.5), dict(aoa=3.0, mach=0.5)),
             ("navier-stokes", NavierStokes, dict(aoa=4.0, reynolds=100.0), dict(aoa=3.0, reynolds=100.0))]
    for label, cls, first, later in cases:
        for name, mesh in meshes.items():
            t0 = time.perf_counter()
            s = cls(mesh)
            s.solve(**first)
            cold = time.perf_counter() - t0
            times = []
            for k in range(n_warm):
                kw = dict(later, aoa=later["aoa"] + 0.5 * (k % 2))
                t0 = time.perf_counter()
                s.solve(**kw)
                times.append(time.perf_counter() - t0)
            rows.append((label, name, len(mesh.points), cold, float(np.median(times))))
    return rows


def overhead(mesh, n):
    """Median seconds: wrapper solve vs the same dolfinx calls made directly (same coords sequence)."""
    from zosci.solvers import NavierStokes, PotentialFlow

    coords = _perturbed(mesh, 2, seed=1)
    out = []
    # Navier-Stokes: warm Newton solves alternating between two node positions
    s = NavierStokes(mesh)
    s.solve(aoa=4.0, reynolds=100.0)
    b = s.built
    wrap, bare = [], []
    for k in range(n):
        c = coords[k % 2]
        t0 = time.perf_counter()
        s.solve(aoa=4.0, reynolds=100.0, coords=c)
        wrap.append(time.perf_counter() - t0)
    start = b.w.x.array.copy()
    for k in range(n):
        c = coords[k % 2]
        t0 = time.perf_counter()
        b.dmesh.dm.geometry.x[:, :2] = c[b.dmesh.node_of_geom]
        b.w.x.array[:] = start
        b.newton.solve(b.w)
        start = b.w.x.array.copy()
        bare.append(time.perf_counter() - t0)
    out.append(("navier-stokes", float(np.median(wrap)), float(np.median(bare))))
    # potential flow, M = 0: the two linear solves that fix Gamma
    s = PotentialFlow(mesh)
    s.solve(aoa=2.0)
    b = s.built
    wrap, bare = [], []
    for k in range(n):
        t0 = time.perf_counter()
        s.solve(aoa=2.0, coords=coords[k % 2])
        wrap.append(time.perf_counter() - t0)
    for k in range(n):
        t0 = time.perf_counter()
        b.dmesh.dm.geometry.x[:, :2] = coords[k % 2][b.dmesh.node_of_geom]
        ca, sa = np.cos(np.radians(2.0)), np.sin(np.radians(2.0))
        b.psi_D.interpolate(lambda x: x[0] * ca + x[1] * sa)
        sols = []
        for g in (0.0, 1.0):
            b.psi.x.array[:] = 0.0
            b.gamma.value = g
            b.newton.solve(b.psi)
            sols.append(b.psi.x.array.copy())
        bare.append(time.perf_counter() - t0)
    out.append(("potential (M=0)", float(np.median(wrap)), float(np.median(bare))))
    return out


def batch_speedup(mesh, n_batch=16):
    """Seconds for n_batch perturbed full-potential solves (M=0.5) on 1 and on 2 SolverPool workers."""
    from zosci.solvers import PotentialFlow, SolverPool, solve_batch

    solver = PotentialFlow(mesh)
    kws = [dict(aoa=2.0, mach=0.5, coords=c) for c in _perturbed(mesh, n_batch, seed=2)]
    res = {}
    for workers in (1, 2):
        with SolverPool(solver, max_workers=workers) as pool:
            solve_batch(solver, kws[:2 * workers], executor=pool)  # start workers, build solvers
            t0 = time.perf_counter()
            out = solve_batch(solver, kws, executor=pool, errors="raise")
            res[workers] = time.perf_counter() - t0
    assert len(out) == n_batch
    return res


def _spin(n):
    s = 0
    for i in range(n):
        s += i
    return s


def available_parallelism(n=10_000_000):
    """Speedup of 2 CPU-bound pure-Python tasks on 2 processes vs 1: the ceiling for the batch speedup."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    res = {}
    for workers in (1, 2):
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as ex:
            list(ex.map(_spin, [1000] * workers))
            t0 = time.perf_counter()
            list(ex.map(_spin, [n] * 2))
            res[workers] = time.perf_counter() - t0
    return res[1] / res[2]


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m zosci.bench solvers", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer repetitions")
    p.add_argument("--md", help="also write the results as a markdown section to this file")
    args = p.parse_args(argv)
    import logging

    logging.disable(logging.INFO)  # FFCx JIT chatter
    n_warm = 2 if args.quick else 4
    meshes = _meshes()
    lines = [f"Machine: {platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}", ""]
    lines += ["| solver | mesh | nodes | cold solve [s] | warm solve [s] |", "|---|---|---|---|---|"]
    for label, name, n, cold, warm in time_solves(meshes, n_warm):
        lines.append(f"| {label} | {name} | {n} | {cold:.3f} | {warm:.3f} |")
    lines += ["", "| wrapper overhead (coarse mesh) | wrapper [s] | bare dolfinx [s] | overhead |", "|---|---|---|---|"]
    for label, w, b in overhead(meshes["coarse"], 4 if args.quick else 8):
        lines.append(f"| {label} | {w:.4f} | {b:.4f} | {100 * (w / b - 1):+.1f}% |")
    sp = batch_speedup(meshes["fine"])
    lines += ["", "| batch of 16 perturbed potential solves (fine, M=0.5) | 1 worker [s] | 2 workers [s] | speedup |",
              "|---|---|---|---|", f"| SolverPool | {sp[1]:.2f} | {sp[2]:.2f} | {sp[1] / sp[2]:.2f}x |",
              "", f"Available parallelism at run time (2 pure-Python spin tasks, 2 processes vs 1): "
              f"{available_parallelism():.2f}x (2.0x on an idle 2-core machine; other load lowers it)"]
    text = "\n".join(lines)
    print(text)
    if args.md:
        with open(args.md, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
