"""Steady incompressible Navier-Stokes around an airfoil, Taylor-Hood P2/P1, Newton.

Nondimensional with free-stream speed 1, density 1 and the chord c as length:
nu = c / Re.  Find (u, p) with

    nu (grad u, grad v) + ((u.grad) u, v) - (p, div v) - (q, div u) = 0,

u = 0 on `airfoil` (no slip), u = (cos a, sin a) on the whole `farfield` (Dirichlet;
at the far-field radii used, ~20 chords, the wake deficit there is small at Re <= a few
hundred) and p pinned to 0 at one far-field node; reported p is shifted so that its
far-field mean is 0, Cp = 2 p. Forces: F = -int_airfoil sigma n ds with
sigma = -p I + nu (grad u + grad u^T), n the facet normal (out of the fluid), and
cl, cd = 2 F . (e_lift, e_drag) / c.

Newton warm-starts from the previous converged solution; if it fails it restarts with
continuation in Reynolds number from Stokes-like flow (geometric steps, halved on failure).
"""
import math

import numpy as np

from .errors import SolverError
from .fem import DolfinxMesh, LazySolver, Result, newton_solve, newton_solver
from .mesh import airfoil_geometry

NAMES = ("u", "v", "p", "Cp")


def taylor_hood(dm):
    """Mixed P2 (vector) / P1 space on a dolfinx mesh."""
    import dolfinx
    import ufl

    cell = dm.ufl_cell()
    el = ufl.MixedElement([ufl.VectorElement("Lagrange", cell, 2), ufl.FiniteElement("Lagrange", cell, 1)])
    return dolfinx.fem.FunctionSpace(dm, el)


def ns_form(w, nu, f=None):
    """Residual of the steady NS equations for w = (u, p) in a Taylor-Hood space; optional body force f."""
    import ufl

    W = w.function_space
    u, p = ufl.split(w)
    v, q = ufl.TestFunctions(W)
    F = (nu * ufl.inner(ufl.grad(u), ufl.grad(v)) + ufl.inner(ufl.grad(u) * u, v)
         - p * ufl.div(v) - q * ufl.div(u)) * ufl.dx
    if f is not None:
        F = F - ufl.inner(f, v) * ufl.dx
    return F


class _Built:
    pass


