"""The DAP paper's Poisson mesh problem as a case: move the interior coarse vertices by gradient descent.

z (the interior coarse vertices) minimizes L(z) = RMS(P u_c - u_f) (zosci.cfd.poisson.PoissonMesh)
by z <- z - lr g, the step halved until every cell keeps >= min_area_ratio of its initial area. g is

* "plain": zosci.estimate_gradient of the scalar loss (the paper's ZO; sampler "dap" takes a pilot
  sphere estimate of the same size as its guide and averages both, as in the paper's code);
* "hybrid": BlackBox(solver) for du_c/dz, autograd through interpolation and loss; with
  jacobian_model = "node_carried" the node-carried model is its control variate;
* "exact": autograd through the torch P1 assembly (the solver setting is not used).

The black box is dolfinx (or the torch assembly, which agrees to 1e-15). metrics.csv rows: step,
solver_calls (cumulative), loss (at z before the step), step_length; a final row has the loss at the
last z.
"""
from __future__ import annotations

import numpy as np
import torch

from zosci.config import Field, Schema
from zosci.errors import ConfigError
from zosci.plots import line_plot
from zosci.samplers import SAMPLERS

SCHEMA = Schema({
    "mesh": {
        "coarse": Field(int, 10, min=2, doc="coarse mesh: n x n squares of the unit square, two triangles each"),
        "fine": Field(int, 20, min=2, doc="fine (target) mesh, n x n squares"),
        "solver": Field(str, "dolfinx", choices=["dolfinx", "torch"], doc="the black box: dolfinx or the torch P1 assembly"),
    },
    "optimize": {
        "method": Field(str, "hybrid", choices=["hybrid", "plain", "exact"], doc="where the gradient comes from"),
        "jacobian_model": Field(str, "node_carried", choices=["node_carried", "none"],
                                doc="hybrid: control variate for the solver Jacobian"),
        "sampler": Field(str, "sphere", choices=sorted(SAMPLERS)),
        "queries": Field(int, 8, min=1, doc="ZO queries per step"),
        "mu": Field(float, 1e-4, min=0, min_exclusive=True, doc="finite-difference step (the paper's 1e-4)"),
        "lr": Field(float, 10.0, min=0, min_exclusive=True, doc="gradient-descent step size"),
        "steps": Field(int, 200, min=1),
        "min_area_ratio": Field(float, 0.1, min=0, max=1, min_exclusive=True,
                                doc="every cell keeps at least this fraction of its initial area"),
        "checkpoint_every": Field(int, 20, min=1),
    },
})


def check(config):
    mesh = config["mesh"]
    if mesh["fine"] < mesh["coarse"]:
        raise ConfigError(f"mesh.fine: {mesh['fine']} squares is coarser than mesh.coarse ({mesh['coarse']}); "
                          f"the target mesh must be at least as fine")


class Stepper:
    """One gradient per call at z: (g, loss at z, solver calls spent); state_dict for resuming."""

    def __init__(self, P, cfg, seed):
        from zosci.hybrid import BlackBox

        from .jacobian_models import NodeCarried

        self.P, self.cfg = P, cfg
        self.solve = P.black_box()
        self.generator = torch.Generator().manual_seed(seed)
        self.model = None
        if cfg["method"] == "hybrid":
            if cfg["jacobian_model"] == "node_carried":
                self.model = NodeCarried(P.coarse.triangles, P.coords)
            self.box = BlackBox(self.solve, sampler=cfg["sampler"], queries=cfg["queries"], mu=cfg["mu"],
                                jacobian_model=self.model, seed=seed)

    def __call__(self, z):
        from .poisson import plain_gradient

        P, cfg = self.P, self.cfg
        if cfg["method"] == "exact":
            zz = z.clone().requires_grad_(True)
            loss = P.loss(zz)
            (g,) = torch.autograd.grad(loss, zz)
            return g, loss.item(), 1
        if cfg["method"] == "hybrid":
            zz = z.clone().requires_grad_(True)
            u = self.box(zz)
            loss = P.loss_from(zz, u)
            (g,) = torch.autograd.grad(loss, zz)
            return g, loss.item(), 1 + self.box.last.evaluations
        f = lambda v: P.loss_from(v.view(-1, 2), self.solve(v.view(-1, 2)))  # noqa: E731
        g, base, calls = plain_gradient(f, z.reshape(-1), cfg["sampler"], cfg["queries"], cfg["mu"], self.generator)
        return g.view(-1, 2), base, calls

    def state_dict(self):
        state = {"generator": self.generator.get_state()}
        if self.cfg["method"] == "hybrid":
            state["box"] = self.box.state_dict()
        return state

    def load_state_dict(self, state):
        self.generator.set_state(state["generator"])
        if "box" in state:
            self.box.load_state_dict(state["box"])


