"""Benchmark of the CFD black boxes: `python -m zosci.bench solvers [--quick] [--md FILE]`.

Measures, in one process and interleaved: (1) the full-potential solve of this checkout against
the previous code path (solvers/potential.py at commit BEFORE, read with `git show`) on the
CFD-GCN xcoarse/coarse/fine meshes (generated NACA0012 meshes if the data folder is missing):
warm solves at the same nodes (new aoa) and at moved nodes (a new mesh-adaptation query), wall
and CPU seconds, and the lift of both; (2) where the time of one new solve goes; (3) fail fast:
seconds of failing solves against converged ones on the same mesh, this checkout beside commit
FAILFAST_BEFORE; (4) Navier-Stokes cold/warm
solves; (5) 16 perturbed potential solves on 2 SolverPool workers against 1, with the worker
start-up, first-solve and pickling costs, beside the parallelism that 2 spin tasks get at run time.
CPU seconds are reported next to wall seconds: on a loaded machine they are the stable number.
"""
import argparse
import importlib.util
import os
import pickle
import platform
import subprocess
import sys
import time

import numpy as np

MESH_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data", "meshes")
REPO = os.path.join(os.path.dirname(__file__), "..", "..")
BEFORE = "7acb3da"  # last commit with the secant-on-Gamma potential solver
FAILFAST_BEFORE = "e60506d"  # Newton on (psi, Gamma) before the shock-point operator and the a-priori refusal


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


