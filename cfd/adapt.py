"""Mesh adaptation through a black-box solver: node-motion modes, safe steps, the loss.

Parametrization (``MeshModes``): K smooth modes phi_k = the K lowest eigenvectors
of the mesh graph Laplacian restricted to interior nodes (boundary nodes fixed,
Dirichlet), each scaled to max |phi_k| = 1. With h_i = the smallest altitude of
the cells around node i and Theta (K, 2) = theta.reshape(K, 2),

    coords(theta) = X0 + (h / 2) * (Phi @ Theta)          (linear, torch)

so a node moves at most h_i/2 * ||(Phi Theta)_i||: below half its smallest
cell altitude while that norm is < 1, which keeps cells valid in practice;
``backtrack`` enforces it (a step is halved until every cell keeps at least
``min_area_ratio`` of its initial signed area).

Loss: for flow conditions c with fine-mesh fields G_c (N, F),

    L_c(theta) = mean_{j, f} (P(coords) F_c(coords))_{jf} - G_{c,jf})^2 / var_f

with F_c(coords) the coarse solver's nodal fields (a ``zosci.BlackBox``: its
Jacobian is estimated by ZO), P(coords) barycentric interpolation from the coarse
to the fine nodes, and var_f the variance of field f over all targets. The cell
holding each fine node is located from the current coords (piecewise constant);
the barycentric weights are torch functions of coords, so autograd
differentiates them. Fine nodes outside the coarse domain (the far-field circle
is a polygon) use the nearest cell with weights clamped to >= 0 and renormalized.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from zosci.hybrid import BlackBox


# --------------------------------------------------------------- parametrization
def graph_laplacian(n: int, edges: np.ndarray) -> sp.csr_matrix:
    """L = D - A of the undirected mesh graph (unit edge weights)."""
    a = sp.coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n, n))
    a = ((a + a.T) > 0).astype(np.float64)
    return (sp.diags(np.asarray(a.sum(axis=1)).ravel()) - a).tocsr()


def min_altitudes(points: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """Per node: the smallest altitude (2 area / longest edge) of its cells."""
    p = points[triangles]
    area2 = np.abs(np.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]))
    longest = np.max([np.linalg.norm(p[:, i] - p[:, (i + 1) % 3], axis=1) for i in range(3)], axis=0)
    alt = area2 / longest
    h = np.full(len(points), np.inf)
    for k in range(3):
        np.minimum.at(h, triangles[:, k], alt)
    return h


def _boundary_loop(mesh, name: str, start: int) -> np.ndarray:
    """Nodes of the closed boundary `name` in loop order, beginning at node `start`."""
    nbrs: dict = {}
    for a, b in mesh.boundaries[name]:
        nbrs.setdefault(int(a), []).append(int(b))
        nbrs.setdefault(int(b), []).append(int(a))
    loop, prev = [start], None
    while True:
        nxt = [q for q in nbrs[loop[-1]] if q != prev]
        if not nxt or nxt[0] == start:
            break
        prev = loop[-1]
        loop.append(nxt[0])
    if len(loop) != len(nbrs):
        raise ValueError(f"boundary {name!r} is not one closed loop ({len(loop)} of {len(nbrs)} nodes reached)")
    return np.asarray(loop)


class _AirfoilSpline:
    """The airfoil as a cubic spline x(s) through its nodes (s: arc length of the polyline from the
    trailing edge, once around); x(s_i) = the original node i, so sliding keeps the discrete shape up
    to the spline's interpolation between nodes. The TE (s = 0 = S) is a knot at both ends (a corner)."""

    def __init__(self, points: np.ndarray, loop: np.ndarray):
        from scipy.interpolate import CubicSpline

        xy = points[np.append(loop, loop[0])]
        s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(xy, axis=0), axis=1))])
        self.nodes, self.s0 = loop[1:], s[1:-1]          # the sliding nodes (TE excluded) and their s
        cs = CubicSpline(s, xy, bc_type="not-a-knot")
        self.knots = torch.as_tensor(s)
        self.coef = torch.as_tensor(cs.c)                  # (4, m, 2)
        d = cs(self.s0, 1)
        self.tangent = d / np.linalg.norm(d, axis=1, keepdims=True)  # unit dx/ds at the nodes

    def __call__(self, s: torch.Tensor) -> torch.Tensor:
        s = s.clamp(float(self.knots[0]) + 1e-9, float(self.knots[-1]) - 1e-9)
        i = (torch.searchsorted(self.knots, s.detach()) - 1).clamp(0, len(self.knots) - 2)
        ds = (s - self.knots.to(s.dtype)[i])[:, None]
        c = self.coef.to(s.dtype)[:, i]
        return ((c[0] * ds + c[1]) * ds + c[2]) * ds + c[3]


