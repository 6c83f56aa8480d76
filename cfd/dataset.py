"""Fine-mesh flow solutions over an (aoa, Mach) grid, generated once and cached on disk.

    conditions = grid("generalization")                 # aoa -10..10 by 1 x the split's Mach numbers
    data = generate(solver, conditions, cache_dir)      # resumable; solved conditions are never redone
    train, test = data.split("generalization")          # index arrays, by Mach number

The splits are those of CFD-GCN (Belbute-Peres et al., ICML 2020; their repository's
NACA0012_interpolate and NACA0012_machsplit data): interpolation trains at Mach
0.2, 0.3, 0.35, 0.4, 0.5, 0.55, 0.6, 0.7 and tests at 0.25, 0.45, 0.65; generalization trains
at Mach 0.2-0.5 and tests at 0.55-0.8 (steps of 0.05), aoa -10..10 in 1-degree steps.
Each condition is stored as soon as it is solved (cache_dir/<mesh and solver key>/aoa..._M....npz,
or .failed with the SolverError text), so an interrupted generation continues where it stopped
and any grid reuses the conditions already solved. Failed conditions (e.g. transonic ones the
potential solver rejects) are listed in FlowDataset.failed and left out.
"""
from __future__ import annotations

import hashlib
import inspect
import logging
import os
import sys
from pathlib import Path

import numpy as np

from zosci.solvers import SolverError, solve_batch

log = logging.getLogger(__name__)
FIELDS = (0, 1, 2)  # u, v, Cp of the solver's (u, v, Cp, rho)


SPLITS = {  # (train Mach numbers, test Mach numbers)
    "interpolation": ((0.2, 0.3, 0.35, 0.4, 0.5, 0.55, 0.6, 0.7), (0.25, 0.45, 0.65)),
    "generalization": ((0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5), (0.55, 0.6, 0.65, 0.7, 0.75, 0.8)),
}


def split_machs(split: str, train=(), test=()) -> tuple[tuple, tuple]:
    """(train, test) Mach numbers: the split's, or the given ones where not empty."""
    if split not in SPLITS:
        raise ValueError(f"split: must be one of {list(SPLITS)}, got {split!r}")
    machs = (tuple(train) or SPLITS[split][0], tuple(test) or SPLITS[split][1])
    if set(machs[0]) & set(machs[1]):
        raise ValueError(f"train_mach and test_mach share {sorted(set(machs[0]) & set(machs[1]))}: "
                         f"a condition cannot be both trained and tested")
    return machs


def grid(machs, aoa_step: float = 1.0, aoa=(-10.0, 10.0)) -> np.ndarray:
    """(n, 2) conditions (aoa degrees, Mach): aoa from aoa[0] to aoa[1] by aoa_step, for each Mach, Mach-major."""
    a = np.arange(aoa[0], aoa[1] + 1e-9, aoa_step)
    return np.array([(x, m) for m in sorted(machs) for x in a], dtype=np.float64)


def cache_key(mesh, solver) -> str:
    """The folder of one mesh, solver class and solver source (a changed solver never reuses old
    solutions); files in it are named by condition."""
    h = hashlib.sha1()
    for arr in (mesh.points, mesh.triangles):
        h.update(np.ascontiguousarray(arr).tobytes())
    h.update(type(solver).__name__.encode())
    h.update(inspect.getsource(sys.modules[type(solver).__module__]).encode())
    return h.hexdigest()[:16]


def _name(aoa: float, mach: float) -> str:
    return f"aoa{aoa:+08.3f}_M{mach:.4f}"


class FlowDataset:
    """conditions (N, 2) that solved, fields (N, n_nodes, 3) float32, and the failed conditions with reasons."""

    def __init__(self, conditions, fields, failed):
        self.conditions, self.fields, self.failed = conditions, fields, failed

    def __len__(self):
        return len(self.conditions)

    def split(self, train_mach, test_mach) -> tuple[np.ndarray, np.ndarray]:
        """(train, test) index arrays: the conditions at the given Mach numbers."""
        m = self.conditions[:, 1]

        def at(machs):
            return np.flatnonzero(np.isclose(m[:, None], np.asarray(machs, dtype=np.float64)[None]).any(1))
        train, test = at(train_mach), at(test_mach)
        if not len(train) or not len(test):
            raise ValueError(f"split: no {'train' if not len(train) else 'test'} condition solved at Mach "
                             f"{list(train_mach if not len(train) else test_mach)}")
        return train, test


def _save(path: Path, **arrays):
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def generate(solver, conditions, cache_dir, executor=None, progress: bool = True, chunk: int = 2) -> FlowDataset:
    """Solve `solver` at every (aoa, mach) not yet in the cache, then load all. executor: see solve_batch."""
    from tqdm import tqdm

    conditions = np.asarray(conditions, dtype=np.float64)
    folder = Path(cache_dir) / cache_key(solver.mesh, solver)
    folder.mkdir(parents=True, exist_ok=True)
    names = [_name(a, m) for a, m in conditions]

    def done(name):
        return (folder / f"{name}.npz").exists() or (folder / f"{name}.failed").exists()

    todo = [i for i, name in enumerate(names) if not done(name)]
    if todo:
        bar = tqdm(total=len(conditions), initial=len(conditions) - len(todo), desc="fine-mesh solutions",
                   disable=not progress)
        for s in range(0, len(todo), chunk):
            ids = todo[s:s + chunk]
            kws = [dict(aoa=float(conditions[i, 0]), mach=float(conditions[i, 1])) for i in ids]
            for i, r in zip(ids, solve_batch(solver, kws, executor=executor, errors="return")):
                if isinstance(r, SolverError):
                    (folder / f"{names[i]}.failed").write_text(str(r))
                else:
                    _save(folder / f"{names[i]}.npz", fields=np.asarray(r.fields[:, FIELDS], dtype=np.float32))
                bar.update()
        bar.close()
    ok, fields, failed = [], [], []
    for i, (c, name) in enumerate(zip(conditions, names)):
        f = folder / f"{name}.npz"
        if f.exists():
            ok.append(i)
            with np.load(f) as z:
                fields.append(z["fields"])
        else:
            failed.append((float(c[0]), float(c[1]), (folder / f"{name}.failed").read_text()))
    if failed:
        log.info("%d of %d conditions failed to solve and are left out: %s", len(failed), len(conditions),
                 ", ".join(f"(aoa {a:g}, M {m:g})" for a, m, _ in failed))
    n = len(solver.mesh.points)
    return FlowDataset(conditions[ok], np.stack(fields) if fields else np.zeros((0, n, 3), np.float32), failed)
