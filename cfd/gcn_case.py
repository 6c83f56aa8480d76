"""CFD-GCN case: a GCN on the fine mesh fed by a coarse-mesh solver whose node positions are learned by ZO.

model.method: "gcn" (no solver input), "fixed" (coarse solution on the fixed coarse mesh,
upsampled), "zo" (coarse node positions learnable; their gradient crosses the solver by one
batched zosci.BlackBox, a row per condition of the mini-batch with its own directions and DAP
guide, and the interpolation by autograd).
Coarse positions: points + h * theta for interior nodes (boundary nodes fixed), h = zo.scale x
the node's shortest edge; a theta step that leaves a cell below zo.min_area of its original
area is halved (up to zo.max_halvings times, else skipped).
Data: the paper's grid (aoa -10..10 by data.aoa_step) and Mach split (zosci.cfd.dataset.SPLITS),
fine-mesh targets cached. Conditions whose fine solve, or coarse solve on the initial coarse mesh,
fails are listed (Problem.failed) and left out for every method.
metrics.csv per epoch: train_loss (mean batch MSE), test_loss (MSE over test nodes x fields),
evaluations (cumulative coarse solves of the ZO backward passes), displacement (mean |coords
move| of interior nodes, chords), skipped (train conditions whose coarse solve failed this
epoch), epoch_seconds.
"""
from __future__ import annotations

import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from zosci.config import Field, Schema
from .dataset import SPLITS, generate, grid, split_machs
from .gcn import CFDGCN, Upsampler, node_features
from zosci.hybrid import BlackBox
from zosci.plots import line_plot
from zosci.samplers import SAMPLERS
from zosci.solvers import Mesh, PotentialFlow, SolverError, mesh_to_graph, naca_mesh
from zosci.solvers.pool import _solve_with, solver_token
from zosci.solvers.quality import signed_areas

ROOT = Path(__file__).resolve().parents[1]  # the project root (cfd/ sits in it)

SCHEMA = Schema({
    "mesh": {
        "source": Field(str, "cfdgcn", choices=["cfdgcn", "naca"],
                        doc="cfdgcn: the CFD-GCN SU2 meshes in mesh_dir; naca: gmsh meshes from naca_mesh"),
        "mesh_dir": Field(str, "../shared/data/meshes", doc="cfdgcn: folder of NACA0012_*.su2 (relative: to the working directory, else the project root)"),
        "coarse": Field(str, "xcoarse", choices=["xcoarse", "coarse", "fine"], doc="cfdgcn: coarse (solver) mesh"),
        "fine": Field(str, "fine", choices=["xcoarse", "coarse", "fine"], doc="cfdgcn: fine (target) mesh"),
        "naca_coarse": Field(int, 10, min=8, doc="naca: nodes per side of the coarse mesh"),
        "naca_fine": Field(int, 24, min=8, doc="naca: nodes per side of the fine mesh"),
        "naca_radius": Field(float, 10.0, min=2, doc="naca: far-field radius, chords"),
    },
    "data": {
        "split": Field(str, "interpolation", choices=sorted(SPLITS),
                       doc="the CFD-GCN paper's Mach split (zosci.cfd.dataset.SPLITS)"),
        "aoa_step": Field(float, 1.0, min=0, min_exclusive=True, doc="aoa -10..10 degrees in this step"),
        "train_mach": Field(list, [], item=float, doc="train Mach numbers (empty: the split's)"),
        "test_mach": Field(list, [], item=float, doc="test Mach numbers (empty: the split's)"),
        "cache_dir": Field(str, "runs/cfd_gcn_cache", doc="fine-solution cache (relative: to the working directory)"),
    },
    "model": {
        "method": Field(str, "zo", choices=["gcn", "fixed", "zo"]),
        "hidden": Field(int, 64, min=1),
        "layers": Field(int, 5, min=2),
        "interpolation": Field(str, "barycentric", choices=["barycentric", "knn"]),
    },
    "train": {
        "epochs": Field(int, 10, min=1),
        "batch": Field(int, 4, min=1, doc="conditions per optimizer step"),
        "lr": Field(float, 5e-3, min=0, min_exclusive=True, doc="Adam step of the GCN"),
        "checkpoint_every": Field(int, 1, min=1, doc="epochs between checkpoints"),
    },
    "zo": {
        "sampler": Field(str, "gaussian", choices=sorted(SAMPLERS)),
        "estimator": Field(str, "forward"),
        "queries": Field(int, 4, min=1),
        "mu": Field(float, 0.01, min=0, min_exclusive=True, doc="finite-difference step in theta (units of h)"),
        "lr": Field(float, 0.02, min=0, min_exclusive=True, doc="Adam step of theta (units of h)"),
        "scale": Field(float, 0.3, min=0, min_exclusive=True, doc="h = scale x shortest edge at the node"),
        "min_area": Field(float, 0.2, min=0, max=1, max_exclusive=True,
                          doc="a theta step may not shrink a cell below this share of its original area"),
        "max_halvings": Field(int, 6, min=0),
        "workers": Field(int, 1, min=1, doc="processes for the ZO queries of a mini-batch (1: in this process)"),
        "jacobian_model": Field(str, "none", choices=["none", "node_carried"],
                                doc="control variate of the ZO estimate (zosci.cfd.jacobian_models)"),
    },
})