def run(run):
    from .poisson import PoissonMesh, backtrack

    cfg, seed = run.config, run.config["seed"]
    opt, mesh = cfg["optimize"], cfg["mesh"]
    torch.manual_seed(seed)
    P = PoissonMesh(mesh["coarse"], mesh["fine"], solver=mesh["solver"])
    run.logger.info("coarse %dx%d (%d moving vertices), fine %dx%d, black box %s, method %s", mesh["coarse"],
                    mesh["coarse"], len(P.interior), mesh["fine"], mesh["fine"], mesh["solver"], opt["method"])
    stepper = Stepper(P, opt, seed)
    z, start, calls = P.z0.clone(), 0, 0
    state = run.load_checkpoint()
    if state is not None:
        z, start, calls = state["z"], state["step"], state["calls"]
        stepper.load_state_dict(state["stepper"])
        run.logger.info("resuming at step %d of %d", start, opt["steps"])
    bar = run.progress(total=opt["steps"], initial=start, desc="poisson mesh")
    for step in range(start + 1, opt["steps"] + 1):
        P.rebase(z)
        g, loss, spent = stepper(z)
        calls += spent
        z, t = backtrack(P, z, -opt["lr"] * g, opt["min_area_ratio"])
        run.log_metrics(step, solver_calls=calls, loss=loss, step_length=t)
        bar.update()
        bar.set_postfix(loss=f"{loss:.4g}")
        if step % opt["checkpoint_every"] == 0 or step == opt["steps"]:
            run.save_checkpoint({"step": step, "z": z.clone(), "calls": calls, "stepper": stepper.state_dict()}, step)
    bar.close()
    P.rebase(z)
    final = float(P.loss_from(z, stepper.solve(z)))
    run.log_metrics(opt["steps"] + 1, solver_calls=calls + 1, loss=final, step_length=None)
    report(run, P, z)


def report(run, P, z):
    """Plots: loss vs solver calls, the mesh before and after, per-node |dL/dz_i| at the start."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    import matplotlib.tri as mtri

    rows = run.read_metrics()
    line_plot(run.plot_path("loss"), {"loss": ([int(r["solver_calls"]) for r in rows], [float(r["loss"]) for r in rows])},
              xlabel="solver calls", ylabel="RMS error", title=run.config["name"], logx=True)
    P.rebase(P.z0)
    z0 = P.z0.clone().requires_grad_(True)
    (g0,) = torch.autograd.grad(P.loss(z0), z0)
    fig = Figure(figsize=(11, 4.5), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    sens = np.zeros(len(P.coarse.points))
    sens[P.interior] = g0.norm(dim=1).numpy()
    for ax, (title, zz) in zip(axes, (("before: |dL/dz_i| (exact)", P.z0), ("after", z))):
        x = P.coords(zz.detach()).numpy()
        tri = mtri.Triangulation(x[:, 0], x[:, 1], P.coarse.triangles)
        if zz is P.z0:
            fig.colorbar(ax.tripcolor(tri, sens, shading="gouraud", cmap="viridis"), ax=ax)
        ax.triplot(tri, color="k", linewidth=0.4)
        ax.set_aspect("equal")
        ax.set_title(title, fontsize="small")
    fig.tight_layout()
    fig.savefig(run.plot_path("mesh"))
    first, last = rows[0], rows[-1]
    run.logger.info("loss %.5g -> %.5g (%.1f%% lower) after %s solver calls; min cell area ratio %.3f; plots loss.png, "
                    "mesh.png", float(first["loss"]), float(last["loss"]),
                    100 * (1 - float(last["loss"]) / float(first["loss"])), last["solver_calls"], P.min_area_ratio(z))
