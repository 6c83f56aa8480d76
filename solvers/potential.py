"""Steady compressible full-potential flow around an airfoil (inviscid, sub- and transonic).

Nondimensional, free-stream speed 1, density 1, gamma = 1.4. Velocity
u = grad(psi) + Gamma * grad(theta)/(2 pi), theta = angle around the vortex centre
(quarter chord, inside the airfoil), psi single-valued P1: only grad(theta) enters,
so no wake cut is needed. Isentropic density

    rho(q^2) = (1 + (g-1)/2 M^2 (1 - q^2))^(1/(g-1)),

weak form  int rho(|u|^2) u . grad v dx = 0  for v = 0 on the far field (slip wall
rho u.n = 0 on the airfoil is natural); far field Dirichlet psi = x cos(a) + y sin(a),
so the far-field velocity is free stream + vortex.

Kutta condition (discrete): the tangential velocity (towards the trailing edge) in the
two cells touching the TE through an airfoil edge is equal on upper and lower side,
f(Gamma) = u_up . t_up - u_lo . t_lo = 0. At M = 0 f is affine in Gamma (two linear
solves); for M > 0 Gamma is found by secant iteration on f, each step a Newton solve
warm-started from the previous one, with continuation in Mach if Newton fails.

Transonic: once a converged state has a cell Mach number above Mc (option mach_crit, 0.95)
or plain Newton fails, the step is redone from the last subsonic state with the upwind
artificial density rho~ = rho - nu (rho - rho_upwind), nu = C max(0, 1 - Mc^2/M_loc^2)
(option upwind = C, 3.0), see `artificial_density_form`; still exact Newton. nu = 0 where
M_loc <= Mc, so purely subsonic solves are bitwise unchanged and take the plain path.

Outputs per node: u, v, Cp, rho; cl, cd from the surface pressure of the cells on the
airfoil (per unit chord, chord = x-extent of the airfoil marker). Cp = (rho^g - 1)/(g M^2/2),
Cp = 1 - q^2 at M = 0.
"""
import math

import numpy as np

from .errors import SolverError
from .fem import DolfinxMesh, LazySolver, Result, newton_solve, newton_solver
from .mesh import airfoil_geometry

GAMMA = 1.4
RHO_FLOOR = 1e-3  # floor on the density base; reaching it (vacuum) is reported as a failure
NAMES = ("u", "v", "Cp", "rho")


def density(q2, mach, gamma=GAMMA):
    """UFL isentropic density rho(q^2) with the base floored at RHO_FLOOR (reported if reached)."""
    import ufl

    base = 1 + 0.5 * (gamma - 1) * mach**2 * (1 - q2)
    return ufl.max_value(base, RHO_FLOOR) ** (1.0 / (gamma - 1))


def full_potential_form(psi, v, mach, extra_velocity=None, source=None):
    """Residual F(psi; v) = int rho(|u|^2) u.grad(v) dx - int source v dx, u = grad psi + extra."""
    import ufl

    u = ufl.grad(psi) if extra_velocity is None else ufl.grad(psi) + extra_velocity
    F = density(ufl.dot(u, u), mach) * ufl.dot(u, ufl.grad(v)) * ufl.dx
    if source is not None:
        F = F - source * v * ufl.dx
    return F


def local_mach2(q2, mach, gamma=GAMMA):
    """UFL local Mach number squared M^2 q^2 / (1 + (g-1)/2 M^2 (1 - q^2)) (0 at M = 0)."""
    import ufl

    base = 1 + 0.5 * (gamma - 1) * mach**2 * (1 - q2)
    return mach**2 * q2 / ufl.max_value(base, RHO_FLOOR)


def switch(q2, mach, mach_crit, coef):
    """Artificial-density switch nu = coef max(0, 1 - Mc^2/M_loc^2): 0 wherever M_loc <= Mc."""
    import ufl

    m2 = local_mach2(q2, mach)
    return coef * ufl.max_value(m2 - mach_crit**2, 0.0) / ufl.max_value(m2, mach_crit**2)