def load_meshes(cfg):
    """(coarse, fine) Mesh from the mesh section."""
    if cfg["source"] == "naca":
        r = cfg["naca_radius"]
        return (naca_mesh(n_airfoil=cfg["naca_coarse"], n_farfield=8, radius=r),
                naca_mesh(n_airfoil=cfg["naca_fine"], n_farfield=16, radius=r))
    folder = Path(cfg["mesh_dir"])
    folder = folder if folder.is_absolute() or folder.is_dir() else ROOT / folder  # cwd first, then the root
    paths = [folder / f"NACA0012_{cfg[k]}.su2" for k in ("coarse", "fine")]
    for p in paths:
        if not p.exists():
            raise FileNotFoundError(f"mesh.mesh_dir: {p} not found; point mesh_dir at the CFD-GCN meshes "
                                    f"or set mesh.source = \"naca\"")
    return Mesh.read(paths[0]), Mesh.read(paths[1])


class CoarseSolve:
    """(theta (flat), (aoa, mach)) -> coarse (u, v, Cp): one row of the batched hybrid op
    (picklable: a worker builds the solver once per token)."""

    def __init__(self, solver, points, h):
        self.solver, self.points, self.h = solver, points, h
        self.token = solver_token(solver)

    def __call__(self, theta, condition):
        coords = self.points + self.h[:, None] * np.asarray(theta, dtype=np.float64).reshape(-1, 2)
        aoa, mach = (float(c) for c in condition)
        return _solve_with(self.token, self.solver, {"aoa": aoa, "mach": mach, "coords": coords}).fields[:, :3]