class NavierStokes(LazySolver):
    """Steady NS solver: `NavierStokes(mesh_or_path).solve(aoa=deg, reynolds=Re, coords=None)`."""

    def __init__(self, mesh, newton_rtol=1e-9, max_it=20, re_start=20.0, re_factor=3.0):
        super().__init__(mesh, newton_rtol=newton_rtol, max_it=max_it, re_start=re_start, re_factor=re_factor)

    def _build(self):
        import dolfinx
        import ufl

        b = _Built()
        geo = airfoil_geometry(self.mesh)
        b.chord = geo["chord"]
        b.dmesh = DolfinxMesh(self.mesh)
        dm = b.dmesh.dm
        b.W = taylor_hood(dm)
        V, _ = b.W.sub(0).collapse()
        Q, _ = b.W.sub(1).collapse()
        b.w = dolfinx.fem.Function(b.W)
        b.nu = dolfinx.fem.Constant(dm, 1.0)
        b.u_far, b.zero_u = dolfinx.fem.Function(V), dolfinx.fem.Function(V)
        fdim = 1
        far = dolfinx.fem.locate_dofs_topological((b.W.sub(0), V), fdim, b.dmesh.facets("farfield"))
        wall = dolfinx.fem.locate_dofs_topological((b.W.sub(0), V), fdim, b.dmesh.facets("airfoil"))
        far_node = int(self.mesh.marker_nodes("farfield")[0])
        dm.topology.create_connectivity(0, 2)
        pin = dolfinx.fem.locate_dofs_topological((b.W.sub(1), Q), 0,
                                                  np.array([b.dmesh.vertex_of_node[far_node]], dtype=np.int32))
        b.zero_p = dolfinx.fem.Function(Q)
        bcs = [dolfinx.fem.dirichletbc(b.u_far, far, b.W.sub(0)),
               dolfinx.fem.dirichletbc(b.zero_u, wall, b.W.sub(0)),
               dolfinx.fem.dirichletbc(b.zero_p, pin, b.W.sub(1))]
        b.problem = dolfinx.fem.petsc.NonlinearProblem(ns_form(b.w, b.nu), b.w, bcs)
        b.newton = newton_solver(b.problem, rtol=self.options["newton_rtol"], atol=1e-10,
                                 max_it=self.options["max_it"])
        # forces: F = -int sigma n ds over the airfoil
        u, p = ufl.split(b.w)
        n = ufl.FacetNormal(dm)
        sigma = -p * ufl.Identity(2) + b.nu * (ufl.grad(u) + ufl.grad(u).T)
        ds = b.dmesh.ds(b.dmesh.marker_ids["airfoil"])
        b.force = [dolfinx.fem.form(-ufl.dot(sigma, n)[k] * ds) for k in range(2)]
        # node -> dof maps (P2 vertex dofs of u, P1 dofs of p) in the mixed vector
        Wu, Wp = b.W.sub(0), b.W.sub(1)
        cells = np.arange(len(self.mesh.triangles), dtype=np.int32)
        n_nodes = len(self.mesh.points)
        b.u_dofs = np.empty((n_nodes, 2), dtype=np.int64)
        b.p_dof = np.empty(n_nodes, dtype=np.int64)
        cell_nodes = b.dmesh.cell_nodes
        for comp in range(2):
            sub = Wu.sub(comp)
            d = np.array([sub.dofmap.cell_dofs(c)[:3] for c in cells])
            b.u_dofs[cell_nodes, comp] = d
        d = np.array([Wp.dofmap.cell_dofs(c)[:3] for c in cells])
        b.p_dof[cell_nodes] = d
        b.far_nodes = self.mesh.marker_nodes("farfield")
        b.last_good = None  # (w array, reynolds) of the last converged solve
        return b

    def _newton(self, reynolds, what):
        b = self.built
        b.nu.value = b.chord / reynolds
        return newton_solve(b.newton, b.w, what)

    def _continuation(self, reynolds, aoa):
        """Stokes-like start, then Re_k = re_start * factor^k up to `reynolds`, halving failed steps."""
        b = self.built
        b.w.x.array[:] = 0.0
        done, state, iters = 0.0, b.w.x.array.copy(), 0
        re = min(self.options["re_start"], reynolds)
        steps = [re]
        while re < reynolds:
            re = min(re * self.options["re_factor"], reynolds)
            steps.append(re)
        halvings = 0
        while steps:
            target = steps[0]
            try:
                iters += self._newton(target, f"Navier-Stokes (aoa={aoa}, Re={target:.4g})")
            except SolverError:
                b.w.x.array[:] = state
                halvings += 1
                if halvings > 8 or done == 0.0:
                    raise
                steps.insert(0, math.sqrt(done * target))
                continue
            done = steps.pop(0)
            state = b.w.x.array.copy()
        return iters

    def solve(self, aoa=0.0, reynolds=100.0, coords=None):
        """Solve at angle of attack `aoa` (degrees) and Reynolds number `reynolds` (chord based).

        coords: optional (n_nodes, 2) node positions for the same topology.
        Returns Result with fields (u, v, p, Cp) per node, cl, cd. Raises SolverError.
        """
        if not reynolds > 0:
            raise SolverError(f"reynolds={reynolds}: must be > 0")
        b = self.built
        try:
            with b.dmesh.moved(coords):
                return self._solve_here(aoa, reynolds)
        except SolverError:
            if b.last_good is not None:
                b.w.x.array[:] = b.last_good[0]  # the next warm start begins from the last good state
            raise

    def _solve_here(self, aoa, reynolds):
        """Newton from the last good state (warm), else Reynolds continuation (cold)."""
        b = self.built
        a = math.radians(aoa)
        ca, sa = math.cos(a), math.sin(a)
        b.u_far.interpolate(lambda x: np.vstack([np.full(x.shape[1], ca), np.full(x.shape[1], sa)]))
        warm = b.last_good is not None
        iters = None
        if warm:
            b.w.x.array[:] = b.last_good[0]
            try:
                iters = self._newton(reynolds, f"Navier-Stokes (aoa={aoa}, Re={reynolds})")
            except SolverError:
                iters = None
        if iters is None:
            iters = self._continuation(reynolds, aoa)
            warm = False
        b.last_good = (b.w.x.array.copy(), reynolds)
        return self._outputs(aoa, {"newton_iterations": iters, "warm_start": warm})

    def _outputs(self, aoa, info):
        import dolfinx

        b = self.built
        arr = b.w.x.array
        u = arr[b.u_dofs]
        p = arr[b.p_dof]
        p = p - p[b.far_nodes].mean()
        F = np.array([dolfinx.fem.assemble_scalar(f) for f in b.force])
        C = 2 * F / b.chord
        a = math.radians(aoa)
        cl = -C[0] * math.sin(a) + C[1] * math.cos(a)
        cd = C[0] * math.cos(a) + C[1] * math.sin(a)
        return Result(np.column_stack([u, p, 2 * p]), NAMES, cl, cd, info)
