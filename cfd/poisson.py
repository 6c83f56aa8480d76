"""The DAP paper's mesh problem (Ma & Huang, ICLR 2025): move a coarse mesh so its Poisson solution
matches a fine one.

-Laplace(u) = 1 on the unit square, u = 0 on its boundary, P1 elements on structured
triangulations (``unit_square(n)``: n x n squares, each cut along its lower-left to upper-right
diagonal, as MFEM's ``Mesh(n, n, "TRIANGLE")``). The interior coarse vertices z (m, 2) move; the loss is

    L(z) = sqrt( mean_j ( (P(x) u_c(x))_j - u_f,j )^2 ),      x = coarse coords with interior z,

u_c(x) the coarse solution, u_f the fine one and P(x) P1 interpolation from the coarse mesh
at the fine vertices (barycentric weights in the coarse cell holding each fine vertex).

Two black boxes give u_c(x): ``DolfinxPoisson`` (dolfinx, the reference solver) and
``solve_p1`` (the same P1 assembly in torch, batched and differentiable: autograd gives the exact
Jacobian du_c/dx). The element matrices are K_T = |T| G G^T, G the gradients of the barycentric
functions, and the load b_T = |T|/3 per vertex; the Dirichlet system is K_II u_I = b_I.
"""
from __future__ import annotations

import numpy as np
import torch

from zosci.solvers.errors import MeshError
from zosci.solvers.mesh import Mesh
from zosci.solvers.quality import signed_areas


# ------------------------------------------------------------------ meshes
def unit_square(n: int) -> Mesh:
    """n x n squares of the unit square, two triangles each (diagonal (i, j)-(i+1, j+1)), CCW.

    Node (i, j) (x = i/n, y = j/n) has index j (n + 1) + i; boundary marker "wall"."""
    if not (isinstance(n, int) and n >= 2):
        raise ValueError(f"n: must be an integer >= 2, got {n!r}")
    t = np.linspace(0.0, 1.0, n + 1)
    xs, ys = np.meshgrid(t, t)
    points = np.column_stack([xs.ravel(), ys.ravel()])
    i, j = np.meshgrid(np.arange(n), np.arange(n))
    a = (j * (n + 1) + i).ravel()
    b, c, d = a + 1, a + n + 2, a + n + 1  # (i+1, j), (i+1, j+1), (i, j+1)
    triangles = np.concatenate([np.column_stack([a, b, c]), np.column_stack([a, c, d])])
    loop = np.concatenate([np.arange(n), n + np.arange(n) * (n + 1), (n + 1) * (n + 1) - 1 - np.arange(n),
                           n * (n + 1) - np.arange(n) * (n + 1)])
    walls = np.column_stack([loop, np.roll(loop, -1)])
    return Mesh(points, triangles, {"wall": walls})


def interior_nodes(mesh: Mesh) -> np.ndarray:
    """Indices of the nodes off every boundary marker (sorted)."""
    boundary = np.unique(np.concatenate([e.ravel() for e in mesh.boundaries.values()]))
    return np.setdiff1d(np.arange(len(mesh.points)), boundary)


# --------------------------------------------------------- torch P1 assembly
def p1_gradients(coords: torch.Tensor, triangles: torch.Tensor):
    """(signed areas (..., m), basis gradients G (..., m, 3, 2)) of the cells at coords (..., n, 2)."""
    p = coords[..., triangles, :]                           # (..., m, 3, 2)
    e = torch.roll(p, -2, dims=-2) - torch.roll(p, -1, dims=-2)  # p_{k+2} - p_{k+1}
    area = 0.5 * (e[..., 0, 0] * e[..., 1, 1] - e[..., 0, 1] * e[..., 1, 0])
    g = torch.stack([-e[..., 1], e[..., 0]], dim=-1) / (2 * area[..., None, None])  # grad lambda_k
    return area, g


def solve_p1(coords: torch.Tensor, triangles, interior) -> torch.Tensor:
    """u (..., n): P1 solution of -Laplace u = 1, u = 0 off `interior`, at coords (..., n, 2).

    Dense assembly and solve (torch.linalg.solve), batched over leading dims, differentiable."""
    tri = torch.as_tensor(np.asarray(triangles), dtype=torch.long)
    inner = torch.as_tensor(np.asarray(interior), dtype=torch.long)
    n = coords.shape[-2]
    area, g = p1_gradients(coords, tri)
    ke = area[..., None, None] * (g @ g.transpose(-1, -2))  # (..., m, 3, 3)
    batch = coords.shape[:-2]
    rows = (tri[:, :, None] * n + tri[:, None, :]).reshape(-1)
    K = coords.new_zeros(*batch, n * n).index_add(-1, rows, ke.reshape(*batch, -1)).reshape(*batch, n, n)
    b = coords.new_zeros(*batch, n).index_add(-1, tri.reshape(-1), (area[..., None] / 3).expand(*area.shape, 3).reshape(*batch, -1))
    K_ii = K[..., inner[:, None], inner[None, :]]
    u_i = torch.linalg.solve(K_ii, b[..., inner].unsqueeze(-1)).squeeze(-1)
    return coords.new_zeros(*batch, n).index_copy(-1, inner, u_i)