class Problem:
    """Meshes, solver, data and split: everything the methods share."""

    def __init__(self, cfg, log=None, progress=True):
        say = log.info if log else (lambda *a: None)
        self.coarse, self.fine = load_meshes(cfg["mesh"])
        self.solver = PotentialFlow(self.coarse)
        d = cfg["data"]
        self.machs = split_machs(d["split"], d["train_mach"], d["test_mach"])
        data = generate(PotentialFlow(self.fine), grid(self.machs[0] + self.machs[1], d["aoa_step"]), d["cache_dir"],
                        progress=progress)
        say("fine data: %d of %d conditions solved (%d failed, left out for every method)", len(data),
            len(data) + len(data.failed), len(data.failed))
        self.failed = [(a, m, "fine solve: " + why.splitlines()[0]) for a, m, why in data.failed]
        base, keep = {}, []
        for i, (a, m) in enumerate(data.conditions):
            try:
                base[len(keep)] = self.solver.solve(aoa=float(a), mach=float(m)).fields[:, :3]
                keep.append(i)
            except SolverError as err:
                self.failed.append((float(a), float(m), "coarse solve: " + str(err).splitlines()[0]))
        if len(keep) < len(data):
            say("%d conditions dropped: coarse solve failed", len(data) - len(keep))
        self.conditions = data.conditions[keep]
        self.targets = torch.as_tensor(data.fields[keep])
        data.conditions, data.fields = self.conditions, data.fields[keep]
        self.train, self.test = data.split(*self.machs)
        say("%s split: %d train, %d test conditions", d["split"], len(self.train), len(self.test))
        self.base = [torch.as_tensor(base[i]) for i in range(len(keep))]
        g = mesh_to_graph(self.fine)
        self.edge_index = g.edge_index
        self.features = [node_features(self.fine.points, g.is_airfoil, float(a), float(m)) for a, m in self.conditions]
        self.up = Upsampler(self.fine.points, self.coarse.triangles, cfg["model"]["interpolation"])
        self.fixed_z = {}
        # displacement unit h per coarse node (0 on the boundary) and original cell areas
        pts, e = self.coarse.points, self.coarse.edges()
        length = np.linalg.norm(pts[e[:, 0]] - pts[e[:, 1]], axis=1)
        short = np.full(len(pts), np.inf)
        np.minimum.at(short, e[:, 0], length), np.minimum.at(short, e[:, 1], length)
        self.h = cfg["zo"]["scale"] * short * (self.coarse.node_type() == 0)
        self.area0 = signed_areas(pts, self.coarse.triangles)

    def upsampled_mse(self, idx) -> float:
        """The no-learning baseline: MSE of the coarse solution (fixed mesh) upsampled to the fine nodes."""
        pts = self.coarse.points
        return float(np.mean([float(torch.mean((self.up(self.base[i], pts) - self.targets[i]) ** 2)) for i in idx]))