def artificial_density_form(psi, v, mach, extra_velocity, mach_crit, coef, degree=2):
    """Upwind artificial-density correction (subtract it from `full_potential_form`).

    In every cell K the density is replaced by rho~_K = rho_K - nu_K sum_f w_f (rho_K - rho_f),
    summed over the inflow edges f of K (u_K . n_f < 0), rho_f the density of the cell across f,
    w_f = |u_K . n_f| |f| / S_K with S_K = sum_inflow |u . n| |f| = 1/2 sum_edges |u x e| (exact
    for a triangle), so sum_f w_f = 1: rho~ = (1 - nu) rho_K + nu rho_upwind, a first-order
    upwind difference rho - nu h (u/|u|) . grad rho (Holst / Jameson artificial density).
    For P1, int_K rho~ u . grad v = int_K rho u . grad v - |K| nu_K (u_K . grad v_K) sum_f ...,
    written as an interior-facet integral so that UFL differentiates it exactly (Newton).
    nu = 0 (M_loc <= Mc everywhere) gives back the plain form.
    """
    import ufl

    u = ufl.grad(psi) + extra_velocity
    n = ufl.FacetNormal(psi.function_space.mesh)
    J = ufl.Jacobian(psi.function_space.mesh)
    vol = ufl.CellVolume(psi.function_space.mesh)

    def one_side(s, o):
        us = u(s)
        e1 = ufl.as_vector([J(s)[0, 0], J(s)[1, 0]])
        e2 = ufl.as_vector([J(s)[0, 1], J(s)[1, 1]])
        e3 = e2 - e1

        def cross(a, b):
            return a[0] * b[1] - a[1] * b[0]

        S = 0.5 * (abs(cross(us, e1)) + abs(cross(us, e2)) + abs(cross(us, e3)))
        q2s, q2o = ufl.dot(us, us), ufl.dot(u(o), u(o))
        inflow = ufl.max_value(-ufl.dot(us, n(s)), 0.0)
        nu = switch(q2s, mach, mach_crit, coef)
        drho = density(q2s, mach) - density(q2o, mach)
        return nu * vol(s) * ufl.dot(us, ufl.grad(v)(s)) * inflow * drho / ufl.max_value(S, 1e-14)

    return (one_side("+", "-") + one_side("-", "+")) * ufl.dS(metadata={"quadrature_degree": degree})


def cell_gradients(points, triangles, values):
    """Gradient (m, 2) of the P1 interpolant of nodal `values` on every triangle."""
    p = points[triangles]
    d1, d2 = p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]
    f = values[triangles]
    df1, df2 = f[:, 1] - f[:, 0], f[:, 2] - f[:, 0]
    det = d1[:, 0] * d2[:, 1] - d1[:, 1] * d2[:, 0]
    gx = (df1 * d2[:, 1] - df2 * d1[:, 1]) / det
    gy = (df2 * d1[:, 0] - df1 * d2[:, 0]) / det
    return np.column_stack([gx, gy]), 0.5 * det


def vortex_velocity(points, center):
    """grad(theta)/(2 pi) around `center`: the velocity of a unit (CCW) point vortex."""
    r = points - center
    return np.column_stack([-r[:, 1], r[:, 0]]) / (2 * math.pi * np.einsum("ij,ij->i", r, r))[:, None]


def _edge_cells(mesh, name):
    """For each edge of marker `name`: the adjacent triangle and the edge's nodes in that cell's CCW order."""
    tri = mesh.triangles
    lookup = {}
    for c, t in enumerate(tri):
        for k in range(3):
            lookup[(int(t[k]), int(t[(k + 1) % 3]))] = c
    cells, ordered = [], []
    for a, b in mesh.boundaries[name]:
        if (a, b) in lookup:
            cells.append(lookup[(a, b)]), ordered.append((a, b))
        elif (b, a) in lookup:
            cells.append(lookup[(b, a)]), ordered.append((b, a))
        else:
            raise SolverError(f"'{name}' edge ({a},{b}) is not an edge of any cell")
    return np.array(cells), np.array(ordered)


