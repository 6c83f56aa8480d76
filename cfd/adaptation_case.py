"""Mesh adaptation: move a coarse NACA0012 mesh's interior nodes so its solution matches the fine one.

theta (2K mode amplitudes, zosci.cfd.adapt.MeshModes) minimizes sum_c L_c(theta)
(zosci.cfd.adapt.AdaptationLoss) with Adam; the gradient crosses the potential-flow
solver through zosci.BlackBox (ZO) and everything else by autograd; each step
is backtracked so every cell keeps >= min_area_ratio of its initial area.
Fine-mesh fields are computed once and cached in <run>/fine_fields.npz.
metrics.csv rows: step, solver_calls (cumulative), step_length, loss, loss_<c> per
condition (losses at theta before the step); a final row (step = steps + 1) has the
loss at the last theta.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .adapt import FIELD_NAMES, AdaptationLoss, MeshModes, adam_step, fine_targets
from zosci.config import Field, Schema
from zosci.errors import ConfigError
from zosci.plots import line_plot
from zosci.samplers import SAMPLERS
from zosci.estimators import ESTIMATORS

ROOT = Path(__file__).resolve().parents[1]  # the project root (cfd/ sits in it)

SCHEMA = Schema({
    "mesh": {
        "source": Field(str, "generate", choices=["generate", "files"], doc="gmsh-generated meshes or SU2 files"),
        "coarse_file": Field(str, "../shared/data/meshes/NACA0012_xcoarse.su2", doc="files: coarse SU2 mesh"),
        "fine_file": Field(str, "../shared/data/meshes/NACA0012_fine.su2", doc="files: fine SU2 mesh"),
        "coarse_airfoil": Field(int, 30, min=8, doc="generate: coarse nodes per airfoil side"),
        "coarse_farfield": Field(int, 16, min=8, doc="generate: coarse far-field nodes"),
        "fine_airfoil": Field(int, 60, min=8, doc="generate: fine nodes per airfoil side"),
        "fine_farfield": Field(int, 48, min=8, doc="generate: fine far-field nodes"),
    },
    "flow": {
        "aoa": Field(list, [2.0, -4.0], item=float, min=1, doc="angles of attack (degrees), one per condition"),
        "mach": Field(list, [0.3, 0.2], item=float, min=1, doc="Mach numbers (subsonic), one per condition"),
        "fields": Field(list, ["u", "v", "Cp"], item=str, choices=list(FIELD_NAMES), min=1,
                        doc="fields compared on the fine mesh"),
    },
    "adapt": {
        "modes": Field(int, 16, min=1, doc="Laplacian modes K (theta has 2K entries)"),
        "boundary": Field(str, "fixed", choices=["fixed", "slide"],
                          doc="boundary nodes fixed, or sliding along the airfoil spline (TE fixed) / far-field circle"),
        "min_area_ratio": Field(float, 0.2, min=0, max=1, min_exclusive=True, doc="backtracking floor on area/initial"),
        "min_angle": Field(float, 0.0, min=0, max=60, doc="backtracking floor on the smallest cell angle (degrees; 0: off)"),
        "steps": Field(int, 20, min=1, doc="Adam steps"),
        "lr": Field(float, 0.05, min=0, min_exclusive=True, doc="Adam learning rate (theta units)"),
        "sampler": Field(str, "gaussian", choices=sorted(SAMPLERS)),
        "estimator": Field(str, "forward", choices=sorted(ESTIMATORS)),
        "queries": Field(int, 8, min=1, doc="ZO queries per condition per step"),
        "mu": Field(float, 1e-3, min=0, min_exclusive=True, doc="finite-difference step"),
        "zo_space": Field(str, "theta", choices=["theta", "coords"], doc="what the ZO directions perturb"),
        "workers": Field(int, 0, min=0, doc="SolverPool processes for the queries (0: serial)"),
        "checkpoint_every": Field(int, 5, min=1),
    },
})


def _path(p: str) -> Path:
    """p as given (relative to the current directory), else relative to the project root."""
    q = Path(p)
    return q if q.exists() or q.is_absolute() else ROOT / q


def check(config):
    flow, mesh = config["flow"], config["mesh"]
    if len(flow["aoa"]) != len(flow["mach"]):
        raise ConfigError(f"flow.mach: has {len(flow['mach'])} entries but flow.aoa has {len(flow['aoa'])}; "
                          f"give one Mach number per angle of attack")
    for m in flow["mach"]:
        if not 0 <= m < 1:
            raise ConfigError(f"flow.mach: {m} is not subsonic; the potential solver needs 0 <= mach < 1")
    if mesh["source"] == "files":
        for key in ("coarse_file", "fine_file"):
            if not _path(mesh[key]).exists():
                raise ConfigError(f"mesh.{key}: {mesh[key]!r} not found (relative to the current directory or "
                                  f"{ROOT}); give the path of an SU2 mesh")


def load_meshes(cfg):
    from zosci.solvers import Mesh, naca_mesh

    if cfg["source"] == "files":
        return Mesh.read(_path(cfg["coarse_file"])), Mesh.read(_path(cfg["fine_file"]))
    return (naca_mesh(n_airfoil=cfg["coarse_airfoil"], n_farfield=cfg["coarse_farfield"]),
            naca_mesh(n_airfoil=cfg["fine_airfoil"], n_farfield=cfg["fine_farfield"]))


def cached_targets(path: Path, fine, conditions, columns):
    """Fine fields (C, N, F), read from path if it holds the same conditions, fields and mesh."""
    key = np.concatenate([np.asarray(conditions, float).ravel(), np.asarray(columns, float), fine.points.ravel()])
    if path.exists():
        data = np.load(path)
        if data["key"].shape == key.shape and np.array_equal(data["key"], key):
            return data["targets"]
    from zosci.solvers import PotentialFlow

    targets = fine_targets(PotentialFlow(fine), conditions, columns)
    np.savez(path, key=key, targets=targets)
    return targets


def run(run):
    from zosci.solvers import PotentialFlow, SolverPool

    cfg, seed = run.config, run.config["seed"]
    ad, flow = cfg["adapt"], cfg["flow"]
    torch.manual_seed(seed)
    conditions = list(zip(flow["aoa"], flow["mach"]))
    columns = [FIELD_NAMES.index(f) for f in flow["fields"]]
    coarse, fine = load_meshes(cfg["mesh"])
    run.logger.info("coarse %s, fine %s, %d conditions, fields %s", coarse, fine, len(conditions), flow["fields"])
    targets = cached_targets(run.path / "fine_fields.npz", fine, conditions, columns)
    modes = MeshModes(coarse, ad["modes"], ad["boundary"])
    solver = PotentialFlow(coarse)
    pool = SolverPool(solver, ad["workers"]) if ad["workers"] > 0 else None
    try:
        loss = AdaptationLoss(solver, modes, fine.points, targets, conditions, columns, zo_space=ad["zo_space"],
                              sampler=ad["sampler"], estimator=ad["estimator"], queries=ad["queries"], mu=ad["mu"],
                              executor=pool, seed=seed)
        theta = torch.zeros(modes.dim, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.Adam([theta], lr=ad["lr"])
        state = run.load_checkpoint()
        start = 0
        if state is not None:
            start = state["step"]
            with torch.no_grad():
                theta.copy_(state["theta"])
            opt.load_state_dict(state["opt"])
            loss.load_state_dict(state["loss"])
            run.logger.info("resuming at step %d of %d", start, ad["steps"])
        names = [f"loss_a{a:g}_M{m:g}" for a, m in conditions]
        bar = run.progress(total=ad["steps"], initial=start, desc="mesh adaptation")
        for step in range(start + 1, ad["steps"] + 1):
            losses, t = adam_step(loss, theta, opt, ad["min_area_ratio"], ad["min_angle"])
            run.log_metrics(step, solver_calls=loss.solver_calls, step_length=t, loss=float(losses.sum()),
                            **dict(zip(names, map(float, losses))))
            bar.update()
            bar.set_postfix(loss=f"{losses.sum():.4g}")
            if step % ad["checkpoint_every"] == 0 or step == ad["steps"]:
                run.save_checkpoint({"step": step, "theta": theta.detach().clone(), "opt": opt.state_dict(),
                                     "loss": loss.state_dict()}, step)
        bar.close()
        final = loss.value(theta.detach())
        run.log_metrics(ad["steps"] + 1, solver_calls=loss.solver_calls, step_length=None, loss=float(final.sum()),
                        **dict(zip(names, map(float, final))))
    finally:
        if pool is not None:
            pool.shutdown()
    report(run, modes, theta.detach(), fine, targets, solver, conditions, columns)


def report(run, modes, theta, fine, targets, solver, conditions, columns):
    """Plots: meshes before/after, loss vs solver calls, fields on the coarse (both) and fine meshes."""
    rows = run.read_metrics()
    png = [line_plot(run.plot_path("loss"), {"total": ([int(r["solver_calls"]) for r in rows],
                                                       [float(r["loss"]) for r in rows])},
                     xlabel="solver calls", ylabel="loss", title=run.config["name"], logy=True)]
    moved = modes.mesh_at(theta)
    zoom = dict(xlim=(-0.3, 1.3), ylim=(-0.5, 0.5))
    for name, mesh in (("mesh_before", modes.mesh), ("mesh_after", moved)):
        mesh.plot(run.plot_path(name), title=name.replace("_", " "), **zoom)
        png.append(run.plot_path(name))
    a, m = conditions[0]
    k = columns.index(2) if 2 in columns else 0
    field = ("u", "v", "Cp", "rho")[columns[k]]
    for name, mesh in (("field_coarse_before", modes.mesh), ("field_coarse_after", moved)):
        values = solver.solve(aoa=a, mach=m, coords=mesh.points).fields[:, columns[k]]
        mesh.plot(run.plot_path(name), field=values, title=f"{field}, {name} (aoa {a:g}, M {m:g})", **zoom)
        png.append(run.plot_path(name))
    fine.plot(run.plot_path("field_fine"), field=targets[0][:, k], title=f"{field}, fine (aoa {a:g}, M {m:g})",
              show_edges=False, **zoom)
    png.append(run.plot_path("field_fine"))
    first, last = rows[0], rows[-1]
    run.logger.info("loss %.5g -> %.5g (%.1f%% lower) after %s solver calls; min cell area ratio %.3f",
                    float(first["loss"]), float(last["loss"]),
                    100 * (1 - float(last["loss"]) / float(first["loss"])), last["solver_calls"],
                    modes.area_ratio(theta))
    run.logger.info("plots in %s: %s", run.path, ", ".join(p.name for p in png))