def previous_potential(commit=BEFORE):
    """The PotentialFlow class of `commit` (None if git or the commit is not available)."""
    try:
        src = subprocess.run(["git", "-C", REPO, "show", f"{commit}:solvers/potential.py"], capture_output=True,
                             text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    name = f"zosci.solvers._potential_{commit}"
    spec = importlib.util.spec_from_loader(name, loader=None)
    mod = importlib.util.module_from_spec(spec)
    mod.__package__ = "zosci.solvers"
    sys.modules[name] = mod
    exec(compile(src, f"{commit}:solvers/potential.py", "exec"), mod.__dict__)
    return mod.PotentialFlow


def _timed(fn):
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t0, time.process_time() - c0


def compare_potential(meshes, n_rep, old_cls):
    """Rows (mesh, nodes, path, mode, wall, cpu, cl): warm solves at M 0.5, new and previous path interleaved."""
    from zosci.solvers import PotentialFlow

    rows = []
    for name, mesh in meshes.items():
        coords = _perturbed(mesh, 2 * n_rep, seed=3)
        solvers = {"new": PotentialFlow(mesh)}
        if old_cls is not None:
            solvers["previous"] = old_cls(mesh)
        for s in solvers.values():
            s.solve(aoa=2.0, mach=0.5)  # build + JIT
        times = {(p, mode): [] for p in solvers for mode in ("same nodes", "moved nodes")}
        cl = {}
        for k in range(n_rep):
            for path, s in solvers.items():
                r, w, c = _timed(lambda: s.solve(aoa=3.0 + 0.5 * (k % 2), mach=0.5))
                times[(path, "same nodes")].append((w, c))
                cl[path] = r.cl if k % 2 == 0 else cl.get(path)
                _, w, c = _timed(lambda: s.solve(aoa=3.0, mach=0.5, coords=coords[k]))
                times[(path, "moved nodes")].append((w, c))
        for (path, mode), tc in times.items():
            tc = np.array(tc)
            rows.append((name, len(mesh.points), path, mode, float(np.median(tc[:, 0])), float(np.median(tc[:, 1])),
                         cl[path]))
    return rows


def time_split(mesh, n_rep=3):
    """Seconds per new solve (fine mesh, M 0.5, moved nodes) by phase, from timers around the pieces."""
    from zosci.solvers import PotentialFlow
    from zosci.solvers import potential as P

    s = PotentialFlow(mesh)
    s.solve(aoa=2.0, mach=0.5)
    acc = {}

    def wrap(obj, attr, label):
        orig = getattr(obj, attr)

        def timed(*a, **k):
            t0 = time.perf_counter()
            try:
                return orig(*a, **k)
            finally:
                acc[label] = acc.get(label, 0.0) + time.perf_counter() - t0
        setattr(obj, attr, timed)
        return orig

    saved = [(P._LU, "factor", wrap(P._LU, "factor", "assemble J + LU factorisation")),
             (P._LU, "solve", wrap(P._LU, "solve", "LU back-substitutions")),
             (P.PotentialFlow, "_vector", wrap(P.PotentialFlow, "_vector", "assemble F, dF/dGamma")),
             (P.PotentialFlow, "_outputs", wrap(P.PotentialFlow, "_outputs", "outputs (fields, cl, cd)"))]
    coords = _perturbed(mesh, n_rep, seed=4)
    total = 0.0
    try:
        for c in coords:
            _, w, _ = _timed(lambda: s.solve(aoa=3.0, mach=0.5, coords=c))
            total += w
    finally:
        for obj, attr, orig in saved:
            setattr(obj, attr, orig)
    out = {k: v / n_rep for k, v in acc.items()}
    out["rest (Python, geometry, interpolation)"] = total / n_rep - sum(out.values())
    return out, total / n_rep, s.solve(aoa=3.0, mach=0.5).info["newton_iterations"]


FAILING = ((10.0, 0.75), (2.0, 0.8))  # refused before Newton / failing in Newton (or above max_mach) on this checkout


def fail_fast(meshes, before_cls, n_rep=3):
    """Rows (mesh, path, converged subsonic aoa 3 M 0.5 [s], converged transonic aoa 2 M 0.7 [s],
    [(seconds, message) of each FAILING condition]), medians of n_rep warm solves, for this checkout and
    commit FAILFAST_BEFORE, one after the other on each mesh."""
    from zosci.solvers import PotentialFlow, SolverError

    rows = []
    for name, mesh in meshes.items():
        paths = {"new": PotentialFlow(mesh)}
        if before_cls is not None:
            paths[FAILFAST_BEFORE] = before_cls(mesh)
        for s in paths.values():
            s.solve(aoa=2.0, mach=0.5)
        out = {p: [None, None, []] for p in paths}
        for path, s in paths.items():  # one path after the other per mesh: the same machine load for both
            out[path][0] = float(np.median([_timed(lambda: s.solve(aoa=3.0, mach=0.5))[1] for _ in range(n_rep)]))
            try:
                out[path][1] = float(np.median([_timed(lambda: s.solve(aoa=2.0, mach=0.7))[1] for _ in range(n_rep)]))
            except SolverError:
                out[path][1] = float("nan")
            for aoa, mach in FAILING:
                seconds = []
                for _ in range(n_rep):
                    t0 = time.perf_counter()
                    try:
                        r = s.solve(aoa=aoa, mach=mach)
                        msg = f"converged (largest cell Mach {r.info['max_local_mach']:.2f})"
                    except SolverError as e:
                        msg = str(e)
                    seconds.append(time.perf_counter() - t0)
                out[path][2].append((float(np.median(seconds)), msg))
        rows += [(name, path, *v) for path, v in out.items()]
    return rows


def grid_sweep(mesh):
    """The CFD-GCN grid (aoa -10..10 by 1 x M 0.2..0.8 by 0.05, 273 conditions) on `mesh`: rows (M,
    converged, refused before Newton, failed in Newton, converged above max_mach, largest cell Mach of
    the converged, median seconds converged / failed)."""
    from zosci.solvers import PotentialFlow, SolverError

    s = PotentialFlow(mesh)
    s.solve(aoa=2.0, mach=0.5)
    rows = []
    for mach in np.round(np.arange(0.2, 0.8001, 0.05), 2):
        kinds, peaks, t_ok, t_fail = {"before": 0, "newton": 0, "max_mach": 0}, [], [], []
        for aoa in np.arange(-10.0, 10.001, 1.0):
            t0 = time.perf_counter()
            try:
                peaks.append(s.solve(aoa=float(aoa), mach=float(mach)).info["max_local_mach"])
                t_ok.append(time.perf_counter() - t0)
            except SolverError as e:
                t_fail.append(time.perf_counter() - t0)
                msg = str(e)
                kind = "before" if "before Newton" in msg else "max_mach" if "exceeds max_mach" in msg else "newton"
                kinds[kind] += 1
        median = [float(np.median(t)) if t else float("nan") for t in (t_ok, t_fail)]
        rows.append((float(mach), len(peaks), kinds["before"], kinds["newton"], kinds["max_mach"], max(peaks, default=0.0),
                     *median))
    return rows


def time_navier_stokes(meshes, n_warm):
    from zosci.solvers import NavierStokes

    rows = []
    for name, mesh in meshes.items():
        t0 = time.perf_counter()
        s = NavierStokes(mesh)
        s.solve(aoa=4.0, reynolds=100.0)
        cold = time.perf_counter() - t0
        warm = [_timed(lambda: s.solve(aoa=3.0 + 0.5 * (k % 2), reynolds=100.0))[1] for k in range(n_warm)]
        rows.append((name, len(mesh.points), cold, float(np.median(warm))))
    return rows


def _worker_probe(_):
    """A no-op task (its pid): the time to get answers from fresh workers is their start-up."""
    return os.getpid()


def batch_speedup(mesh, n_batch=16, repeats=5):
    """Seconds for n_batch perturbed full-potential solves (M=0.5) on 1 and 2 SolverPool workers (median
    of `repeats`, after three warm-up batches that give every worker several solves), plus start-up,
    first-solve and pickling costs."""
    from zosci.solvers import PotentialFlow, SolverPool, solve_batch

    solver = PotentialFlow(mesh)
    kws = [dict(aoa=2.0, mach=0.5, coords=c) for c in _perturbed(mesh, n_batch, seed=2)]
    serial = []
    for _ in range(repeats):
        _, w, _ = _timed(lambda: solve_batch(solver, kws))  # in this process, built after the first call
        serial.append(w)
    res, extra = {}, {}
    result = solver.solve(**kws[0])
    t0 = time.perf_counter()
    for _ in range(100):
        pickle.loads(pickle.dumps(kws[0])), pickle.loads(pickle.dumps(result))
    extra["pickle + unpickle kwargs and result, per solve [ms]"] = 1e3 * (time.perf_counter() - t0) / 100
    extra["kwargs + result pickle size [kB]"] = (len(pickle.dumps(kws[0])) + len(pickle.dumps(result))) / 1e3
    t0 = time.perf_counter()
    pickle.loads(pickle.dumps(solver)).solve(**kws[0])
    extra["solver unpickle + build + first solve in this process (JIT cached) [s]"] = time.perf_counter() - t0
    ceiling = independent_processes(solver, kws)
    extra["independent processes, no pool: 1 x 16 / 2 x 8 solves [s]"] = f"{ceiling[1]:.2f} / {ceiling[2]:.2f}"
    extra["independent processes speedup (the ceiling for this workload)"] = f"{ceiling[1] / ceiling[2]:.2f}x"
    for workers in (1, 2):
        with SolverPool(solver, max_workers=workers) as pool:
            t0 = time.perf_counter()
            list(pool.map(_worker_probe, range(workers)))
            extra[f"start {workers} worker(s) [s]"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            solve_batch(solver, kws[:workers], executor=pool)  # each worker builds + JIT-loads its solver
            extra[f"first solve on {workers} worker(s) [s]"] = time.perf_counter() - t0
            for _ in range(3):  # no worker stays cold: each gets several solves before the timing
                solve_batch(solver, kws[:4 * workers], executor=pool)
            runs = []
            for _ in range(repeats):
                _, w, _ = _timed(lambda: solve_batch(solver, kws, executor=pool, errors="raise"))
                runs.append(w)
            res[workers] = float(np.median(runs))
            extra[f"{workers} worker(s), all repeats [s]"] = " / ".join(f"{b:.2f}" for b in runs)
    extra["serial in this process [s]"] = " / ".join(f"{b:.2f}" for b in serial)
    return res, extra


def _solve_all(payload, kws, barrier, queue):
    """In a fresh process: build the solver, solve once (warm-up), wait for the others, time all kws."""
    solver = pickle.loads(payload)
    solver.solve(**kws[0])
    barrier.wait()
    t0 = time.perf_counter()
    for kw in kws:
        solver.solve(**kw)
    queue.put(time.perf_counter() - t0)


def independent_processes(solver, kws):
    """Seconds for kws solved by 1 process, and by 2 processes started together taking half each (timed
    inside the processes after their warm-up): the speedup this workload allows without a pool or IPC."""
    import multiprocessing

    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # as in SolverPool's workers
        os.environ.setdefault(var, "1")
    ctx = multiprocessing.get_context("spawn")
    payload = pickle.dumps(solver)
    out = {}
    for workers in (1, 2):
        barrier, queue = ctx.Barrier(workers), ctx.Queue()
        procs = [ctx.Process(target=_solve_all, args=(payload, kws[k::workers], barrier, queue))
                 for k in range(workers)]
        for pr in procs:
            pr.start()
        out[workers] = max(queue.get() for _ in procs)
        for pr in procs:
            pr.join()
    return out


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
    p.add_argument("--quick", action="store_true", help="fewer repetitions, no Navier-Stokes")
    p.add_argument("--md", help="also write the results as a markdown section to this file")
    p.add_argument("--grid", action="store_true", help="only the CFD-GCN (aoa, M) grid on the fine mesh (about 2 min)")
    args = p.parse_args(argv)
    import logging

    logging.disable(logging.INFO)  # FFCx JIT chatter
    if args.grid:
        rows = grid_sweep(_meshes()["fine"])
        lines = ["| M | converged | refused before Newton | failed in Newton | converged above max_mach | largest cell "
                 "Mach (converged) | median s converged | median s failed |", "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {m:g} | {ok}/21 | {b} | {n} | {x} | {pk:.3f} | {to:.3f} | {tf:.3f} |"
                  for m, ok, b, n, x, pk, to, tf in rows]
        lines.append(f"\nconverged {sum(r[1] for r in rows)} of {21 * len(rows)}")
        print("\n".join(lines))
        return 0
    n_rep = 3 if args.quick else 6
    meshes = _meshes()
    old_cls = previous_potential()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
             f"load average at start {load:.1f}", ""]
    lines += [f"Potential flow, warm solves at M 0.5 (median of {n_rep}), new path vs the previous one "
              f"({BEFORE}: secant on Gamma over Newton solves, FFCx-estimated quadrature){'' if old_cls else ' (previous path: git not available)'}:",
              "", "| mesh | nodes | path | query | wall [s] | CPU [s] | cl (aoa 3) |", "|---|---|---|---|---|---|---|"]
    rows = compare_potential(meshes, n_rep, old_cls)
    for name, n, path, mode, w, c, cl in rows:
        lines.append(f"| {name} | {n} | {path} | {mode} | {w:.4f} | {c:.4f} | {cl:.5f} |")
    if old_cls is not None:
        lines += ["", "| mesh | query | speedup wall | speedup CPU | cl new / previous - 1 |", "|---|---|---|---|---|"]
        by = {(r[0], r[2], r[3]): r for r in rows}
        for name in meshes:
            for mode in ("same nodes", "moved nodes"):
                a, b = by[(name, "new", mode)], by[(name, "previous", mode)]
                lines.append(f"| {name} | {mode} | {b[4] / a[4]:.1f}x | {b[5] / a[5]:.1f}x | {a[6] / b[6] - 1:+.2e} |")
    split, total, iters = time_split(meshes["fine"])
    lines += ["", f"Where a new fine-mesh solve goes (M 0.5, moved nodes, {iters} Newton iterations, {total:.3f} s):", "",
              "| phase | seconds | share |", "|---|---|---|"]
    for k, v in split.items():
        lines.append(f"| {k} | {v:.4f} | {100 * v / total:.0f}% |")
    lines += ["", f"Fail fast: seconds of converged and failing solves, this checkout (new) and {FAILFAST_BEFORE} "
              f"(before the shock-point operator and the Karman-Tsien refusal), side by side; failing: aoa 10 M 0.75 "
              f"(refused before Newton) and aoa 2 M 0.8 (through Newton):", "",
              "| mesh | path | converged M 0.5 aoa 3 [s] | converged M 0.7 aoa 2 [s] | aoa 10 M 0.75 [s] | "
              "aoa 2 M 0.8 [s] | worst failure / converged M 0.5 | worst failure / converged M 0.7 |",
              "|---|---|---|---|---|---|---|---|"]
    msgs = []
    for name, path, ok, tr, fails in fail_fast(meshes, previous_potential(FAILFAST_BEFORE)):
        failed = [t for t, m in fails if not m.startswith("converged")]
        worst = max(failed) if failed else float("nan")
        lines.append(f"| {name} | {path} | {ok:.4f} | {tr:.4f} | " + " | ".join(f"{t:.4f}" for t, _ in fails)
                     + f" | {worst / ok:.1f}x | {worst / tr:.1f}x |")
        msgs += [f"- {name}, {path}, aoa {a:g} M {m:g}: `{msg[:260]}`" for (a, m), (_, msg) in zip(FAILING, fails)]
    lines += ["", "Error messages:", ""] + msgs
    if not args.quick:
        lines += ["", "| Navier-Stokes | nodes | cold solve [s] | warm solve [s] |", "|---|---|---|---|"]
        for name, n, cold, warm in time_navier_stokes(meshes, 4):
            lines.append(f"| {name} | {n} | {cold:.3f} | {warm:.3f} |")
    spin_before = available_parallelism()
    sp, extra = batch_speedup(meshes["fine"], repeats=2 if args.quick else 3)
    spin_after = available_parallelism()
    lines += ["", "| batch of 16 perturbed potential solves (fine, M 0.5) | 1 worker [s] | 2 workers [s] | speedup |",
              "|---|---|---|---|", f"| SolverPool (median of repeats) | {sp[1]:.2f} | {sp[2]:.2f} | {sp[1] / sp[2]:.2f}x |",
              "", "| cost | value |", "|---|---|"]
    lines += [f"| {k} | {v if isinstance(v, str) else f'{v:.3f}'} |" for k, v in extra.items()]
    lines += ["", f"Available parallelism (2 pure-Python spin tasks, 2 processes vs 1), before / after the batch: "
              f"{spin_before:.2f}x / {spin_after:.2f}x (2.0x on an idle 2-core machine; other load lowers it)"]
    text = "\n".join(lines)
    print(text)
    if args.md:
        with open(args.md, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