class MeshModes:
    """theta (2K,) -> coords (n, 2) = X0 + h/2 * Phi Theta, boundary nodes fixed or sliding.

    boundary "fixed": Phi = the K lowest Dirichlet Laplacian modes on the interior nodes (module docstring).
    boundary "slide": Phi = the K lowest Laplacian modes on every node but the airfoil's trailing edge (fixed
    for the Kutta condition); interior nodes move by d_i = h_i/2 (Phi Theta)_i, airfoil nodes slide along a
    cubic spline through the original airfoil nodes by the tangential part of d_i (arc length
    s_i = s0_i + t_i . d_i), far-field nodes slide along their circle (angle += t_i . d_i / r_i).
    """

    def __init__(self, mesh, modes: int = 16, boundary: str = "fixed"):
        from scipy.sparse.linalg import eigsh

        if boundary not in ("fixed", "slide"):
            raise ValueError(f"boundary: must be 'fixed' or 'slide', got {boundary!r}")
        self.mesh, self.points0, self.boundary = mesh, mesh.points.copy(), boundary
        ntype = mesh.node_type()
        self.interior = np.flatnonzero(ntype == 0)
        if boundary == "slide":
            from zosci.solvers.mesh import airfoil_geometry

            te = airfoil_geometry(mesh)["te"]
            self.spline = _AirfoilSpline(self.points0, _boundary_loop(mesh, "airfoil", te))
            self.far = np.flatnonzero(ntype == 2)
            self.centre = np.zeros(2)
            rel = self.points0[self.far] - self.centre
            self.far_r = np.linalg.norm(rel, axis=1)
            self.far_a0 = np.arctan2(rel[:, 1], rel[:, 0])
            self.far_t = np.column_stack([-np.sin(self.far_a0), np.cos(self.far_a0)])
            movable = np.setdiff1d(np.arange(len(mesh.points)), [te])
        else:
            movable = self.interior
        n_mov = len(movable)
        if not 1 <= modes < n_mov:
            raise ValueError(f"modes: must be in 1..{n_mov - 1} for a mesh with {n_mov} movable nodes, got {modes}")
        L = graph_laplacian(len(mesh.points), mesh.edges())[movable][:, movable]
        if n_mov <= 1500:
            _, vecs = np.linalg.eigh(L.toarray())
            vecs = vecs[:, :modes]
        else:
            vals, vecs = eigsh(L.tocsc(), k=modes, sigma=0, which="LM")
            vecs = vecs[:, np.argsort(vals)]
        vecs = vecs / np.abs(vecs).max(axis=0)
        vecs = vecs * np.sign(vecs.sum(axis=0) + 1e-300)  # deterministic sign
        self.K = modes
        self.dim = 2 * modes
        self.h = min_altitudes(self.points0, mesh.triangles)
        basis = np.zeros((len(mesh.points), modes))
        basis[movable] = vecs * (0.5 * self.h[movable])[:, None]
        self.basis = torch.as_tensor(basis)          # (n, K): h_i/2 phi_k(i)
        self.x0 = torch.as_tensor(self.points0)
        self.area0 = mesh.signed_areas()

    def coords(self, theta: torch.Tensor) -> torch.Tensor:
        """Node positions (n, 2) for theta (2K,); differentiable."""
        d = self.basis.to(theta.dtype) @ theta.reshape(self.K, 2)
        x = self.x0.to(theta.dtype) + d
        if self.boundary == "slide":
            sp_ = self.spline
            s = torch.as_tensor(sp_.s0, dtype=theta.dtype) + (d[sp_.nodes] * torch.as_tensor(sp_.tangent)).sum(1)
            x = x.index_copy(0, torch.as_tensor(sp_.nodes), sp_(s))
            a = torch.as_tensor(self.far_a0) + (d[self.far] * torch.as_tensor(self.far_t)).sum(1) / torch.as_tensor(self.far_r)
            r = torch.as_tensor(self.far_r, dtype=theta.dtype)[:, None]
            far = torch.as_tensor(self.centre, dtype=theta.dtype) + r * torch.stack([torch.cos(a), torch.sin(a)], 1)
            x = x.index_copy(0, torch.as_tensor(self.far), far)
        return x

    def coords_np(self, theta) -> np.ndarray:
        return self.coords(torch.as_tensor(np.asarray(theta), dtype=torch.float64)).numpy()

    def area_ratio(self, theta) -> float:
        """min over cells of signed area(coords(theta)) / initial area (< 0: inverted)."""
        x = self.coords_np(theta)
        p = x[self.mesh.triangles]
        area = 0.5 * np.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0])
        return float((area / self.area0).min())

    def min_angle(self, theta) -> float:
        """Smallest cell angle (degrees) at coords(theta)."""
        from zosci.solvers.quality import min_angles

        return float(np.min(min_angles(self.coords_np(theta), self.mesh.triangles)))

    def mesh_at(self, theta):
        """The moved Mesh (same topology)."""
        return self.mesh.with_points(self.coords_np(theta))