class Trainer:
    """One method's model, optimizers, coarse displacement theta and black boxes; epochs and evaluation."""

    def __init__(self, prob: Problem, cfg, method=None, sampler=None, executor=None):
        self.p, self.cfg = prob, cfg
        self.method = method or cfg["model"]["method"]
        m, t, z, seed = cfg["model"], cfg["train"], cfg["zo"], cfg["seed"]
        torch.manual_seed(seed)
        extra = 0 if self.method == "gcn" else 3
        self.model = CFDGCN(prob.features[0].shape[1] + extra, m["hidden"], m["layers"])
        self.opt = torch.optim.Adam(self.model.parameters(), lr=t["lr"])
        self.gen = torch.Generator().manual_seed(seed)
        self.epoch, self.evaluations = 0, 0
        self.theta = torch.zeros(len(prob.coarse.points) * 2, dtype=torch.float64, requires_grad=True)
        self.theta_opt = torch.optim.Adam([self.theta], lr=z["lr"])
        # one batched op: row b of a mini-batch is theta at condition b, with its own directions and
        # DAP guide (keyed by the condition's index)
        self.box = None
        if self.method == "zo":
            model = None
            if z["jacobian_model"] == "node_carried":
                from .jacobian_models import NodeCarried

                model = NodeCarried(prob.coarse.triangles, self.coords)
            self.box = BlackBox(CoarseSolve(prob.solver, prob.coarse.points, prob.h), batched=True,
                                sampler=sampler or z["sampler"], estimator=z["estimator"], queries=z["queries"],
                                mu=z["mu"], numpy_io=True, executor=executor, jacobian_model=model, seed=seed)
        self.zo_grad_norm = 0.0

    # ------------------------------------------------------------------ pieces
    def coords(self, theta=None):
        theta = self.theta if theta is None else theta
        return torch.as_tensor(self.p.coarse.points) + torch.as_tensor(self.p.h)[:, None] * theta.reshape(-1, 2)

    def predict(self, i, coarse_fields=None, coords=None):
        x = self.p.features[i]
        if self.method != "gcn":
            if coarse_fields is None:  # fixed coarse mesh: upsample once per condition
                if i not in self.p.fixed_z:
                    self.p.fixed_z[i] = self.p.up(self.p.base[i], self.p.coarse.points).float()
                z = self.p.fixed_z[i]
            else:
                z = self.p.up(coarse_fields, coords).float()
            x = torch.cat([x, z], dim=1)
        return self.model(x, self.p.edge_index)

    def _record(self, g):
        self.zo_grad_norm = float(g.norm())

    def train_epoch(self):
        """One pass over the train conditions in mini-batches; returns (mean batch loss, skipped)."""
        order = self.p.train[torch.randperm(len(self.p.train), generator=self.gen).numpy()]
        losses, skipped, bs = [], 0, self.cfg["train"]["batch"]
        for s in range(0, len(order), bs):
            self.opt.zero_grad()
            self.theta_opt.zero_grad()
            batch = [int(i) for i in order[s:s + bs]]
            fields = {}
            if self.method == "zo":
                fields, failed = self._coarse_fields(batch)
                skipped += len(failed)
                batch = [i for i in batch if i not in failed]
            terms = [torch.mean((self.predict(i, fields.get(i), self.coords() if fields else None)
                                 - self.p.targets[i]) ** 2) for i in batch]
            if not terms:
                continue
            loss = torch.stack(terms).mean()
            loss.backward()
            self.opt.step()
            if self.method == "zo":
                self.theta_step()
            losses.append(float(loss.detach()))
        if self.method == "zo":
            self.evaluations = self.box.evaluations
        self.epoch += 1
        return (float(np.mean(losses)) if losses else float("nan")), skipped

    def _coarse_fields(self, batch):
        """({condition: coarse fields (n, 3) through the batched op}, conditions whose solve failed)."""
        failed = set()
        while True:
            rows = [i for i in batch if i not in failed]
            if not rows:
                return {}, failed
            theta_box = self.theta * 1.0
            theta_box.register_hook(self._record)
            conditions = torch.as_tensor(self.p.conditions[rows], dtype=torch.float64)
            try:
                y = self.box(theta_box.expand(len(rows), -1), conditions, keys=rows)
            except SolverError as err:
                failed.update(rows[r] for r in getattr(err, "rows", range(len(rows))))
                continue
            return {i: y[b].reshape(-1, 3) for b, i in enumerate(rows)}, failed

    def theta_step(self):
        """Adam step on theta, halved until every cell keeps zo.min_area of its original area."""
        z, old = self.cfg["zo"], self.theta.detach().clone()
        self.theta_opt.step()
        new = self.theta.detach().clone()
        tri = self.p.coarse.triangles
        for k in range(z["max_halvings"] + 1):
            cand = old + 0.5 ** k * (new - old)
            if (signed_areas(self.coords(cand).numpy(), tri) >= z["min_area"] * self.p.area0).all():
                break
        else:
            cand = old
        with torch.no_grad():
            self.theta.copy_(cand)

    @torch.no_grad()
    def evaluate(self, idx):
        """(MSE over the conditions idx, number whose coarse solve failed and were left out)."""
        errs, failed = [], 0
        coords = self.coords().detach()
        for i in idx:
            i = int(i)
            if self.method == "zo":
                a, m = self.p.conditions[i]
                try:
                    y = torch.as_tensor(self.p.solver.solve(aoa=float(a), mach=float(m),
                                                            coords=coords.numpy()).fields[:, :3])
                except SolverError:
                    failed += 1
                    continue
                pred = self.predict(i, y, coords)
            else:
                pred = self.predict(i)
            errs.append(float(torch.mean((pred - self.p.targets[i]) ** 2)))
        return (float(np.mean(errs)) if errs else float("nan")), failed

    def displacement(self):
        d = (self.coords() - torch.as_tensor(self.p.coarse.points)).detach().norm(dim=1)
        return float(d[torch.as_tensor(self.p.h > 0)].mean())

    # --------------------------------------------------------------- state
    def state_dict(self):
        return {"epoch": self.epoch, "model": self.model.state_dict(), "opt": self.opt.state_dict(),
                "theta": self.theta.detach().clone(), "theta_opt": self.theta_opt.state_dict(),
                "gen": self.gen.get_state(), "torch_rng": torch.get_rng_state(), "evaluations": self.evaluations,
                "box": None if self.box is None else self.box.state_dict()}

    def load_state_dict(self, s):
        self.epoch, self.evaluations = s["epoch"], s["evaluations"]
        self.model.load_state_dict(s["model"])
        self.opt.load_state_dict(s["opt"])
        with torch.no_grad():
            self.theta.copy_(s["theta"])
        self.theta_opt.load_state_dict(s["theta_opt"])
        self.gen.set_state(s["gen"])
        torch.set_rng_state(s["torch_rng"])
        if self.box is not None:
            self.box.load_state_dict(s["box"])


