"""Fine-mesh flow solutions over an (aoa, Mach) grid, generated once and cached on disk.

    data = generate(solver, grid(9, 6), cache_dir)     # resumable; a second call does no solves
    train, test = data.split("interpolation", seed=0)  # or "extrapolation" (held-out high Mach)

Each condition is stored as soon as it is solved (cache_dir/<key>/NNNN.npz, or
NNNN.failed with the SolverError text), so an interrupted generation continues
where it stopped. The key hashes the mesh, the grid and the solver class.
Failed conditions (e.g. transonic ones the potential solver rejects) are
skipped, counted and logged; the rest is kept.
"""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np

from zosci.solvers import SolverError, solve_batch

log = logging.getLogger(__name__)
FIELDS = (0, 1, 2)  # u, v, Cp of the solver's (u, v, Cp, rho)


def grid(n_aoa: int = 9, n_mach: int = 6, aoa=(-10.0, 10.0), mach=(0.2, 0.7)) -> np.ndarray:
    """(n_aoa * n_mach, 2) conditions (aoa degrees, Mach) on a uniform grid, Mach-major."""
    a, m = np.linspace(*aoa, n_aoa), np.linspace(*mach, n_mach)
    return np.array([(x, y) for y in m for x in a], dtype=np.float64)


def cache_key(mesh, conditions, solver) -> str:
    h = hashlib.sha1()
    for arr in (mesh.points, mesh.triangles, np.asarray(conditions, dtype=np.float64)):
        h.update(np.ascontiguousarray(arr).tobytes())
    h.update(type(solver).__name__.encode())
    return h.hexdigest()[:16]


class FlowDataset:
    """conditions (N, 2) that solved, fields (N, n_nodes, 3) float32, and the failed conditions with reasons."""

    def __init__(self, conditions, fields, failed):
        self.conditions, self.fields, self.failed = conditions, fields, failed

    def __len__(self):
        return len(self.conditions)

    def split(self, kind: str, seed: int = 0, test_fraction: float = 0.25, mach_min: float = 0.6):
        """(train, test) index arrays. interpolation: random held-out conditions;
        extrapolation: test = Mach >= mach_min, train = the rest."""
        n = len(self)
        if kind == "interpolation":
            perm = np.random.default_rng(seed).permutation(n)
            k = max(1, int(round(test_fraction * n)))
            return np.sort(perm[k:]), np.sort(perm[:k])
        if kind == "extrapolation":
            test = self.conditions[:, 1] >= mach_min - 1e-9
            if test.all() or not test.any():
                raise ValueError(f"split.mach_min={mach_min}: leaves an empty train or test set; "
                                 f"pick a value inside the grid's Mach range")
            return np.flatnonzero(~test), np.flatnonzero(test)
        raise ValueError(f"split: must be 'interpolation' or 'extrapolation', got {kind!r}")


def _save(path: Path, **arrays):
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def generate(solver, conditions, cache_dir, executor=None, progress: bool = True, chunk: int = 2) -> FlowDataset:
    """Solve `solver` at every (aoa, mach) not yet in the cache, then load all. executor: see solve_batch."""
    from tqdm import tqdm

    conditions = np.asarray(conditions, dtype=np.float64)
    folder = Path(cache_dir) / cache_key(solver.mesh, conditions, solver)
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "conditions.npy", conditions)

    def done(i):
        return (folder / f"{i:04d}.npz").exists() or (folder / f"{i:04d}.failed").exists()

    todo = [i for i in range(len(conditions)) if not done(i)]
    if todo:
        bar = tqdm(total=len(conditions), initial=len(conditions) - len(todo), desc="fine-mesh solutions",
                   disable=not progress)
        for s in range(0, len(todo), chunk):
            ids = todo[s:s + chunk]
            kws = [dict(aoa=float(conditions[i, 0]), mach=float(conditions[i, 1])) for i in ids]
            for i, r in zip(ids, solve_batch(solver, kws, executor=executor, errors="return")):
                if isinstance(r, SolverError):
                    (folder / f"{i:04d}.failed").write_text(str(r))
                else:
                    _save(folder / f"{i:04d}.npz", fields=np.asarray(r.fields[:, FIELDS], dtype=np.float32))
                bar.update()
        bar.close()
    ok, fields, failed = [], [], []
    for i, c in enumerate(conditions):
        f = folder / f"{i:04d}.npz"
        if f.exists():
            ok.append(i)
            with np.load(f) as z:
                fields.append(z["fields"])
        else:
            failed.append((float(c[0]), float(c[1]), (folder / f"{i:04d}.failed").read_text()))
    if failed:
        log.info("%d of %d conditions failed to solve and are skipped", len(failed), len(conditions))
    n = len(solver.mesh.points)
    return FlowDataset(conditions[ok], np.stack(fields) if fields else np.zeros((0, n, 3), np.float32), failed)