def feasible(modes: MeshModes, theta, min_area_ratio: float = 0.2, min_angle: float = 0.0) -> bool:
    """Every cell keeps >= min_area_ratio of its initial signed area and (if min_angle > 0) an angle
    >= min_angle degrees."""
    if modes.area_ratio(theta) < min_area_ratio:
        return False
    return min_angle <= 0 or modes.min_angle(theta) >= min_angle


def backtrack(modes: MeshModes, theta, step, min_area_ratio: float = 0.2, shrink: float = 0.5, max_tries: int = 30,
              min_angle: float = 0.0):
    """(theta + t step, t, tries): the largest t = shrink^j (j < max_tries) keeping every cell at
    >= min_area_ratio of its initial area (and min_angle degrees, if > 0); t = 0 (theta unchanged) if none does."""
    theta = torch.as_tensor(theta, dtype=torch.float64)
    step = torch.as_tensor(step, dtype=torch.float64)
    t = 1.0
    for tries in range(1, max_tries + 1):
        new = theta + t * step
        if feasible(modes, new, min_area_ratio, min_angle):
            return new, t, tries
        t *= shrink
    return theta.clone(), 0.0, max_tries


# ----------------------------------------------------------------- interpolation
def barycentric(p: torch.Tensor, tri_xy: torch.Tensor) -> torch.Tensor:
    """Barycentric coordinates (N, 3) of points p (N, 2) in triangles tri_xy (N, 3, 2)."""
    a, b, c = tri_xy[:, 0], tri_xy[:, 1], tri_xy[:, 2]
    v0, v1, v2 = b - a, c - a, p - a
    den = v0[:, 0] * v1[:, 1] - v1[:, 0] * v0[:, 1]
    lb = (v2[:, 0] * v1[:, 1] - v1[:, 0] * v2[:, 1]) / den
    lc = (v0[:, 0] * v2[:, 1] - v2[:, 0] * v0[:, 1]) / den
    return torch.stack([1 - lb - lc, lb, lc], dim=1)