def pressure_forces(points, edges, cp_cells, chord):
    """Force coefficient vector (Cx, Cy) = sum_e Cp_e n_e L_e / c, n pointing out of the fluid."""
    d = points[edges[:, 1]] - points[edges[:, 0]]
    return (cp_cells[:, None] * np.column_stack([d[:, 1], -d[:, 0]])).sum(axis=0) / chord


class _Built:
    pass


class PotentialFlow(LazySolver):
    """Full-potential solver: `PotentialFlow(mesh_or_path).solve(aoa=deg, mach=M, coords=None)`."""

    def __init__(self, mesh, kutta_tol=1e-9, max_secant=30, newton_rtol=1e-10, mach_crit=0.95, upwind=3.0):
        super().__init__(mesh, kutta_tol=kutta_tol, max_secant=max_secant, newton_rtol=newton_rtol,
                         mach_crit=mach_crit, upwind=upwind)

    def _build(self):
        import dolfinx
        import ufl

        b = _Built()
        mesh = self.mesh
        geo = airfoil_geometry(mesh)
        b.chord, b.center = geo["chord"], geo["center"]
        b.dmesh = DolfinxMesh(mesh)
        dm = b.dmesh.dm
        b.V = dolfinx.fem.FunctionSpace(dm, ("CG", 1))
        b.psi, b.psi_D = dolfinx.fem.Function(b.V), dolfinx.fem.Function(b.V)
        b.mach = dolfinx.fem.Constant(dm, 0.0)
        b.gamma = dolfinx.fem.Constant(dm, 0.0)
        X = ufl.SpatialCoordinate(dm)
        r = X - ufl.as_vector([float(b.center[0]), float(b.center[1])])
        g = ufl.as_vector([-r[1], r[0]]) / (2 * math.pi * ufl.dot(r, r))
        v = ufl.TestFunction(b.V)  # one Argument for both forms: UFL must see a single v_0 in Fs below
        F = full_potential_form(b.psi, v, b.mach, b.gamma * g)
        far = dolfinx.fem.locate_dofs_topological(b.V, 1, b.dmesh.facets("farfield"))
        bc = dolfinx.fem.dirichletbc(b.psi_D, far)
        b.problem = dolfinx.fem.petsc.NonlinearProblem(F, b.psi, [bc])
        b.newton = newton_solver(b.problem, rtol=self.options["newton_rtol"], atol=1e-11, max_it=15)
        # transonic: the same form plus the artificial density (used once M_loc > Mc somewhere)
        b.mach_crit = dolfinx.fem.Constant(dm, float(self.options.get("mach_crit", 0.95)))
        b.upwind = dolfinx.fem.Constant(dm, float(self.options.get("upwind", 3.0)))
        Fs = F - artificial_density_form(b.psi, v, b.mach, b.gamma * g, b.mach_crit, b.upwind)
        b.problem_up = dolfinx.fem.petsc.NonlinearProblem(Fs, b.psi, [bc])
        b.newton_up = newton_solver(b.problem_up, rtol=self.options["newton_rtol"], atol=1e-11, max_it=30)
        b.transonic = False
        b.dof = b.dmesh.dofs_of_nodes(b.V)
        # Kutta: the two airfoil edges at the TE node and their cells
        te = geo["te"]
        b.wall_cells, b.wall_edges = _edge_cells(mesh, "airfoil")
        at_te = np.flatnonzero((b.wall_edges == te).any(axis=1))
        if len(at_te) != 2:
            raise SolverError(f"trailing-edge node {te} has {len(at_te)} airfoil edges; a sharp TE (2 edges) is required")
        b.te = te
        b.te_cells = b.wall_cells[at_te]
        b.te_other = np.where(b.wall_edges[at_te, 0] == te, b.wall_edges[at_te, 1], b.wall_edges[at_te, 0])
        return b

    # --------------------------------------------------------------- pieces
    def _nodal_psi(self):
        b = self.built
        return b.psi.x.array[b.dof]

    def _kutta(self, gamma):
        """f = u_up.t_up - u_lo.t_lo in the two TE cells (t towards the TE)."""
        b = self.built
        x = b.dmesh.coords
        tri = self.mesh.triangles[b.te_cells]
        grad, _ = cell_gradients(x, tri, self._nodal_psi())
        u = grad + gamma * vortex_velocity(x[tri].mean(axis=1), b.center)
        t = x[b.te] - x[b.te_other]
        t /= np.linalg.norm(t, axis=1)[:, None]
        s = np.einsum("ij,ij->i", u, t)
        return s[0] - s[1]

    def _newton(self, mach, gamma, what):
        b = self.built
        b.mach.value, b.gamma.value = mach, gamma
        return newton_solve(b.newton_up if b.transonic else b.newton, b.psi, what)

    def _max_local_mach(self, mach, gamma):
        """Largest cell Mach number of the current psi (velocity at the cell centroids)."""
        if mach == 0:
            return 0.0
        b = self.built
        x, tri = b.dmesh.coords, self.mesh.triangles
        grad, _ = cell_gradients(x, tri, self._nodal_psi())
        u = grad + gamma * vortex_velocity(x[tri].mean(axis=1), b.center)
        q2 = np.einsum("ij,ij->i", u, u)
        base = np.maximum(1 + 0.5 * (GAMMA - 1) * mach**2 * (1 - q2), RHO_FLOOR)
        return float(np.sqrt(mach**2 * q2 / base).max())

    def _incompressible(self, aoa):
        """M = 0: psi and Gamma from two linear solves (f affine in Gamma)."""
        b = self.built
        b.psi.x.array[:] = 0.0
        self._newton(0.0, 0.0, f"potential flow (aoa={aoa}, M=0, Gamma=0)")
        p0, f0 = b.psi.x.array.copy(), self._kutta(0.0)
        self._newton(0.0, 1.0, f"potential flow (aoa={aoa}, M=0, Gamma=1)")
        p1, f1 = b.psi.x.array.copy(), self._kutta(1.0)
        gamma = -f0 / (f1 - f0)
        b.psi.x.array[:] = p0 + gamma * (p1 - p0)
        return gamma

    def _secant(self, mach, gamma, mach_prev, aoa):
        """Gamma at Mach `mach` by secant iteration on the Kutta residual."""
        tol, what = self.options["kutta_tol"], f"potential flow (aoa={aoa}, M={mach:.4g})"
        g0 = gamma
        self._newton(mach, g0, what)
        f0 = self._kutta(g0)
        if abs(f0) < tol:
            return g0
        ratio = math.sqrt((1 - mach_prev**2) / (1 - mach**2))  # Prandtl-Glauert guess
        g1 = g0 * ratio if abs(g0 * (ratio - 1)) > 1e-8 else g0 + 1e-4
        for _ in range(self.options["max_secant"]):
            self._newton(mach, g1, what)
            f1 = self._kutta(g1)
            if abs(f1) < tol or abs(g1 - g0) < 1e-13 * (1 + abs(g1)):
                return g1
            if f1 == f0:
                break
            g0, g1, f0 = g1, g1 - f1 * (g1 - g0) / (f1 - f0), f1
        raise SolverError(f"{what}: Kutta secant iteration did not converge (|f|={abs(f1):.2e}, Gamma={g1:.6g})")

    def _compressible(self, mach, gamma, aoa, max_halvings=6):
        """Continuation in Mach from 0: try the target, halve the step on failure.

        The plain (subsonic) form is used while the converged states stay below the critical local
        Mach number Mc; at the first step that fails or exceeds it, the step is redone from the
        last subsonic state with the artificial density (identical where M_loc <= Mc).
        """
        b = self.built
        done, steps, halvings = 0.0, [mach], 0
        state = (b.psi.x.array.copy(), gamma)
        while steps:
            m = steps[0]
            try:
                g_new = self._secant(m, gamma, done, aoa)
            except SolverError:
                b.psi.x.array[:] = state[0]
                if not b.transonic:  # retry the same step with the artificial density switched on
                    b.transonic = True
                    continue
                halvings += 1
                if halvings > max_halvings:
                    raise SolverError(
                        f"potential flow (aoa={aoa}, M={mach}): no convergence beyond M={done:.4g} with Mach "
                        f"continuation (transonic flow with a shock too strong for the artificial-density "
                        f"full potential)") from None
                steps.insert(0, 0.5 * (done + m))
                continue
            if not b.transonic and self._max_local_mach(m, g_new) > float(b.mach_crit.value):
                b.transonic = True  # supersonic pocket: redo this step from the last subsonic state
                b.psi.x.array[:] = state[0]
                continue
            gamma, done = g_new, steps.pop(0)
            state = (b.psi.x.array.copy(), gamma)
        return gamma

    # ----------------------------------------------------------------- API
    def solve(self, aoa=0.0, mach=0.0, coords=None):
        """Solve at angle of attack `aoa` (degrees) and free-stream Mach `mach` (0 <= M < 1).

        coords: optional (n_nodes, 2) node positions for the same topology.
        Returns Result with fields (u, v, Cp, rho) per node, cl, cd. Raises SolverError.
        """
        if not 0.0 <= mach < 1.0:
            raise SolverError(f"mach={mach}: the full-potential solver needs 0 <= mach < 1 (subsonic)")
        b = self.built
        with b.dmesh.moved(coords):
            a = math.radians(aoa)
            ca, sa = math.cos(a), math.sin(a)
            b.psi_D.interpolate(lambda x: x[0] * ca + x[1] * sa)
            b.transonic = False
            gamma = self._incompressible(aoa)
            gamma_inc = gamma
            if mach > 0:
                gamma = self._compressible(mach, gamma, aoa)
            return self._outputs(aoa, mach, gamma, gamma_inc)

    def _outputs(self, aoa, mach, gamma, gamma_inc):
        b = self.built
        x, tri = b.dmesh.coords, self.mesh.triangles
        psi = self._nodal_psi()
        grad, area = cell_gradients(x, tri, psi)
        u_cell = grad + gamma * vortex_velocity(x[tri].mean(axis=1), b.center)
        # nodal velocity: area-weighted average of grad psi, plus the exact vortex part
        n, idx = len(x), tri.ravel()
        w = np.bincount(idx, np.repeat(area, 3), n)
        acc = np.column_stack([np.bincount(idx, np.repeat(grad[:, k] * area, 3), n) for k in range(2)])
        u_node = acc / w[:, None] + gamma * vortex_velocity(x, b.center)
        rho_n, cp_n, base_n = _thermo(np.einsum("ij,ij->i", u_node, u_node), mach)
        rho_c, cp_c, base_c = _thermo(np.einsum("ij,ij->i", u_cell, u_cell), mach)
        if base_c.min() <= RHO_FLOOR:
            raise SolverError(f"potential flow (aoa={aoa}, M={mach}): density reached vacuum; flow is not subsonic")
        C = pressure_forces(x, b.wall_edges, cp_c[b.wall_cells], b.chord)
        a = math.radians(aoa)
        cl = -C[0] * math.sin(a) + C[1] * math.cos(a)
        cd = C[0] * math.cos(a) + C[1] * math.sin(a)
        q2 = np.einsum("ij,ij->i", u_cell, u_cell)
        local_mach = 0.0 if mach == 0 else float(np.sqrt(q2 / (1 / mach**2 + 0.2 * (1 - q2))).max())
        info = {"gamma": gamma, "cl_circulation": -2 * gamma / b.chord, "gamma_incompressible": gamma_inc,
                "max_local_mach": local_mach, "kutta_residual": self._kutta(gamma),
                "transonic": bool(b.transonic)}
        return Result(np.column_stack([u_node, cp_n, rho_n]), NAMES, cl, cd, info)


def _thermo(q2, mach):
    """rho, Cp and the density base 1 + (g-1)/2 M^2 (1 - q^2) for speeds squared q2."""
    base = 1 + 0.5 * (GAMMA - 1) * mach**2 * (1 - q2)
    rho = np.maximum(base, RHO_FLOOR) ** (1 / (GAMMA - 1))
    cp = 1 - q2 if mach == 0 else (rho**GAMMA - 1) / (0.5 * GAMMA * mach**2)
    return rho, cp, base