def run(run):
    """Train (or resume) one method in run.path."""
    cfg = run.config
    prob = Problem(cfg, run.logger)
    workers = cfg["zo"]["workers"]
    with ProcessPoolExecutor(workers) if workers > 1 else nullcontext() as pool:
        train(run, prob, Trainer(prob, cfg, executor=pool))


def train(run, prob, tr):
    cfg = run.config
    state = run.load_checkpoint()
    if state is not None:
        tr.load_state_dict(state)
        run.logger.info("resuming at epoch %d", tr.epoch)
    epochs = cfg["train"]["epochs"]
    run.logger.info("method %s: %d coarse / %d fine nodes, %d epochs", tr.method, len(prob.coarse.points),
                    len(prob.fine.points), epochs)
    bar = run.progress(total=epochs, initial=tr.epoch, desc=f"cfd-gcn {tr.method}")
    while tr.epoch < epochs:
        t0 = time.perf_counter()
        train_loss, skipped = tr.train_epoch()
        seconds = time.perf_counter() - t0
        test_loss, _ = tr.evaluate(prob.test)
        run.log_metrics(tr.epoch, train_loss=train_loss, test_loss=test_loss, evaluations=tr.evaluations,
                        displacement=tr.displacement(), skipped=skipped, epoch_seconds=round(seconds, 3))
        if tr.epoch % cfg["train"]["checkpoint_every"] == 0 or tr.epoch == epochs:
            run.save_checkpoint(tr.state_dict(), tr.epoch)
        bar.update()
    bar.close()
    report(run, tr)


def field_plot(path, mesh, true, pred, title):
    """True and predicted nodal field side by side on the fine mesh (near the airfoil)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4), dpi=110)
    FigureCanvasAgg(fig)
    lo, hi = float(min(true.min(), pred.min())), float(max(true.max(), pred.max()))
    for k, (vals, name) in enumerate(((true, "true"), (pred, "predicted"))):
        ax = fig.add_subplot(1, 2, k + 1)
        im = ax.tripcolor(mesh.points[:, 0], mesh.points[:, 1], mesh.triangles, vals, shading="gouraud",
                          vmin=lo, vmax=hi, cmap="viridis")
        ax.set(xlim=(-0.5, 1.5), ylim=(-0.75, 0.75), aspect="equal", title=f"{title}: {name}")
        fig.colorbar(im, ax=ax, shrink=0.8)
    fig.tight_layout()
    fig.savefig(path)
    return Path(path)


def report(run, tr):
    rows = run.read_metrics()
    ep = [int(r["step"]) for r in rows]
    loss_png = line_plot(run.plot_path("loss"), {"train": (ep, [float(r["train_loss"]) for r in rows]),
                                                 "test": (ep, [float(r["test_loss"]) for r in rows])},
                         xlabel="epoch", ylabel="MSE (u, v, Cp)", title=f"CFD-GCN ({tr.method})", logy=True)
    p = tr.p
    i = int(p.test[0])
    with torch.no_grad():
        if tr.method == "zo":
            a, m = p.conditions[i]
            coords = tr.coords().detach()
            pred = tr.predict(i, torch.as_tensor(p.solver.solve(aoa=float(a), mach=float(m),
                                                                coords=coords.numpy()).fields[:, :3]), coords)
        else:
            pred = tr.predict(i)
    a, m = p.conditions[i]
    cp_png = field_plot(run.plot_path("cp_test"), p.fine, p.targets[i][:, 2].numpy(), pred[:, 2].numpy(),
                        f"Cp, aoa={a:.1f}, M={m:.2f}")
    run.logger.info("final: train_loss %s, test_loss %s; plots: %s, %s", rows[-1]["train_loss"],
                    rows[-1]["test_loss"], loss_png, cp_png)