def check_orientation(coords: np.ndarray, triangles: np.ndarray, what: str = "moved mesh") -> None:
    """MeshError naming the first cell whose signed area is <= 0 (inverted or degenerate)."""
    area = signed_areas(coords, triangles)
    bad = np.flatnonzero(~(area > 1e-12 * np.abs(area).mean()))
    if bad.size:
        raise MeshError(f"{what}: cell {int(bad[0])} is inverted or degenerate (signed area {area[bad[0]]:.3g}); "
                        f"take a smaller step")


class TorchPoisson:
    """Black box coords (n, 2) -> u (n,) by the torch assembly (numpy or torch in, torch out)."""

    def __init__(self, mesh: Mesh):
        self.mesh, self.interior = mesh, interior_nodes(mesh)
        self.calls = 0

    def __call__(self, coords):
        x = torch.as_tensor(np.asarray(coords) if not isinstance(coords, torch.Tensor) else coords,
                            dtype=torch.float64).detach()
        check_orientation(x.reshape(-1, 2).numpy(), self.mesh.triangles)
        self.calls += 1
        return solve_p1(x, self.mesh.triangles, self.interior)


class DolfinxPoisson:
    """Black box coords (n, 2) -> u (n,) by dolfinx 0.5 (P1, PETSc LU); picklable (built on first use).

    The forms are compiled once; a call moves the geometry and reassembles."""

    def __init__(self, mesh: Mesh):
        self.mesh = mesh
        self.calls = 0
        self._built = None

    def __getstate__(self):
        return {"mesh": self.mesh, "calls": self.calls}

    def __setstate__(self, state):
        self.mesh, self.calls, self._built = state["mesh"], state["calls"], None

    def _build(self):
        import dolfinx
        import dolfinx.fem.petsc
        import ufl
        from petsc4py import PETSc

        from zosci.solvers.fem import DolfinxMesh

        dmesh = DolfinxMesh(self.mesh)
        V = dolfinx.fem.FunctionSpace(dmesh.dm, ("Lagrange", 1))
        u, v = ufl.TrialFunction(V), ufl.TestFunction(V)
        one = dolfinx.fem.Constant(dmesh.dm, PETSc.ScalarType(1.0))
        dofs_of_nodes = dmesh.dofs_of_nodes(V)
        wall = dofs_of_nodes[np.unique(np.concatenate(list(self.mesh.boundaries.values())))]
        bc = dolfinx.fem.dirichletbc(PETSc.ScalarType(0.0), np.asarray(np.sort(wall), dtype=np.int32), V)
        problem = dolfinx.fem.petsc.LinearProblem(ufl.inner(ufl.grad(u), ufl.grad(v)) * ufl.dx, one * v * ufl.dx,
                                                  bcs=[bc], petsc_options={"ksp_type": "preonly", "pc_type": "lu"})
        return dmesh, problem, dofs_of_nodes

    def __call__(self, coords) -> np.ndarray:
        if self._built is None:
            self._built = self._build()
        dmesh, problem, dofs = self._built
        coords = np.asarray(coords.detach() if isinstance(coords, torch.Tensor) else coords, dtype=np.float64)
        check_orientation(coords, self.mesh.triangles)
        dmesh.set_coords(coords)
        self.calls += 1
        uh = problem.solve()
        return uh.x.array[dofs].copy()


# ------------------------------------------------------------ interpolation
def barycentric_batched(p: torch.Tensor, tri_xy: torch.Tensor) -> torch.Tensor:
    """Barycentric coordinates (..., 3) of points p (..., 2) in triangles tri_xy (..., 3, 2)."""
    a, b, c = tri_xy[..., 0, :], tri_xy[..., 1, :], tri_xy[..., 2, :]
    v0, v1, v2 = b - a, c - a, p - a
    den = v0[..., 0] * v1[..., 1] - v1[..., 0] * v0[..., 1]
    lb = (v2[..., 0] * v1[..., 1] - v1[..., 0] * v2[..., 1]) / den
    lc = (v0[..., 0] * v2[..., 1] - v2[..., 0] * v0[..., 1]) / den
    return torch.stack([1 - lb - lc, lb, lc], dim=-1)