class Interpolator:
    """P(coords) values: P1 interpolation of nodal values on a triangle mesh at fixed target points."""

    def __init__(self, triangles: np.ndarray, targets: np.ndarray, neighbours: int = 16):
        self.triangles = np.asarray(triangles, dtype=np.int64)
        self.targets = torch.as_tensor(np.asarray(targets, dtype=np.float64))
        self.neighbours = neighbours

    def locate(self, coords: np.ndarray) -> np.ndarray:
        """Cell index per target: the containing cell, else the cell with the largest min weight."""
        import matplotlib.tri as mtri
        from scipy.spatial import cKDTree

        tri = mtri.Triangulation(coords[:, 0], coords[:, 1], self.triangles)
        cells = np.asarray(tri.get_trifinder()(*self.targets.numpy().T), dtype=np.int64)
        out = np.flatnonzero(cells < 0)
        if len(out):
            k = min(self.neighbours, len(self.triangles))
            _, cand = cKDTree(coords[self.triangles].mean(axis=1)).query(self.targets.numpy()[out], k=k)
            cand = cand.reshape(len(out), k)
            p = np.repeat(self.targets.numpy()[out], k, axis=0)
            lam = barycentric(torch.as_tensor(p), torch.as_tensor(coords[self.triangles[cand.ravel()]])).numpy()
            best = lam.min(axis=1).reshape(len(out), k).argmax(axis=1)
            cells[out] = cand[np.arange(len(out)), best]
        return cells

    def inside(self, coords: np.ndarray, tol: float = 1e-9) -> np.ndarray:
        """Bool (N,): the targets inside the mesh at coords (barycentric weights >= -tol in their cell)."""
        cells = self.locate(coords)
        lam = barycentric(self.targets, torch.as_tensor(np.asarray(coords, dtype=np.float64)[self.triangles[cells]]))
        return (lam.min(dim=1).values >= -tol).numpy()

    def weights(self, coords: torch.Tensor):
        """(node indices (N, 3), weights (N, 3)); weights differentiable in coords."""
        cells = self.locate(coords.detach().numpy())
        nodes = torch.as_tensor(self.triangles[cells])
        lam = barycentric(self.targets.to(coords.dtype), coords[nodes])
        lam = lam.clamp_min(0)
        return nodes, lam / lam.sum(dim=1, keepdim=True)

    def __call__(self, coords: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """values (n, F) on the mesh -> (N, F) at the targets."""
        nodes, lam = self.weights(coords)
        return (values[nodes] * lam[..., None].to(values.dtype)).sum(dim=1)


# ---------------------------------------------------------------- the black box
class FieldFn:
    """coords (n, 2) numpy -> the solver's nodal fields (n, F) at one flow condition.

    Picklable for executors: workers reuse one built solver per solver token.
    """

    def __init__(self, solver, aoa: float, mach: float, columns):
        from zosci.solvers.pool import solver_token

        self.solver, self.aoa, self.mach, self.columns = solver, float(aoa), float(mach), list(columns)
        self.token = solver_token(solver)

    def __call__(self, coords):
        from zosci.solvers.pool import _solve_with

        coords = np.asarray(coords, dtype=np.float64)
        r = _solve_with(self.token, self.solver, {"aoa": self.aoa, "mach": self.mach, "coords": coords})
        return r.fields[:, self.columns]


class ThetaFieldFn:
    """theta (2K,) numpy -> FieldFn(coords(theta)): the black box when ZO perturbs theta."""

    def __init__(self, field_fn: FieldFn, modes: MeshModes):
        self.field_fn, self.modes = field_fn, modes

    def __call__(self, theta):
        return self.field_fn(self.modes.coords_np(theta))


FIELD_NAMES = ("u", "v", "Cp", "rho")


def fine_targets(fine_solver, conditions, columns) -> np.ndarray:
    """(C, N, F) fine-mesh fields per condition (aoa, mach)."""
    return np.stack([fine_solver.solve(aoa=a, mach=m).fields[:, columns] for a, m in conditions])


class AdaptationLoss:
    """Per-condition losses L_c(theta) (module docstring); the solves go through BlackBoxes.

    zo_space "theta": each box wraps theta -> fields(coords(theta)) (ZO in 2K dims);
    "coords": each box wraps coords -> fields (ZO in 2n dims) and autograd maps to theta.
    jacobian_model "node_carried": each box gets zosci.cfd.jacobian_models.NodeCarried as its control
    variate (linearized by the box at its forward's point and output). solver_calls counts every solve: forwards plus the boxes' queries.
    """

    def __init__(self, coarse_solver, modes: MeshModes, fine_points, targets, conditions, columns,
                 zo_space: str = "theta", sampler="gaussian", estimator="forward", queries: int = 8,
                 mu: float = 1e-3, executor=None, seed: int = 0, jacobian_model: str = "none"):
        if jacobian_model not in ("none", "node_carried"):
            raise ValueError(f"jacobian_model: must be 'none' or 'node_carried', got {jacobian_model!r}")
        if zo_space not in ("theta", "coords"):
            raise ValueError(f"zo_space: must be 'theta' or 'coords', got {zo_space!r}")
        self.modes, self.zo_space = modes, zo_space
        self.interp = Interpolator(modes.mesh.triangles, fine_points)
        self.targets = torch.as_tensor(np.asarray(targets, dtype=np.float64))
        self.scale = self.targets.reshape(-1, self.targets.shape[-1]).var(dim=0).clamp_min(1e-12)
        self.conditions = [(float(a), float(m)) for a, m in conditions]
        self.fns = [FieldFn(coarse_solver, a, m, columns) for a, m in self.conditions]
        if zo_space == "theta":
            self.fns = [ThetaFieldFn(f, modes) for f in self.fns]
        self.model = None
        if jacobian_model == "node_carried":  # control variate: nodal values carried with their nodes
            from .jacobian_models import NodeCarried

            self.model = NodeCarried(modes.mesh.triangles, modes.coords if zo_space == "theta" else None)
        self.boxes = [BlackBox(f, sampler=sampler, estimator=estimator, queries=queries, mu=mu, executor=executor,
                               numpy_io=True, seed=seed * 1009 + i, jacobian_model=self.model)
                      for i, f in enumerate(self.fns)]
        self.forward_calls = 0

    @property
    def solver_calls(self) -> int:
        return self.forward_calls + sum(b.evaluations for b in self.boxes)

    def __call__(self, theta: torch.Tensor) -> torch.Tensor:
        """(C,) losses at theta; backward runs the ZO queries."""
        coords = self.modes.coords(theta)
        nodes, lam = self.interp.weights(coords)
        out = []
        for box, target in zip(self.boxes, self.targets):
            fields = box(theta if self.zo_space == "theta" else coords)
            self.forward_calls += 1
            pred = (fields[nodes] * lam[..., None]).sum(dim=1)
            out.append((((pred - target) ** 2) / self.scale).mean())
        return torch.stack(out)

    def value(self, theta) -> np.ndarray:
        """(C,) losses without gradient (one solve per condition, counted)."""
        with torch.no_grad():
            return self(torch.as_tensor(np.asarray(theta), dtype=torch.float64)).numpy()

    def state_dict(self) -> dict:
        return {"forward_calls": self.forward_calls, "boxes": [b.state_dict() for b in self.boxes]}

    def load_state_dict(self, state: dict) -> None:
        self.forward_calls = state["forward_calls"]
        for b, s in zip(self.boxes, state["boxes"]):
            b.load_state_dict(s)


def adam_step(loss: AdaptationLoss, theta: torch.Tensor, opt, min_area_ratio: float = 0.2, min_angle: float = 0.0):
    """One step: losses (C,) at theta, ZO-hybrid gradient, Adam proposal, backtracked onto valid meshes.
    Returns (losses at the old theta, accepted step length t)."""
    theta.grad = None
    losses = loss(theta)
    losses.sum().backward()
    old = theta.detach().clone()
    opt.step()
    with torch.no_grad():
        new, t, _ = backtrack(loss.modes, old, theta.detach() - old, min_area_ratio, min_angle=min_angle)
        theta.copy_(new)
    return losses.detach().numpy(), t


__all__ = ["MeshModes", "backtrack", "feasible", "Interpolator", "barycentric", "FieldFn", "ThetaFieldFn", "AdaptationLoss",
           "fine_targets", "adam_step", "graph_laplacian", "min_altitudes", "FIELD_NAMES"]