def _corners(coords: torch.Tensor, nodes: torch.Tensor) -> torch.Tensor:
    """coords (..., n, 2) at nodes (..., N, 3) -> (..., N, 3, 2) (same leading dims)."""
    flat = nodes.reshape(*nodes.shape[:-2], -1, 1).expand(*nodes.shape[:-2], -1, 2)
    return torch.gather(coords, -2, flat).reshape(*nodes.shape, 2)


class Locator:
    """P1 interpolation at fixed targets from a moving mesh, batched over meshes near a base mesh.

    ``at(base)`` finds each target's cell at the base coords (matplotlib's trifinder) and keeps as
    candidates the cells sharing a vertex with it; ``weights(coords)`` (coords (..., n, 2), each
    within a cell's reach of the base) picks per target the candidate with the largest minimum
    barycentric weight (the containing cell) and returns (nodes (..., N, 3), weights (..., N, 3)),
    differentiable in coords."""

    def __init__(self, triangles: np.ndarray, targets: np.ndarray):
        self.triangles = np.asarray(triangles, dtype=np.int64)
        self.targets = torch.as_tensor(np.asarray(targets, dtype=np.float64))
        n = int(self.triangles.max()) + 1
        cells_of = [[] for _ in range(n)]
        for c, tri in enumerate(self.triangles):
            for v in tri:
                cells_of[v].append(c)
        self.around = [np.unique(np.concatenate([cells_of[v] for v in tri])) for tri in self.triangles]
        width = max(len(a) for a in self.around)
        self.around = torch.as_tensor(np.stack([np.pad(a, (0, width - len(a)), mode="edge") for a in self.around]))
        self.base = None

    def at(self, base: np.ndarray) -> "Locator":
        import matplotlib.tri as mtri

        base = np.asarray(base, dtype=np.float64)
        tri = mtri.Triangulation(base[:, 0], base[:, 1], self.triangles)
        cells = np.asarray(tri.get_trifinder()(*self.targets.numpy().T), dtype=np.int64)
        if (cells < 0).any():
            raise MeshError(f"{int((cells < 0).sum())} target points lie outside the mesh; the boundary must stay fixed")
        self.cell = torch.as_tensor(cells)
        self.candidates = self.around[self.cell]  # (N, C)
        self.base = base.copy()
        return self

    def weights(self, coords: torch.Tensor):
        if self.base is None:
            raise RuntimeError("Locator.at(base) first")
        tris = torch.as_tensor(self.triangles)
        targets = self.targets.to(coords.dtype)
        batch = coords.shape[:-2]
        x = coords.detach().reshape(-1, *coords.shape[-2:])                 # (B, n, 2)
        with torch.no_grad():  # each target's base cell, else the candidate that contains it
            cell = self.cell.expand(len(x), -1).clone()                     # (B, N)
            lam = barycentric_batched(targets, _corners(x, tris[cell]))
            bi, ni = torch.nonzero(lam.min(dim=-1).values < -1e-12, as_tuple=True)
            if len(bi):
                cand = self.candidates[ni]                                   # (F, C)
                xy = x[bi[:, None, None], tris[cand]]                        # (F, C, 3, 2)
                score = barycentric_batched(targets[ni][:, None], xy).min(dim=-1).values
                if bool((score.max(dim=-1).values < -1e-9).any()):
                    raise MeshError("a target left its neighbourhood of cells (a step moved nodes by more than a "
                                    "cell); call Locator.at on the new base or take a smaller step")
                cell[bi, ni] = cand[torch.arange(len(bi)), score.argmax(dim=-1)]
        nodes = tris[cell].reshape(*batch, -1, 3)                            # (..., N, 3)
        return nodes, barycentric_batched(targets, _corners(coords, nodes))

    def __call__(self, coords: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """values (..., n) on the mesh at coords (..., n, 2) -> (..., N) at the targets."""
        nodes, lam = self.weights(coords)
        return (torch.gather(values, -1, nodes.reshape(*values.shape[:-1], -1)).reshape(nodes.shape) * lam).sum(-1)


# ----------------------------------------------------------------- problem
class PoissonMesh:
    """The DAP mesh problem: coarse (n_coarse^2 squares) and fine meshes, fine solution, the loss.

    z (m, 2) are the interior coarse vertices (initially the uniform grid ``z0``). ``solver`` names the
    black box ("torch" or "dolfinx") that computed the fine target and that ``black_box()`` builds."""

    def __init__(self, n_coarse: int = 10, n_fine: int = 20, solver: str = "torch"):
        if solver not in ("torch", "dolfinx"):
            raise ValueError(f"solver: must be 'torch' or 'dolfinx', got {solver!r}")
        self.coarse, self.fine = unit_square(n_coarse), unit_square(n_fine)
        self.interior = interior_nodes(self.coarse)
        self.x0 = torch.as_tensor(self.coarse.points)
        self.z0 = self.x0[self.interior].clone()
        self.solver_name = solver
        fine_u = self._make(self.fine)(self.fine.points)
        self.target = torch.as_tensor(np.asarray(fine_u), dtype=torch.float64)
        self.locator = Locator(self.coarse.triangles, self.fine.points).at(self.coarse.points)

    def _make(self, mesh):
        return (TorchPoisson if self.solver_name == "torch" else DolfinxPoisson)(mesh)

    def black_box(self):
        """z (m, 2) -> u_c (n,) float64 tensor through the named solver (no autograd: a black box)."""
        solver = self._make(self.coarse)
        return lambda z: torch.as_tensor(np.asarray(solver(self.coords(torch.as_tensor(z)))), dtype=torch.float64)

    @property
    def dim(self) -> int:
        return self.z0.numel()

    def coords(self, z: torch.Tensor) -> torch.Tensor:
        """Coarse coords (..., n, 2) with interior z (..., m, 2); boundary nodes fixed."""
        inner = torch.as_tensor(self.interior)
        x = self.x0.to(z.dtype).expand(*z.shape[:-2], *self.x0.shape)
        return x.index_copy(-2, inner, z)

    def rebase(self, z: torch.Tensor) -> None:
        """Locate the fine vertices in the mesh at z (once per optimization step)."""
        self.locator.at(self.coords(z.detach()).numpy())

    def loss_from(self, z: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """L = RMS(P(coords(z)) u - u_f), batched over leading dims; differentiable in z and u."""
        pred = self.locator(self.coords(z), u)
        return ((pred - self.target) ** 2).mean(dim=-1).sqrt()

    def solve(self, z: torch.Tensor) -> torch.Tensor:
        """u_c at z (torch assembly, differentiable; batched)."""
        return solve_p1(self.coords(z), self.coarse.triangles, self.interior)

    def loss(self, z: torch.Tensor) -> torch.Tensor:
        """L(z) through the torch assembly (differentiable: the exact gradient)."""
        return self.loss_from(z, self.solve(z))

    def min_area_ratio(self, z) -> float:
        x = self.coords(torch.as_tensor(z, dtype=torch.float64).detach()).numpy()
        return float((signed_areas(x, self.coarse.triangles) / signed_areas(self.coarse.points, self.coarse.triangles)).min())


def plain_gradient(f, x: torch.Tensor, sampler: str, queries: int, mu: float, generator):
    """The paper's plain ZO on the scalar loss f at x (1-D): (g, f(x), calls). Its DAP is guided by a
    sphere pilot of the same size, and the two estimates are averaged (2 (q + 1) calls)."""
    from zosci.gradient import estimate_gradient

    kw = dict(mu=mu, queries=queries, generator=generator, return_info=True)
    if sampler != "dap":
        g, info = estimate_gradient(f, x, sampler, **kw)
        return g, info.base, info.evaluations
    pilot, a = estimate_gradient(f, x, "sphere", **kw)
    g, b = estimate_gradient(f, x, "dap", guide=pilot, **kw)
    return (g + pilot) / 2, a.base, a.evaluations + b.evaluations


def backtrack(problem: PoissonMesh, z: torch.Tensor, step: torch.Tensor, min_area_ratio: float = 0.1,
              max_tries: int = 30):
    """(z + t step, t): the largest t = 2^-j (j < max_tries) keeping every cell at >= min_area_ratio of its
    initial area (no solve: geometry only); (z, 0) if none does."""
    t = 1.0
    for _ in range(max_tries):
        if problem.min_area_ratio(z + t * step) >= min_area_ratio:
            return z + t * step, t
        t *= 0.5
    return z.clone(), 0.0


__all__ = ["backtrack", "unit_square", "interior_nodes", "solve_p1", "p1_gradients", "TorchPoisson", "DolfinxPoisson",
           "Locator", "PoissonMesh", "check_orientation"]
